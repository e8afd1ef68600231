//! Run statistics: counters of every stage, gathered into the EVE `stats` event and the summary.

use crate::alert::AlertCounters;
use crate::capture::CaptureCounters;
use crate::decode::{DecodeCounters, SkipReason};
use crate::detect::Kind;
use crate::flow::FlowCounters;
use crate::time::Timestamp;
use serde_json::{json, Map, Value};

/// A snapshot of all counters.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    pub capture: CaptureCounters,
    /// Inputs cut in the middle of a record: (input, offset).
    pub truncated_inputs: Vec<(String, u64)>,
    pub decode: DecodeCounters,
    pub flow: FlowCounters,
    pub flows_active: u64,
    pub alerts: AlertCounters,
    pub alerts_suppressed: u64,
    pub app_events: u64,
    /// Protocol anomalies by name, before alert suppression.
    pub app_anomalies: std::collections::BTreeMap<&'static str, u64>,
    /// The device stage's counters.
    pub devices: crate::device::DeviceCounters,
    /// Entries dropped from the cross-flow tables when full, by table.
    pub state_evicted: std::collections::BTreeMap<&'static str, u64>,
}

impl Stats {
    /// The EVE `stats` event.
    pub fn event(&self, ts: Timestamp, uptime_secs: u64) -> Value {
        let mut skipped = Map::new();
        for r in SkipReason::ALL {
            skipped.insert(r.as_str().into(), self.decode.skipped[r.index()].into());
        }
        let unsupported: Map<String, Value> = self
            .decode
            .unsupported_links
            .iter()
            .filter(|(_, n)| *n > 0)
            .map(|(l, n)| (l.to_string(), (*n).into()))
            .collect();
        let mut by_kind = Map::new();
        for k in Kind::ALL {
            let n = self.alerts.by_kind[k.index()];
            if n > 0 {
                by_kind.insert(k.as_str().into(), n.into());
            }
        }
        let d = &self.decode;
        let f = &self.flow;
        let r = &f.reassembly;
        json!({
            "timestamp": ts.rfc3339().to_string(),
            "event_type": "stats",
            "stats": {
                "uptime": uptime_secs,
                "capture": {
                    "frames": self.capture.frames,
                    "input_bytes": self.capture.file_bytes,
                    "other_blocks": self.capture.other_blocks,
                    "kernel_packets": self.capture.kernel_received,
                    "kernel_drops": self.capture.kernel_drops,
                    "kernel_ifdrops": self.capture.if_drops,
                    "truncated_inputs": self.truncated_inputs.iter().map(|(p, o)| json!({"input": p, "offset": o})).collect::<Vec<_>>(),
                },
                "decoder": {
                    "pkts": d.packets, "bytes": d.bytes,
                    "ipv4": d.ipv4, "ipv6": d.ipv6, "tcp": d.tcp, "udp": d.udp,
                    "icmp": d.icmp, "arp": d.arp, "other_ip_proto": d.other_ip_proto,
                    "vlan": d.vlan, "vxlan": d.vxlan,
                    "snapped": d.snapped, "first_fragments": d.first_fragments,
                    "skipped": d.skipped_total(),
                    "skipped_by_reason": skipped,
                    "unsupported_link_types": unsupported,
                },
                "flow": {
                    "total": f.created, "tcp": f.tcp, "udp": f.udp, "other": f.other,
                    "active": self.flows_active, "ended": f.ended, "peak_active": f.peak_active,
                    "evicted": f.evicted, "idle_timeouts": f.idle_timeouts,
                    "active_timeouts": f.active_timeouts,
                },
                "tcp": {
                    "reassembly_bytes": r.delivered_bytes, "gaps": r.gaps, "gap_bytes": r.gap_bytes,
                    "ooo_segments": r.ooo_segments, "ooo_overflows": r.ooo_overflows,
                    "depth_reached": r.depth_reached, "overlap_bytes": r.overlap_bytes,
                    "memcap_flows": r.memcap_flows, "memcap_bytes": r.memcap_bytes,
                    "buffered_peak_bytes": r.held_peak,
                },
                "app_layer": { "events": self.app_events, "anomalies": self.app_anomalies },
                "detect": {
                    "alerts": self.alerts.written,
                    "alerts_by_kind": by_kind,
                    "suppressed": self.alerts_suppressed,
                    "no_rule": self.alerts.no_rule,
                    "state_evicted": self.state_evicted,
                },
                "device": {
                    "devices": self.devices.devices, "evicted": self.devices.evicted,
                    "returned": self.devices.returned,
                    "routers": self.devices.routers,
                    "routers_evicted": self.devices.routers_evicted,
                    "windows": self.devices.windows,
                    "window_overflow": self.devices.window_overflow,
                    "flow_log_overflow": self.devices.flow_log_overflow,
                },
            }
        })
    }

