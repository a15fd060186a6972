//! Per-channel I/O statistics in the shape of SPDK's `bdev_get_iostat`, and
//! optional latency histograms.

use serde::Serialize;
use serde_json::{Value, json};

use super::io::{IoStatus, IoType};

/// Counters for one kind of I/O.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct OpStats {
    pub bytes: u64,
    pub ops: u64,
    pub latency_ticks: u64,
    pub max_latency_ticks: u64,
    pub min_latency_ticks: u64,
}

impl OpStats {
    fn record(&mut self, bytes: u64, ticks: u64) {
        self.bytes += bytes;
        self.ops += 1;
        self.latency_ticks += ticks;
        self.max_latency_ticks = self.max_latency_ticks.max(ticks);
        self.min_latency_ticks = if self.ops == 1 { ticks } else { self.min_latency_ticks.min(ticks) };
    }

    fn merge(&mut self, o: &OpStats) {
        if o.ops == 0 {
            return;
        }
        self.min_latency_ticks = if self.ops == 0 { o.min_latency_ticks } else { self.min_latency_ticks.min(o.min_latency_ticks) };
        self.bytes += o.bytes;
        self.ops += o.ops;
        self.latency_ticks += o.latency_ticks;
        self.max_latency_ticks = self.max_latency_ticks.max(o.max_latency_ticks);
    }
}

/// Latency histogram: power-of-two buckets of ticks (bucket i counts
/// latencies in [2^i, 2^(i+1))). Fixed size, no allocation to record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Histogram {
    pub buckets: [u64; 64],
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram { buckets: [0; 64] }
    }
}

impl Histogram {
    #[inline]
    pub fn record(&mut self, ticks: u64) {
        let i = 63 - ticks.max(1).leading_zeros() as usize;
        self.buckets[i] += 1;
    }

    pub fn merge(&mut self, o: &Histogram) {
        for (a, b) in self.buckets.iter_mut().zip(o.buckets.iter()) {
            *a += b;
        }
    }

    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }
}

/// All statistics of one channel (or the sum over channels).
#[derive(Clone, Debug, Default)]
pub struct IoStats {
    pub read: OpStats,
    pub write: OpStats,
    pub unmap: OpStats,
    pub write_zeroes: OpStats,
    pub flush: OpStats,
    pub compare: OpStats,
    pub reset: OpStats,
    pub errors: u64,
    pub histogram: Option<Box<Histogram>>,
}

impl IoStats {
    #[inline]
    pub(crate) fn record(&mut self, kind: IoType, bytes: u64, status: IoStatus, ticks: u64, histogram: bool) {
        if status != IoStatus::Success {
            self.errors += 1;
            return;
        }
        let s = match kind {
            IoType::Read => &mut self.read,
            IoType::Write => &mut self.write,
            IoType::Unmap => &mut self.unmap,
            IoType::WriteZeroes => &mut self.write_zeroes,
            IoType::Flush => &mut self.flush,
            IoType::Compare => &mut self.compare,
            IoType::Reset => &mut self.reset,
        };
        s.record(bytes, ticks);
        if histogram {
            self.histogram.get_or_insert_with(Default::default).record(ticks);
        }
    }

    pub fn merge(&mut self, o: &IoStats) {
        self.read.merge(&o.read);
        self.write.merge(&o.write);
        self.unmap.merge(&o.unmap);
        self.write_zeroes.merge(&o.write_zeroes);
        self.flush.merge(&o.flush);
        self.compare.merge(&o.compare);
        self.reset.merge(&o.reset);
        self.errors += o.errors;
        if let Some(h) = &o.histogram {
            self.histogram.get_or_insert_with(Default::default).merge(h);
        }
    }

    /// Reset by SPDK's modes: all, maxmin, error, none.
    pub fn reset(&mut self, mode: ResetMode) {
        match mode {
            ResetMode::All => *self = IoStats { histogram: self.histogram.take().map(|_| Default::default()), ..Default::default() },
            ResetMode::MaxMin => {
                for s in [
                    &mut self.read,
                    &mut self.write,
                    &mut self.unmap,
                    &mut self.write_zeroes,
                    &mut self.flush,
                    &mut self.compare,
                    &mut self.reset,
                ] {
                    s.max_latency_ticks = 0;
                    s.min_latency_ticks = 0;
                }
            }
            ResetMode::Error => self.errors = 0,
            ResetMode::None => {}
        }
    }

    /// The fields of one bdev in `bdev_get_iostat`.
    pub fn to_json(&self, name: &str) -> Value {
        let mut v = json!({
            "name": name,
            "bytes_read": self.read.bytes,
            "num_read_ops": self.read.ops,
            "bytes_written": self.write.bytes,
            "num_write_ops": self.write.ops,
            "bytes_unmapped": self.unmap.bytes,
            "num_unmap_ops": self.unmap.ops,
            "bytes_copied": 0,
            "num_copy_ops": 0,
            "read_latency_ticks": self.read.latency_ticks,
            "max_read_latency_ticks": self.read.max_latency_ticks,
            "min_read_latency_ticks": self.read.min_latency_ticks,
            "write_latency_ticks": self.write.latency_ticks,
            "max_write_latency_ticks": self.write.max_latency_ticks,
            "min_write_latency_ticks": self.write.min_latency_ticks,
            "unmap_latency_ticks": self.unmap.latency_ticks,
            "max_unmap_latency_ticks": self.unmap.max_latency_ticks,
            "min_unmap_latency_ticks": self.unmap.min_latency_ticks,
            "copy_latency_ticks": 0,
            "max_copy_latency_ticks": 0,
            "min_copy_latency_ticks": 0,
        });
        // Beyond SPDK's fields: flushes, so that write-back (Flush, FUA
        // writes) can be seen reaching a bdev.
        v["num_flush_ops"] = json!(self.flush.ops);
        v["io_error"] = json!({ "total": self.errors });
        v
    }
}

/// SPDK's statistics reset modes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ResetMode {
    All,
    #[serde(rename = "maxmin")]
    MaxMin,
    Error,
    #[default]
    None,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_merges_and_resets() {
        let mut a = IoStats::default();
        a.record(IoType::Read, 4096, IoStatus::Success, 100, true);
        a.record(IoType::Read, 4096, IoStatus::Success, 50, true);
        a.record(IoType::Write, 512, IoStatus::Failed, 10, true);
        let mut b = IoStats::default();
        b.record(IoType::Read, 8192, IoStatus::Success, 300, false);
        b.merge(&a);
        assert_eq!((b.read.ops, b.read.bytes, b.read.min_latency_ticks, b.read.max_latency_ticks), (3, 16384, 50, 300));
        assert_eq!(b.errors, 1);
        assert_eq!(b.histogram.as_ref().unwrap().count(), 2);
        let j = b.to_json("x");
        assert_eq!(j["num_read_ops"], 3);
        assert_eq!(j["io_error"]["total"], 1);
        b.reset(ResetMode::MaxMin);
        assert_eq!(b.read.max_latency_ticks, 0);
        assert_eq!(b.read.ops, 3);
        b.reset(ResetMode::All);
        assert_eq!(b.read.ops, 0);
    }

    #[test]
    fn histogram_buckets_are_powers_of_two() {
        let mut h = Histogram::default();
        for t in [0, 1, 2, 3, 4, 1000] {
            h.record(t);
        }
        assert_eq!(h.buckets[0], 2);
        assert_eq!(h.buckets[1], 2);
        assert_eq!(h.buckets[2], 1);
        assert_eq!(h.buckets[9], 1);
    }
}
