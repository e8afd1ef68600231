//! The analysis stage: everything that needs a view across flows. It owns the device table, the
//! detectors, the baselines and the learned model, and is fed by the workers' [`Emitted`] events.
//!
//! Learning modes: with a model file, baselines and the model come from it; with
//! `--learn-for`, the first part of the run is learned (no baseline or learned alerts during
//! it), then baselines are frozen and a model trained; `tapwatch train` gathers every window.

use crate::app::Emitted;
use crate::detect::baseline::BaselineDetector;
use crate::detect::learned::{self, Calibration, Model, Provenance, ScorerKind};
use crate::detect::rules::{RuleError, RuleSet};
use crate::detect::{Detectors, Finding, Gate};
use crate::device::baseline::{Baselines, Learner};
use crate::device::{DeviceOutput, DeviceProfile, Devices};
use crate::settings::Settings;
use crate::time::Timestamp;

/// How baselines are obtained.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Learning {
    /// Baselines and model from the model file (or none).
    #[default]
    Frozen,
    /// Learn during the first `secs` seconds of packet time, then freeze.
    Online { secs: u64 },
    /// Gather every window for `tapwatch train`; no baseline detection.
    Collect,
}

pub struct Analysis {
    pub devices: Devices,
    pub detectors: Detectors,
    baseline: BaselineDetector,
    pub baselines: Baselines,
    pub model: Option<Model>,
    pub learner: Option<Learner>,
    learning: Learning,
    learn_until: Option<Timestamp>,
    dev_out: Vec<DeviceOutput>,
    /// Flow log rows to write (when `devices.log_flows` is on).
    pub flow_windows: Vec<crate::device::FlowWindow>,
    /// Messages for the operator (learning finished...).
    pub notes: Vec<String>,
}

impl Analysis {
    pub fn new(
        settings: &Settings,
        rules: &RuleSet,
        model: Option<Model>,
        learning: Learning,
    ) -> Result<Self, RuleError> {
        let baselines = model
            .as_ref()
            .map(|m| m.baselines.clone())
            .unwrap_or_default();
        let learner = match learning {
            Learning::Frozen => None,
            Learning::Online { .. } => Some(Learner::new(&settings.device)),
            Learning::Collect => {
                let mut l = Learner::new(&settings.device);
                l.kept = Some(Vec::new());
                Some(l)
            }
        };
        let mut detectors = Detectors::new(settings, rules)?;
        seed_known_pairs(&mut detectors, &baselines);
        Ok(Analysis {
            devices: Devices::new(settings),
            detectors,
            baseline: BaselineDetector::new(settings, rules)?,
            baselines,
            model,
            learner,
            learning,
            learn_until: None,
            dev_out: Vec::new(),
            flow_windows: Vec::new(),
            notes: Vec::new(),
        })
    }

    /// One worker event: detectors (asking the alert stage's `gate` ahead of findings that
    /// are mostly repeats), then devices.
    pub fn on_event(
        &mut self,
        ev: &Emitted,
        gate: &mut dyn Gate,
        findings: &mut Vec<Finding>,
        new_devices: &mut Vec<DeviceProfile>,
    ) {
        self.detectors.on_event(ev, gate, findings);
        self.devices.on_event(ev, &mut self.dev_out);
        self.drain_devices(findings, new_devices);
    }

    fn drain_devices(&mut self, findings: &mut Vec<Finding>, new_devices: &mut Vec<DeviceProfile>) {
        // Most events give the device stage nothing to hand on.
        if self.dev_out.is_empty() {
            return;
        }
        let mut outs = std::mem::take(&mut self.dev_out);
        for o in outs.drain(..) {
            match o {
                DeviceOutput::New(p) => new_devices.push(*p),
                DeviceOutput::FlowWindow(r) => self.flow_windows.push(*r),
                DeviceOutput::Window(w) if w.partial => {}
                DeviceOutput::Window(w) => {
                    let learning = match self.learning {
                        Learning::Collect => true,
                        Learning::Frozen => false,
                        Learning::Online { secs } => {
                            let until = *self.learn_until.get_or_insert(w.window.plus_secs(secs));
                            if w.window < until {
                                true
                            } else {
                                self.freeze(w.window);
                                false
                            }
                        }
                    };
                    let profile = self.devices.get(&w.device);
                    if learning {
                        if let Some(l) = self.learner.as_mut() {
                            l.observe(&w, profile);
                        }
                    } else {
                        self.baseline.on_window(
                            &w,
                            profile,
                            &self.baselines,
                            self.model.as_ref(),
                            findings,
                        );
                    }
                }
            }
        }
        self.dev_out = outs;
        self.dev_out.clear();
    }

    /// Ends online learning: freezes the baselines and trains a model.
    fn freeze(&mut self, at: Timestamp) {
        let Some(l) = self.learner.take() else { return };
        self.learning = Learning::Frozen;
        self.baselines = l.build();
        seed_known_pairs(&mut self.detectors, &self.baselines);
        let prov = Provenance {
            captures: Vec::new(),
            first_packet: String::new(),
            last_packet: at.rfc3339().to_string(),
            trained_at: String::new(),
            tapwatch_version: env!("CARGO_PKG_VERSION").into(),
            windows: l.all.len() as u64,
            devices: self.baselines.devices.len() as u64,
        };
        match learned::train(
            &l,
            self.devices.window_secs(),
            ScorerKind::Kmeans,
            Calibration {
                quantile: 0.995,
                margin: 1.5,
            },
            prov,
        ) {
            Ok((m, _)) => {
                self.notes.push(format!(
                    "learning done at {}: {} devices, {} windows ({} of devices beyond device.max_devices: model only); baselines frozen, k-means model trained",
                    at.rfc3339(),
                    self.baselines.devices.len(),
                    l.all.len(),
                    l.devices_skipped
                ));
                self.model = Some(m);
            }
            Err(e) => self.notes.push(format!(
                "learning done at {}: baselines frozen for {} devices; no learned model ({e})",
                at.rfc3339(),
                self.baselines.devices.len()
            )),
        }
    }

    /// End of input, in steps (see [`Detectors::finish_some`]): true while more remains, so
    /// that the caller writes each step's findings before the next is made.
    pub fn finish_some(
        &mut self,
        findings: &mut Vec<Finding>,
        new_devices: &mut Vec<DeviceProfile>,
        max: usize,
    ) -> bool {
        if self.detectors.finish_some(findings, max) {
            return true;
        }
        self.devices.finish(&mut self.dev_out);
        self.drain_devices(findings, new_devices);
        false
    }
}

/// Pairs of hosts that talked during training are known to the lateral-movement detector: their
/// sessions are not first contacts.
fn seed_known_pairs(d: &mut Detectors, b: &Baselines) {
    for dev in &b.devices {
        for ip in &dev.ips {
            for peer in &dev.peers {
                d.lateral.seed_known(*ip, *peer);
            }
        }
    }
}
