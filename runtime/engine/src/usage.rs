//! Which device served a version's tensor work, and for how long: what
//! `service show` and `/metrics` report per version and device.
//!
//! One set of counters per device the host has, made with the version's
//! context; the scoring path only adds to atomics.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use wasmscore_tensor::OpCost;

/// The ops the `ops` import has, in the order of the bits in `warned`.
pub const OPS: [&str; 7] = ["matmul", "gemm", "add", "relu", "softmax", "conv2d", "load-on"];

#[derive(Default)]
struct Counters {
    op_calls: AtomicU64,
    op_errors: AtomicU64,
    op_wall_ns: AtomicU64,
    /// The device's own time where it reports one (a plugin's execute
    /// stats), the host's wall time otherwise.
    device_ns: AtomicU64,
    device_cycles: AtomicU64,
    /// Ops (and `load-on` models) this device could not take that went to
    /// the fallback device.
    fell_back: AtomicU64,
    inference_calls: AtomicU64,
    inference_wall_ns: AtomicU64,
    /// Model outputs the device kept (not copied to the host).
    kept_on_device: AtomicU64,
    /// Kept outputs that were read into host memory after all.
    host_reads: AtomicU64,
    /// Bit per op in [`OPS`]: its first fallback was logged.
    warned: AtomicU32,
}

/// Per-device counters of one version.
pub struct DeviceUsage {
    entries: Vec<(Arc<str>, Counters)>,
}

/// A reading of one device's counters.
#[derive(Debug, Clone, serde::Serialize, PartialEq)]
pub struct DeviceUsageSnapshot {
    pub device: String,
    pub op_calls: u64,
    pub op_errors: u64,
    pub op_wall_seconds: f64,
    pub device_seconds: f64,
    pub device_cycles: u64,
    pub fell_back: u64,
    pub inference_calls: u64,
    pub inference_wall_seconds: f64,
    pub kept_on_device: u64,
    pub host_reads: u64,
}

fn ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl DeviceUsage {
    pub fn new<'a>(devices: impl Iterator<Item = &'a str>) -> Self {
        DeviceUsage {
            entries: devices.map(|d| (Arc::from(d), Counters::default())).collect(),
        }
    }

    fn get(&self, device: &str) -> Option<&Counters> {
        self.entries.iter().find(|(n, _)| &**n == device).map(|(_, c)| c)
    }

    pub fn op(&self, device: &str, wall: Duration, cost: Option<OpCost>) {
        if let Some(c) = self.get(device) {
            c.op_calls.fetch_add(1, Relaxed);
            c.op_wall_ns.fetch_add(ns(wall), Relaxed);
            match cost {
                Some(cost) => {
                    c.device_ns.fetch_add(cost.device_ns, Relaxed);
                    c.device_cycles.fetch_add(cost.cycles, Relaxed);
                }
                None => {
                    c.device_ns.fetch_add(ns(wall), Relaxed);
                }
            }
        }
    }

    pub fn op_error(&self, device: &str) {
        if let Some(c) = self.get(device) {
            c.op_errors.fetch_add(1, Relaxed);
        }
    }

    /// Counts a fallback away from `device`; true the first time for this
    /// op, so the caller logs that one and not every call.
    pub fn fell_back(&self, device: &str, op: &str) -> bool {
        let Some(c) = self.get(device) else { return false };
        c.fell_back.fetch_add(1, Relaxed);
        let bit = OPS.iter().position(|o| *o == op).map_or(1 << 31, |i| 1u32 << i);
        c.warned.fetch_or(bit, Relaxed) & bit == 0
    }

    pub fn kept_on_device(&self, device: &str) {
        if let Some(c) = self.get(device) {
            c.kept_on_device.fetch_add(1, Relaxed);
        }
    }

    pub fn host_read(&self, device: &str) {
        if let Some(c) = self.get(device) {
            c.host_reads.fetch_add(1, Relaxed);
        }
    }

    pub fn inference(&self, device: &str, wall: Duration) {
        if let Some(c) = self.get(device) {
            c.inference_calls.fetch_add(1, Relaxed);
            c.inference_wall_ns.fetch_add(ns(wall), Relaxed);
        }
    }

    /// Every device that did or refused work for this version, plus
    /// `always` (the version's device) even when idle.
    pub fn snapshot(&self, always: &str) -> Vec<DeviceUsageSnapshot> {
        let secs = |a: &AtomicU64| a.load(Relaxed) as f64 / 1e9;
        self.entries
            .iter()
            .map(|(name, c)| DeviceUsageSnapshot {
                device: name.to_string(),
                op_calls: c.op_calls.load(Relaxed),
                op_errors: c.op_errors.load(Relaxed),
                op_wall_seconds: secs(&c.op_wall_ns),
                device_seconds: secs(&c.device_ns),
                device_cycles: c.device_cycles.load(Relaxed),
                fell_back: c.fell_back.load(Relaxed),
                inference_calls: c.inference_calls.load(Relaxed),
                inference_wall_seconds: secs(&c.inference_wall_ns),
                kept_on_device: c.kept_on_device.load(Relaxed),
                host_reads: c.host_reads.load(Relaxed),
            })
            .filter(|s| s.device == always || s.op_calls + s.op_errors + s.fell_back + s.inference_calls > 0)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_time_is_the_devices_own_when_it_reports_one() {
        let u = DeviceUsage::new(["cpu", "fpga-sim", "idle"].into_iter());
        u.op("cpu", Duration::from_micros(3), None);
        u.op(
            "fpga-sim",
            Duration::from_micros(50),
            Some(OpCost {
                device_ns: 2_000,
                cycles: 500,
            }),
        );
        assert!(u.fell_back("fpga-sim", "relu"), "the first fallback of an op is logged");
        assert!(!u.fell_back("fpga-sim", "relu"), "later ones are only counted");
        assert!(u.fell_back("fpga-sim", "softmax"));
        let s = u.snapshot("cpu");
        assert_eq!(s.len(), 2, "idle devices are left out: {s:?}");
        assert_eq!(s[0].device, "cpu");
        assert!((s[0].device_seconds - 3e-6).abs() < 1e-12);
        assert!((s[1].device_seconds - 2e-6).abs() < 1e-12, "the plugin's time, not the wall time");
        assert!((s[1].op_wall_seconds - 50e-6).abs() < 1e-12);
        assert_eq!((s[1].device_cycles, s[1].fell_back), (500, 3));
    }
}
