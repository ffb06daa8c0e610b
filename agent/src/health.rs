//! What the agent measures about its host for each heartbeat. Only what is sent is refreshed:
//! CPU (usage needs two refreshes apart, so the probe is kept between beats), memory, load, and
//! the disk that holds the data dir.

use std::path::{Path, PathBuf};
use std::time::Instant;

use fifty_shared::wire::Health;
use sysinfo::{Disks, System};

/// Keeps the sysinfo state between samples.
pub struct HealthProbe {
    system: Option<System>,
    disks: Option<Disks>,
    data_dir: PathBuf,
    started: Instant,
}

impl HealthProbe {
    /// A probe for this host; `data_dir` picks the disk whose free space is reported.
    pub fn new(data_dir: &Path) -> Self {
        let mut system = System::new().ok();
        if let Some(s) = system.as_mut() {
            s.refresh_cpu_usage();
        }
        let data_dir = data_dir.canonicalize().unwrap_or_else(|_| data_dir.to_path_buf());
        Self { system, disks: Disks::new_with_refreshed_list().ok(), data_dir, started: Instant::now() }
    }

    /// Measures now.
    pub fn sample(&mut self) -> Health {
        let mut health = Health { uptime: self.started.elapsed(), ..Health::default() };
        if let Some(s) = self.system.as_mut() {
            s.refresh_cpu_usage();
            s.refresh_memory();
            health.cpu_percent = s.global_cpu_usage();
            health.mem_used_bytes = s.used_memory();
            health.mem_total_bytes = s.total_memory();
        }
        if let Ok(load) = System::load_average() {
            health.load = [load.one as f32, load.five as f32, load.fifteen as f32];
        }
        if let Some(disks) = self.disks.as_mut() {
            disks.refresh(false);
            // The disk mounted deepest above the data dir holds it.
            let disk = disks
                .iter()
                .filter(|d| self.data_dir.starts_with(d.mount_point()))
                .max_by_key(|d| d.mount_point().as_os_str().len());
            if let Some(d) = disk {
                health.disk_free_bytes = d.available_space();
                health.disk_total_bytes = d.total_space();
            }
        }
        health
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sample_reports_memory_and_the_data_dirs_disk() {
        let mut probe = HealthProbe::new(&std::env::temp_dir());
        let h = probe.sample();
        assert!(h.mem_total_bytes > 0 && h.mem_used_bytes <= h.mem_total_bytes, "{h:?}");
        assert!(h.disk_total_bytes > 0 && h.disk_free_bytes <= h.disk_total_bytes, "{h:?}");
        assert!((0.0..=100.0).contains(&h.cpu_percent), "{h:?}");
    }
}