    /// The one-screen summary printed at the end of a run.
    pub fn summary(&self, secs: f64) -> String {
        let d = &self.decode;
        let mut s = String::new();
        use std::fmt::Write;
        let _ = writeln!(
            s,
            "tapwatch: {} packets ({} bytes) in {:.2} s; {} skipped, {} flows ({} tcp, {} udp, {} other), {} evicted",
            d.packets, d.bytes, secs, d.skipped_total(), self.flow.created, self.flow.tcp,
            self.flow.udp, self.flow.other, self.flow.evicted
        );
        for r in SkipReason::ALL {
            let n = d.skipped[r.index()];
            if n > 0 {
                let _ = writeln!(s, "  skipped {:<28} {n}", r.as_str());
            }
        }
        for (p, o) in &self.truncated_inputs {
            let _ = writeln!(
                s,
                "  input {p} is cut mid-record at byte {o}: processed up to the cut"
            );
        }
        let _ = writeln!(
            s,
            "alerts: {} written, {} suppressed",
            self.alerts.written, self.alerts_suppressed
        );
        for k in Kind::ALL {
            let n = self.alerts.by_kind[k.index()];
            if n > 0 {
                let _ = writeln!(s, "  {:<24} {n}", k.as_str());
            }
        }
        s
    }
}

/// A line `key: N kB` of `/proc/self/status` (Linux), in bytes.
fn status_bytes(key: &str) -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s
        .lines()
        .find(|l| l.strip_prefix(key).is_some_and(|r| r.starts_with(':')))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Peak resident set size of this process in bytes (Linux: VmHWM), if known.
pub fn peak_rss_bytes() -> Option<u64> {
    status_bytes("VmHWM")
}

/// Anonymous resident memory of this process in bytes (Linux: RssAnon): the heap and the
/// stacks, without the pages of a memory-mapped capture, which VmHWM counts.
pub fn anon_bytes() -> Option<u64> {
    status_bytes("RssAnon")
}

/// The peak of [`anon_bytes`] over a run (`tapwatch bench`), sampled every 10 ms of wall time
/// by a thread of its own: the kernel keeps the peak of the whole RSS, not of its anonymous
/// part. A peak shorter than the interval can be missed.
pub struct AnonPeak {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<Option<u64>>,
}

impl AnonPeak {
    pub fn start() -> AnonPeak {
        use std::sync::atomic::{AtomicBool, Ordering};
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let flag = std::sync::Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut peak = anon_bytes()?;
            while !flag.load(Ordering::Relaxed) {
                std::thread::sleep(std::time::Duration::from_millis(10));
                peak = peak.max(anon_bytes()?);
            }
            Some(peak)
        });
        AnonPeak { stop, thread }
    }

    /// Stops sampling; the peak, if the system tells it.
    pub fn stop(self) -> Option<u64> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let last = anon_bytes();
        self.thread.join().ok().flatten().max(last)
    }
}

/// CPU time the calling thread has run so far (Linux: the first field of
/// `/proc/thread-self/schedstat`, in nanoseconds), if known.
pub fn thread_cpu() -> Option<std::time::Duration> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let ns: u64 = s.split_whitespace().next()?.parse().ok()?;
    Some(std::time::Duration::from_nanos(ns))
}

/// CPU time of each thread of a run with workers (`tapwatch bench`): where the time went.
#[derive(Clone, Debug)]
pub struct ThreadCpu {
    /// The reader (the calling thread, from the start of the run).
    pub reader: std::time::Duration,
    pub workers: Vec<std::time::Duration>,
    /// The back end: devices, detectors, alert policy, output.
    pub back: std::time::Duration,
}

impl ThreadCpu {
    /// The threads' CPU time added up.
    pub fn total(&self) -> std::time::Duration {
        self.reader + self.back + self.workers.iter().sum::<std::time::Duration>()
    }

    /// `bench`'s line on how busy the run kept the `cores` it may use over `wall` seconds. No
    /// run can take less wall time than its CPU time spread over every core: near 100 %, more
    /// workers cannot make it faster on that machine.
    pub fn cores_line(&self, wall: f64, cores: usize) -> String {
        let total = self.total().as_secs_f64();
        let cores = cores.max(1);
        let (plural, them) = if cores == 1 {
            ("", "it")
        } else {
            ("s", "them")
        };
        format!(
            "cpu total    {total:.2} s, {:.0} % of {cores} core{plural} over the wall time (no less than {:.3} s on {them})",
            100.0 * total / (wall.max(1e-9) * cores as f64),
            total / cores as f64
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_cores_line_adds_every_thread_and_spreads_it_over_the_cores() {
        let ms = Duration::from_millis;
        let c = ThreadCpu {
            reader: ms(360),
            workers: vec![ms(510), ms(480)],
            back: ms(810),
        };
        assert_eq!(c.total(), ms(2160));
        assert_eq!(
            c.cores_line(1.141, 2),
            "cpu total    2.16 s, 95 % of 2 cores over the wall time (no less than 1.080 s on them)"
        );
        assert_eq!(
            c.cores_line(2.4, 1),
            "cpu total    2.16 s, 90 % of 1 core over the wall time (no less than 2.160 s on it)"
        );
        // No affinity known: one core.
        assert!(c.cores_line(2.4, 0).contains("of 1 core "));
    }
}
