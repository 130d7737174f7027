//! Resource sampling for `GET /resources`: this process's CPU and resident memory, and the
//! machine's network traffic since the previous sample, read with `sysinfo`.
//!
//! Network bytes are those of every interface of the machine (or of the Lambda sandbox):
//! operating systems do not account network traffic per process.

use std::sync::Mutex;

use sysinfo::{MemoryRefreshKind, Networks, Pid, ProcessRefreshKind, ProcessesToUpdate, System};
use taskexec_core::metrics::ResourceUsage;
use taskexec_core::time::{Millis, format_rfc3339};

/// Why a sample could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum SampleError {
    /// The platform gives no such information.
    #[error("resource information is not available on this platform")]
    Unavailable(#[source] sysinfo::Error),
    /// This process could not be found in the process table.
    #[error("this process is not in the process table")]
    ProcessNotFound,
}

/// Samples resource use. A port, so tests can fake it; [`SystemSampler`] is the real one.
///
/// ```
/// use taskexec_api::{ResourceSampler, SystemSampler};
/// let sampler = SystemSampler::new().unwrap();
/// let usage = sampler.sample(0).unwrap();
/// assert!(usage.memory_bytes > 0);
/// ```
pub trait ResourceSampler: Send + Sync + 'static {
    /// Take a sample at `now` (counters that accumulate are reported since the previous sample).
    fn sample(&self, now: Millis) -> Result<ResourceUsage, SampleError>;
}

struct Probe {
    system: System,
    networks: Networks,
    pid: Pid,
}

/// The real sampler: `sysinfo` over this process. CPU percent and network bytes are differences
/// from the previous sample (the first is taken at construction).
pub struct SystemSampler {
    probe: Mutex<Probe>,
}

impl std::fmt::Debug for SystemSampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SystemSampler").finish_non_exhaustive()
    }
}

impl SystemSampler {
    /// A sampler of this process, with a first sample taken as the baseline.
    pub fn new() -> Result<Self, SampleError> {
        let pid = sysinfo::get_current_pid().map_err(SampleError::Unavailable)?;
        let system = System::new().map_err(SampleError::Unavailable)?;
        let networks = Networks::new_with_refreshed_list().map_err(SampleError::Unavailable)?;
        let mut probe = Probe { system, networks, pid };
        probe.refresh();
        Ok(Self { probe: Mutex::new(probe) })
    }
}

impl Probe {
    fn refresh(&mut self) {
        self.system.refresh_memory_specifics(MemoryRefreshKind::nothing().with_ram());
        self.system.refresh_processes_specifics(
            ProcessesToUpdate::Some(&[self.pid]),
            false,
            ProcessRefreshKind::nothing().with_cpu().with_memory(),
        );
        self.networks.refresh(true);
    }

    fn read(&self, now: Millis) -> Result<ResourceUsage, SampleError> {
        let process = self.system.process(self.pid).ok_or(SampleError::ProcessNotFound)?;
        let memory_bytes = process.memory();
        let total = self.system.total_memory();
        let memory_percent = if total > 0 { memory_bytes as f64 * 100.0 / total as f64 } else { 0.0 };
        let (rx, tx) = self.networks.values().fold((0, 0), |(rx, tx), n| (rx + n.received(), tx + n.transmitted()));
        Ok(ResourceUsage {
            cpu_percent: f64::from(process.cpu_usage()),
            memory_bytes,
            memory_percent,
            network_rx_bytes: rx,
            network_tx_bytes: tx,
            sampled_at: format_rfc3339(now),
        })
    }
}

impl ResourceSampler for SystemSampler {
    fn sample(&self, now: Millis) -> Result<ResourceUsage, SampleError> {
        let mut probe = self.probe.lock().expect("sampler poisoned");
        probe.refresh();
        probe.read(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_this_process() {
        let sampler = SystemSampler::new().unwrap();
        let usage = sampler.sample(1_000).unwrap();
        assert!(usage.memory_bytes > 1024 * 1024, "{usage:?}");
        assert!(usage.memory_percent > 0.0 && usage.memory_percent < 100.0, "{usage:?}");
        assert!(usage.cpu_percent >= 0.0, "{usage:?}");
        assert_eq!(usage.sampled_at, "1970-01-01T00:00:01.000Z");
    }
}
