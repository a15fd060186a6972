//! Errors of the harness. A command that ran and failed is *not* an error: it is a
//! [`GuestOutput`](crate::GuestOutput) with a non-zero status. Everything here is
//! either a set-up problem or an infrastructure failure of the VM itself.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

/// The command that prepares the cache; quoted in every "not set up" message.
pub const SETUP_COMMAND: &str = "cargo run --release -p pollux-testvm -- setup";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "the test VM is not set up ({reason}) in {cache}; run `{SETUP_COMMAND}` \
         (it installs the Debian packages, fetches the guest kernel and builds the initramfs)"
    )]
    NotSetUp { cache: PathBuf, reason: String },

    #[error("invalid VM configuration: {0}")]
    Config(String),

    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("could not start `{program}`: {source}")]
    Spawn {
        program: String,
        #[source]
        source: io::Error,
    },

    #[error("`{command}` failed ({status}): {stderr}")]
    CommandFailed { command: String, status: String, stderr: String },

    #[error("Debian packages {packages:?} are missing and this is not root; run `apt-get install --no-install-recommends {}`", packages.join(" "))]
    PackagesMissing { packages: Vec<String> },

    #[error("cannot find the guest kernel package: {0}")]
    KernelPackage(String),

    #[error("cannot extract vmlinux from {path}: {reason}")]
    Vmlinux { path: PathBuf, reason: String },

    #[error("kernel module {name} is not in {tree}")]
    ModuleMissing { name: String, tree: PathBuf },

    #[error("the test VM cannot start inside the guest (nested run of {0})")]
    Nested(String),

    #[error("{0}")]
    Infrastructure(Box<Infrastructure>),
}

/// A VM run without a trustworthy exit status, with what is needed to see why.
#[derive(Debug, thiserror::Error)]
#[error(
    "INFRASTRUCTURE FAILURE (not a test failure): {kind} after {elapsed:.1?}\n\
     work folder (kept): {}\n--- QEMU stderr ---\n{qemu_stderr}\n\
     --- command output so far (last lines) ---\n{command_output}\n\
     --- guest console (last lines) ---\n{console}",
    work_dir.display()
)]
pub struct Infrastructure {
    pub kind: InfraFailure,
    pub elapsed: Duration,
    pub work_dir: PathBuf,
    pub qemu_stderr: String,
    pub command_output: String,
    pub console: String,
}

/// Why a VM run produced no trustworthy exit status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InfraFailure {
    #[error("the VM did not finish within {0:?} and was killed")]
    Timeout(Duration),
    #[error("QEMU exited with {0} without the guest reporting (boot failure, panic or power-off)")]
    NoReport(String),
    #[error("the guest reported completion but the command's exit status is missing or unreadable")]
    StatusLost,
    #[error("the guest could not prepare the command: {0}")]
    GuestSetup(String),
    #[error("the guest's kernel crashed ({0}); the VM was stopped")]
    GuestKernelCrash(String),
}

impl Error {
    pub(crate) fn io(what: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Error::Io { what, path: path.into(), source }
    }

    /// True for failures of the VM rather than of the command it ran.
    pub fn is_infrastructure(&self) -> bool {
        matches!(self, Error::Infrastructure(_))
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
