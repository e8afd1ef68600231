//! Per-device baselines: robust statistics (median and MAD) of each window feature, the peers
//! and the services of each device, learned from normal traffic.
//!
//! A [`Learner`] gathers window vectors during learning (offline with `tapwatch train`, or the
//! first `--learn-for` of a run); [`Learner::build`] freezes them into [`Baselines`], which are
//! saved in the model file and do not change afterwards (frozen, not adapted: an attacker who is
//! present during learning would otherwise teach the sensor that the attack is normal).

use super::{DeviceId, DeviceProfile, WindowVector, N_FEATURES};
use crate::fast::HashMap;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::net::IpAddr;

/// Windows kept per device while learning (a week of minutes); later ones are sampled.
const MAX_WINDOWS_PER_DEVICE: usize = 10_080;
/// Windows kept for the learned model (all devices).
pub const MAX_TRAINING_WINDOWS: usize = 200_000;

/// The baseline of one device.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct DeviceBaseline {
    pub device: String,
    pub ips: Vec<IpAddr>,
    /// Windows in which the device was active during learning.
    pub windows: u64,
    pub median: Vec<f64>,
    /// Median absolute deviation of each feature.
    pub mad: Vec<f64>,
    pub peers: BTreeSet<IpAddr>,
    pub services: BTreeSet<String>,
}

impl DeviceBaseline {
    /// A robust upper band of feature `i`: median + k * 1.4826 * MAD.
    pub fn upper(&self, i: usize, k: f64) -> f64 {
        let m = self.median.get(i).copied().unwrap_or(0.0);
        let d = self.mad.get(i).copied().unwrap_or(0.0);
        m + k * 1.4826 * d
    }
}

/// Baselines of all devices.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Baselines {
    pub devices: Vec<DeviceBaseline>,
    #[serde(skip)]
    index: HashMap<DeviceId, usize>,
}

impl Baselines {
    /// Rebuilds the lookup index (after loading).
    pub fn reindex(&mut self) {
        self.index = self
            .devices
            .iter()
            .enumerate()
            .filter_map(|(i, d)| DeviceId::parse(&d.device).map(|id| (id, i)))
            .collect();
    }
    pub fn get(&self, id: &DeviceId) -> Option<&DeviceBaseline> {
        self.index.get(id).and_then(|&i| self.devices.get(i))
    }
}

/// Median of a slice (sorted in place).
pub fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Median and median absolute deviation.
pub fn median_mad(values: &[f64]) -> (f64, f64) {
    let mut v = values.to_vec();
    let m = median(&mut v);
    let mut dev: Vec<f64> = values.iter().map(|x| (x - m).abs()).collect();
    (m, median(&mut dev))
}

#[derive(Default)]
struct Samples {
    windows: Vec<[f64; N_FEATURES]>,
    seen: u64,
    peers: BTreeSet<IpAddr>,
    services: BTreeSet<String>,
    ips: BTreeSet<IpAddr>,
}

impl Samples {
    /// Peers, services and addresses of the device, each set up to `max` entries.
    fn add_facts(
        &mut self,
        max: usize,
        peers: impl IntoIterator<Item = IpAddr>,
        services: impl IntoIterator<Item = String>,
        ips: impl IntoIterator<Item = IpAddr>,
    ) {
        for peer in peers {
            if self.peers.len() < max {
                self.peers.insert(peer);
            }
        }
        for svc in services {
            if self.services.len() < max {
                self.services.insert(svc);
            }
        }
        for ip in ips {
            if self.ips.len() < max {
                self.ips.insert(ip);
            }
        }
    }
}

/// Gathers window vectors while learning.
#[derive(Default)]
pub struct Learner {
    per_device: HashMap<DeviceId, Samples>,
    /// All windows, for the learned model.
    pub all: Vec<[f64; N_FEATURES]>,
    pub seen: u64,
    /// Peers, services and addresses learned per device.
    max_peers: usize,
    /// Devices learned (`device.max_devices`); later ones only feed `all`.
    max_devices: usize,
    /// Windows of devices beyond `max_devices`, learned for the model but not as baselines.
    pub devices_skipped: u64,
    /// Every window vector, when kept (evaluation), bounded.
    pub kept: Option<Vec<WindowVector>>,
}

impl Learner {
    pub fn new(cfg: &crate::settings::DeviceConfig) -> Self {
        Learner {
            max_peers: cfg.max_peers,
            max_devices: cfg.max_devices,
            ..Default::default()
        }
    }

