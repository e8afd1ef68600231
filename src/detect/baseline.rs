//! Detectors on device windows: thresholds on per-device baselines (`rate_spike`,
//! `volume_spike`, `new_peer`, `new_service`) and the learned outlier model (`learned_outlier`).
//!
//! Baselines come from the model file (trained offline) or are learned during the first
//! `--learn-for` of a run and then frozen. Until a device has a baseline of at least
//! `min_windows` windows, nothing is judged for it: a silent device does not alert on its first
//! packet.

use super::learned::Model;
use super::rules::{RuleError, RuleSet};
use super::{Finding, Kind};
use crate::device::baseline::{Baselines, DeviceBaseline};
use crate::device::{feature_index, DeviceProfile, WindowVector};
use crate::flow::Endpoint;
use crate::settings::Settings;
use serde::Deserialize;
use std::net::IpAddr;

#[derive(Deserialize, Clone, Copy)]
#[serde(deny_unknown_fields)]
struct SpikeParams {
    /// The value must be at least this many times the device's median.
    #[serde(default = "d_ratio")]
    ratio: f64,
    /// ... and above median + k * 1.4826 * MAD.
    #[serde(default = "d_k")]
    mad_k: f64,
    /// ... and at least this much per window (the floor).
    floor: Option<f64>,
    /// Training windows a device needs before it is judged.
    #[serde(default = "d_min_windows")]
    min_windows: u64,
}
fn d_ratio() -> f64 {
    10.0
}
fn d_k() -> f64 {
    10.0
}
fn d_min_windows() -> u64 {
    5
}

#[derive(Deserialize, Clone, Copy)]
#[serde(deny_unknown_fields)]
struct PeerParams {
    #[serde(default = "d_min_windows")]
    min_windows: u64,
    /// Alert on new external (non-home) peers too, not only east-west ones.
    #[serde(default = "yes")]
    external: bool,
    /// More new peers than this in one window make one summary alert.
    #[serde(default = "d_individual")]
    max_individual: usize,
}
fn d_individual() -> usize {
    5
}
fn yes() -> bool {
    true
}

/// Window-based detectors.
pub struct BaselineDetector {
    rate: Option<SpikeParams>,
    volume: Option<SpikeParams>,
    peer: Option<PeerParams>,
    service: Option<PeerParams>,
    learned: bool,
    settings: Settings,
}

fn spike(rules: &RuleSet, kind: Kind, floor: f64) -> Result<Option<SpikeParams>, RuleError> {
    match rules.enabled(kind, "") {
        Some(r) => {
            let mut p: SpikeParams = r.params()?;
            if p.ratio < 1.0 || p.mad_k < 0.0 {
                return Err(r.error("params.ratio must be >= 1 and params.mad_k >= 0"));
            }
            p.floor = Some(p.floor.unwrap_or(floor));
            Ok(Some(p))
        }
        None => Ok(None),
    }
}

impl BaselineDetector {
    pub fn new(settings: &Settings, rules: &RuleSet) -> Result<Self, RuleError> {
        let peer = |k| -> Result<Option<PeerParams>, RuleError> {
            match rules.enabled(k, "") {
                Some(r) => Ok(Some(r.params()?)),
                None => Ok(None),
            }
        };
        Ok(BaselineDetector {
            rate: spike(rules, Kind::RateSpike, 100.0)?,
            volume: spike(rules, Kind::VolumeSpike, 1_000_000.0)?,
            peer: peer(Kind::NewPeer)?,
            service: peer(Kind::NewService)?,
            learned: rules.enabled(Kind::LearnedOutlier, "").is_some(),
            settings: settings.clone(),
        })
    }

