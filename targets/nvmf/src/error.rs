//! Errors of the target's control path (RPC and configuration).

use pollux_core::rpc::RpcError;

#[derive(Debug, thiserror::Error)]
pub enum NvmfError {
    #[error("{0}")]
    InvalidParam(String),
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0} already exists")]
    Exists(String),
    #[error("{0}")]
    Unsupported(String),
    #[error("cannot listen on {0}: {1}")]
    Listen(String, #[source] std::io::Error),
    #[error("{0}")]
    Busy(String),
    #[error("the NVMe-oF target runs on the main reactor only")]
    WrongReactor,
    #[error(transparent)]
    Bdev(#[from] pollux_core::bdev::BdevError),
}

impl NvmfError {
    pub fn errno(&self) -> i32 {
        match self {
            NvmfError::InvalidParam(_) => libc::EINVAL,
            NvmfError::NotFound(_) => libc::ENODEV,
            NvmfError::Exists(_) => libc::EEXIST,
            NvmfError::Unsupported(_) => libc::ENOTSUP,
            NvmfError::Listen(_, e) => e.raw_os_error().unwrap_or(libc::EIO),
            NvmfError::Busy(_) => libc::EBUSY,
            NvmfError::WrongReactor => libc::EPERM,
            NvmfError::Bdev(e) => e.errno(),
        }
    }
}

impl From<NvmfError> for RpcError {
    fn from(e: NvmfError) -> Self {
        RpcError::errno(e.errno(), e)
    }
}