    /// The samples of `id`, made if the learner has room for another device.
    fn samples(&mut self, id: DeviceId) -> Option<&mut Samples> {
        crate::fast::entry_within(&mut self.per_device, id, self.max_devices, Samples::default)
    }

    /// One window of one device (with its profile, for peers and services).
    pub fn observe(&mut self, w: &WindowVector, profile: Option<&DeviceProfile>) {
        self.seen += 1;
        if let Some(k) = self.kept.as_mut() {
            if k.len() < MAX_TRAINING_WINDOWS {
                k.push(w.clone());
            }
        }
        // Deterministic thinning once full: keep every n-th window.
        if self.all.len() < MAX_TRAINING_WINDOWS {
            self.all.push(w.values);
        } else if self.seen.is_multiple_of(7) {
            let i = (self.seen as usize / 7) % MAX_TRAINING_WINDOWS;
            self.all[i] = w.values;
        }
        let max_peers = self.max_peers;
        let Some(s) = self.samples(w.device) else {
            self.devices_skipped += 1;
            return;
        };
        s.seen += 1;
        if s.windows.len() < MAX_WINDOWS_PER_DEVICE {
            s.windows.push(w.values);
        }
        if let Some(p) = profile {
            s.add_facts(
                max_peers,
                p.peers.items.iter().copied(),
                p.services_offered.items.iter().cloned(),
                p.ips.items.iter().copied(),
            );
        }
    }

    /// Facts of a device learned elsewhere than from its profile (a flow log): peers it
    /// opened flows to, services it offers ("tcp/1883 mqtt"), its addresses.
    pub fn add_facts(
        &mut self,
        id: DeviceId,
        peers: impl IntoIterator<Item = IpAddr>,
        services: impl IntoIterator<Item = String>,
        ips: impl IntoIterator<Item = IpAddr>,
    ) {
        let max_peers = self.max_peers;
        if let Some(s) = self.samples(id) {
            s.add_facts(max_peers, peers, services, ips);
        }
    }

    /// Freezes what was learned.
    pub fn build(&self) -> Baselines {
        let mut devices: Vec<DeviceBaseline> = self
            .per_device
            .iter()
            .map(|(id, s)| {
                let mut median_v = Vec::with_capacity(N_FEATURES);
                let mut mad_v = Vec::with_capacity(N_FEATURES);
                for i in 0..N_FEATURES {
                    let col: Vec<f64> = s.windows.iter().map(|w| w[i]).collect();
                    let (m, d) = median_mad(&col);
                    median_v.push(m);
                    mad_v.push(d);
                }
                DeviceBaseline {
                    device: id.to_string(),
                    ips: s.ips.iter().copied().collect(),
                    windows: s.seen,
                    median: median_v,
                    mad: mad_v,
                    peers: s.peers.clone(),
                    services: s.services.clone(),
                }
            })
            .collect();
        devices.sort_by(|a, b| a.device.cmp(&b.device));
        let mut b = Baselines {
            devices,
            index: HashMap::default(),
        };
        b.reindex();
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn robust_stats() {
        assert_eq!(median_mad(&[1.0, 2.0, 3.0, 4.0, 100.0]), (3.0, 1.0));
        assert_eq!(median_mad(&[]), (0.0, 0.0));
        assert_eq!(median_mad(&[5.0, 5.0]), (5.0, 0.0));
    }

    #[test]
    fn the_learner_keeps_baselines_for_max_devices_devices() {
        let cfg = crate::settings::DeviceConfig {
            max_devices: 3,
            max_peers: 2,
            ..Default::default()
        };
        let mut l = Learner::new(&cfg);
        for n in 0..5u8 {
            let ip = IpAddr::from([198, 18, 0, n]);
            for t in 0..4u64 {
                l.observe(
                    &WindowVector {
                        device: DeviceId::Ip(ip),
                        window: crate::time::Timestamp::from_secs(60 * t),
                        values: [f64::from(n); N_FEATURES],
                        new_peers: Vec::new(),
                        ip: Some(ip),
                        partial: false,
                    },
                    None,
                );
            }
            let peers = (0..5u8).map(|p| IpAddr::from([198, 19, 0, p]));
            l.add_facts(DeviceId::Ip(ip), peers, ["tcp/1883 mqtt".to_string()], [ip]);
        }
        // Every window trains the model; three devices get a baseline, with two peers each.
        assert_eq!(l.all.len(), 20);
        assert_eq!(l.devices_skipped, 8);
        let b = l.build();
        assert_eq!(b.devices.len(), 3);
        assert!(b
            .devices
            .iter()
            .all(|d| d.peers.len() == 2 && d.windows == 4));
    }
}