    fn base_finding(&self, w: &WindowVector, kind: Kind, ts: crate::time::Timestamp) -> Finding {
        Finding {
            ts,
            kind,
            variant: "",
            src: w.ip.map(|ip| Endpoint { ip, port: 0 }),
            dst: None,
            proto: 0,
            flow_id: None,
            vlan: Default::default(),
            app_proto: None,
            identifier: String::new(),
            evidence: super::Evidence::default(),
            admission: super::Admission::Undecided,
        }
        .with("device", w.device.to_string())
        .with("window_start", w.window.rfc3339().to_string())
    }

    fn zone(&self, ip: IpAddr) -> String {
        match self.settings.zone_of(ip) {
            Some(z) => z.to_string(),
            None if self.settings.is_home(ip) => "internal".into(),
            None => "external".into(),
        }
    }

    /// One device window, judged against the device's baseline and the model.
    pub fn on_window(
        &mut self,
        w: &WindowVector,
        profile: Option<&DeviceProfile>,
        baselines: &Baselines,
        model: Option<&Model>,
        out: &mut Vec<Finding>,
    ) {
        let ts = w.window.plus_secs(self.settings.device.window_secs);
        let base = baselines.get(&w.device);
        if let Some(b) = base {
            for (kind, params, features) in [
                (
                    Kind::RateSpike,
                    self.rate,
                    &["mqtt_publishes", "packets_out", "flows_out"][..],
                ),
                (Kind::VolumeSpike, self.volume, &["bytes_out"][..]),
            ] {
                let Some(p) = params else { continue };
                if b.windows < p.min_windows {
                    continue;
                }
                if let Some(f) = self.spike(w, b, kind, p, features, ts) {
                    out.push(f);
                }
            }
            if let Some(p) = self.peer {
                if b.windows >= p.min_windows {
                    self.new_peers(w, b, p, ts, out);
                }
            }
            if let (Some(p), Some(prof)) = (self.service, profile) {
                if b.windows >= p.min_windows {
                    for svc in &prof.services_offered.items {
                        if !b.services.contains(svc) {
                            let mut f = self
                                .base_finding(w, Kind::NewService, ts)
                                .with("service", svc.clone())
                                .with(
                                    "known_services",
                                    b.services.iter().cloned().collect::<Vec<_>>(),
                                );
                            f.identifier = format!("{}|{svc}", w.device);
                            out.push(f);
                        }
                    }
                }
            }
        }
        if let (true, Some(m)) = (self.learned, model) {
            let score = m.score(&w.values);
            // Explained only above the threshold (most windows are not).
            let why = if score > m.threshold {
                m.explain(w, 3)
            } else {
                Vec::new()
            };
            // The learned detector reports unusual activity: a window whose most deviant
            // feature is below the device's median (a quieter minute) is not an alert.
            let up = why.first().is_some_and(|(_, v, r, _)| v > r);
            if up {
                let text: Vec<String> = why
                    .iter()
                    .map(|(f, v, r, ratio)| {
                        if *v >= *r {
                            format!("{f} {ratio:.0}x its median ({v:.0} vs {r:.0})")
                        } else {
                            format!(
                                "{f} {:.0}x below its median ({v:.0} vs {r:.0})",
                                1.0 / ratio.max(1e-9)
                            )
                        }
                    })
                    .collect();
                let mut f = self
                    .base_finding(w, Kind::LearnedOutlier, ts)
                    .with("score", (score * 1000.0).round() / 1000.0)
                    .with("threshold", (m.threshold * 1000.0).round() / 1000.0)
                    .with("model", m.scorer.name())
                    .with("explanation", text)
                    .with(
                        "deviations",
                        why.iter()
                            .map(|(f, v, r, ratio)| serde_json::json!({"feature": f, "value": v, "median": r, "ratio": (ratio * 100.0).round() / 100.0}))
                            .collect::<Vec<_>>(),
                    )
                    .with("known_device", base.is_some());
                f.identifier = format!("{}|learned", w.device);
                out.push(f);
            }
        }
    }

