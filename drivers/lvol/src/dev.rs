//! The store's device as the metadata owner sees it: byte-addressed reads
//! and writes that a task awaits, through the owner reactor's channel, in
//! pieces no larger than the I/O buffer pool's large buffers.

use std::rc::Rc;

use pollux_core::bdev::{Bdev, BdevIo, Descriptor, IoStatus, IoType};
use pollux_core::dma::{self, BufPool, DmaBuf};
use pollux_core::io_channel::IoChannel;
use pollux_core::reactor::task::Slot;

pub struct Dev {
    pub desc: Descriptor,
    ch: IoChannel<Bdev>,
    pool: Rc<BufPool>,
    pub block: u64,
}

/// Why a device operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{op} of {len} bytes at byte {at} of {bdev}: {status:?}")]
pub struct DevError {
    pub op: &'static str,
    pub bdev: String,
    pub at: u64,
    pub len: u64,
    pub status: IoStatus,
}

impl Dev {
    /// On the reactor that will use it.
    pub fn new(desc: Descriptor) -> Result<Dev, dma::DmaError> {
        let ch = desc.channel();
        let block = desc.bdev().block_size() as u64;
        Ok(Dev { desc, ch, pool: dma::pool()?, block })
    }

    pub fn bytes(&self) -> u64 {
        self.desc.bdev().size_bytes()
    }

    fn chunk(&self) -> usize {
        // A whole number of 4 KiB pages (and so of blocks).
        (self.pool.large_size() / 4096).max(1) * 4096
    }

    /// A buffer from the pool, or, when the pool is empty (requests parked
    /// while this metadata work runs may hold it all), memory of its own:
    /// never wait for the pool here.
    async fn buf(&self, len: usize) -> Result<DmaBuf, DevError> {
        if let Some(mut b) = self.pool.get(len) {
            b.set_len(len);
            return Ok(b);
        }
        DmaBuf::alloc(len).map_err(|_| DevError {
            op: "allocate a buffer",
            bdev: self.desc.bdev().name().to_string(),
            at: 0,
            len: len as u64,
            status: IoStatus::NoMemory,
        })
    }

    async fn op(&self, kind: IoType, bufs: Vec<DmaBuf>, at: u64, len: u64) -> Result<BdevIo, DevError> {
        debug_assert!(at % self.block == 0 && len % self.block == 0);
        let slot: Slot<BdevIo> = Slot::new();
        let s = slot.clone();
        self.desc.submit(&self.ch, kind, bufs, at / self.block, len / self.block, move |io| s.set(io));
        let io = slot.await;
        if io.is_ok() {
            Ok(io)
        } else {
            Err(DevError { op: kind.name(), bdev: self.desc.bdev().name().to_string(), at, len, status: io.status() })
        }
    }

    pub async fn read(&self, at: u64, len: usize) -> Result<Vec<u8>, DevError> {
        let mut out = Vec::with_capacity(len);
        let mut done = 0;
        while done < len {
            let n = (len - done).min(self.chunk());
            let b = self.buf(n).await?;
            let mut io = self.op(IoType::Read, vec![b], at + done as u64, n as u64).await?;
            let b = io.take_buffer().expect("read buffer");
            out.extend_from_slice(&b[..n]);
            done += n;
        }
        Ok(out)
    }

    pub async fn write(&self, at: u64, data: &[u8]) -> Result<(), DevError> {
        let mut done = 0;
        while done < data.len() {
            let n = (data.len() - done).min(self.chunk());
            let mut b = self.buf(n).await?;
            b[..n].copy_from_slice(&data[done..done + n]);
            self.op(IoType::Write, vec![b], at + done as u64, n as u64).await?;
            done += n;
        }
        Ok(())
    }

    /// Zero `len` bytes: write zeroes where the device can, else write
    /// zero-filled buffers.
    pub async fn zero(&self, at: u64, len: u64) -> Result<(), DevError> {
        if len == 0 {
            return Ok(());
        }
        if self.desc.bdev().supports(IoType::WriteZeroes) {
            return self.op(IoType::WriteZeroes, Vec::new(), at, len).await.map(|_| ());
        }
        let mut done = 0;
        while done < len {
            let n = (len - done).min(self.chunk() as u64);
            let mut b = self.buf(n as usize).await?;
            b.zero();
            self.op(IoType::Write, vec![b], at + done, n).await?;
            done += n;
        }
        Ok(())
    }

    /// Unmap where the device can (advisory: nothing if it cannot).
    pub async fn unmap(&self, at: u64, len: u64) -> Result<(), DevError> {
        if len == 0 || !self.desc.bdev().supports(IoType::Unmap) {
            return Ok(());
        }
        self.op(IoType::Unmap, Vec::new(), at, len).await.map(|_| ())
    }

    /// Copy `len` bytes from `from` to `to` on the device.
    pub async fn copy(&self, from: u64, to: u64, len: u64) -> Result<(), DevError> {
        let mut done = 0;
        while done < len {
            let n = (len - done).min(self.chunk() as u64);
            let b = self.buf(n as usize).await?;
            let mut io = self.op(IoType::Read, vec![b], from + done, n).await?;
            let b = io.take_buffer().expect("read buffer");
            self.op(IoType::Write, vec![b], to + done, n).await?;
            done += n;
        }
        Ok(())
    }

    pub async fn flush(&self) -> Result<(), DevError> {
        if !self.desc.bdev().supports(IoType::Flush) {
            return Ok(());
        }
        let len = self.bytes();
        self.op(IoType::Flush, Vec::new(), 0, len).await.map(|_| ())
    }
}