    fn spike(
        &self,
        w: &WindowVector,
        b: &DeviceBaseline,
        kind: Kind,
        p: SpikeParams,
        features: &[&str],
        ts: crate::time::Timestamp,
    ) -> Option<Finding> {
        // The feature that exceeds its band by the most.
        let mut best: Option<(usize, f64)> = None;
        for name in features {
            let Some(i) = feature_index(name) else {
                continue;
            };
            let v = w.values[i];
            let m = b.median[i];
            // Packets are cheap (ACKs, relayed messages): they need 50x the floor.
            let floor = p.floor.unwrap_or(0.0)
                * match *name {
                    "packets_out" => 50.0,
                    "flows_out" => 2.0,
                    _ => 1.0,
                };
            if v >= floor && v >= p.ratio * m.max(1.0) && v > b.upper(i, p.mad_k) {
                let r = v / m.max(1.0);
                if best.is_none_or(|(_, br)| r > br) {
                    best = Some((i, r));
                }
            }
        }
        let (i, ratio) = best?;
        let name = crate::device::FEATURES[i];
        let secs = self.settings.device.window_secs.max(1) as f64;
        let mut f = self
            .base_finding(w, kind, ts)
            .with("feature", name)
            .with("value", w.values[i])
            .with("median", b.median[i])
            .with("mad", b.mad[i])
            .with("ratio", (ratio * 10.0).round() / 10.0)
            .with("per_second", (w.values[i] / secs * 100.0).round() / 100.0)
            .with(
                "baseline_per_second",
                (b.median[i] / secs * 100.0).round() / 100.0,
            )
            .with("window_secs", self.settings.device.window_secs)
            .with(
                "explanation",
                format!(
                    "{name} {ratio:.0}x its median ({:.0} vs {:.0} per window)",
                    w.values[i], b.median[i]
                ),
            );
        f.identifier = format!("{}|{}|{name}", w.device, kind.as_str());
        Some(f)
    }

    fn new_peers(
        &self,
        w: &WindowVector,
        b: &DeviceBaseline,
        p: PeerParams,
        ts: crate::time::Timestamp,
        out: &mut Vec<Finding>,
    ) {
        let own = w.ip.map(|ip| self.zone(ip));
        let fresh: Vec<IpAddr> = w
            .new_peers
            .iter()
            .copied()
            .filter(|peer| !b.peers.contains(peer) && !b.ips.contains(peer))
            .filter(|peer| p.external || self.settings.is_home(*peer))
            .collect();
        if fresh.is_empty() {
            return;
        }
        // Many new peers in one window (a sweep) make one alert that lists them.
        if fresh.len() > p.max_individual {
            let east_west = fresh
                .iter()
                .filter(|ip| self.settings.is_home(**ip))
                .count();
            let mut f = self
                .base_finding(w, Kind::NewPeer, ts)
                .with("new_peers", fresh.len())
                .with("east_west", east_west)
                .with("external", fresh.len() - east_west)
                .with(
                    "peers",
                    fresh
                        .iter()
                        .take(20)
                        .map(|ip| ip.to_string())
                        .collect::<Vec<_>>(),
                )
                .with("known_peers", b.peers.len());
            if let Some(z) = &own {
                f = f.with("device_zone", z.clone());
            }
            f.identifier = format!("{}|many", w.device);
            out.push(f);
            return;
        }
        for peer in fresh {
            let home = self.settings.is_home(peer);
            let zone = self.zone(peer);
            let direction = if home { "east-west" } else { "external" };
            let mut f = self
                .base_finding(w, Kind::NewPeer, ts)
                .with("peer", peer.to_string())
                .with("peer_zone", zone)
                .with("direction", direction)
                .with("known_peers", b.peers.len());
            if let Some(z) = &own {
                f = f.with("device_zone", z.clone());
            }
            f.dst = Some(Endpoint { ip: peer, port: 0 });
            f.identifier = format!("{}|{peer}", w.device);
            out.push(f);
        }
    }
}
