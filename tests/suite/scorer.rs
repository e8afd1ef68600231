//! Scores alerts against a lab truth file (`pcaps/lab/*.truth.json`): an alert matches a
//! labelled event of the same kind when its source is the event's source, its destination is
//! the event's destination (an address, a CIDR or a list of them), and its time falls within
//! the event's [start - slack, end + slack]. Recall and precision are reported per kind.
#![allow(dead_code)]

use ipnet::IpNet;
use serde_json::Value;
use std::collections::BTreeMap;
use std::net::IpAddr;

/// Seconds an alert may come before the event starts or after it ends: window-based
/// detectors report at the end of their window (60 s) and brute-force episodes after 60 s of
/// quiet.
pub const SLACK_SECS: f64 = 150.0;

pub struct Truth {
    pub events: Vec<Value>,
}

impl Truth {
    pub fn load(path: &std::path::Path) -> Truth {
        let v: Value = serde_json::from_str(&std::fs::read_to_string(path).expect("truth file"))
            .expect("truth JSON");
        Truth {
            events: v["events"].as_array().cloned().unwrap_or_default(),
        }
    }
}

fn nets(v: &Value) -> Vec<IpNet> {
    let one = |s: &str| -> Option<IpNet> {
        s.parse::<IpNet>()
            .ok()
            .or_else(|| s.parse::<IpAddr>().ok().map(IpNet::from))
    };
    match v {
        Value::String(s) => one(s).into_iter().collect(),
        Value::Array(a) => a.iter().filter_map(|x| x.as_str().and_then(one)).collect(),
        _ => Vec::new(),
    }
}

fn ts_of(alert: &Value) -> f64 {
    // RFC 3339 with +00:00: parse by hand (no date crate in tests).
    let s = alert["timestamp"].as_str().unwrap_or("");
    let p = |a: usize, b: usize| s.get(a..b).and_then(|x| x.parse::<i64>().ok()).unwrap_or(0);
    let (y, m, d) = (p(0, 4), p(5, 7), p(8, 10));
    let (hh, mm, ss) = (p(11, 13), p(14, 16), p(17, 19));
    let micros = p(20, 26) as f64 / 1e6;
    // days from civil (H. Hinnant)
    let y2 = if m <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    (days * 86_400 + hh * 3600 + mm * 60 + ss) as f64 + micros
}

fn matches(ev: &Value, alert: &Value) -> bool {
    if ev["kind"] != alert["alert"]["kind"] {
        return false;
    }
    let src: Option<IpAddr> = alert["src_ip"].as_str().and_then(|s| s.parse().ok());
    let dst: Option<IpAddr> = alert["dest_ip"].as_str().and_then(|s| s.parse().ok());
    let ev_src = nets(&ev["src"]);
    let ev_dst = nets(&ev["dst"]);
    let src_ok = src.is_some_and(|ip| ev_src.iter().any(|n| n.contains(&ip)));
    // Device-level findings (scans, baselines) may name no destination.
    let dst_ok = match dst {
        Some(ip) => ev_dst.is_empty() || ev_dst.iter().any(|n| n.contains(&ip)),
        None => true,
    };
    let t = ts_of(alert);
    let start = ev["start"].as_f64().unwrap_or(0.0) - SLACK_SECS;
    let end = ev["end"].as_f64().unwrap_or(0.0) + SLACK_SECS;
    src_ok && dst_ok && t >= start && t <= end
}

/// Per kind: (labelled events, events found, alerts, alerts that match an event).
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct KindScore {
    pub events: usize,
    pub found: usize,
    pub alerts: usize,
    pub true_alerts: usize,
}

impl KindScore {
    pub fn recall(&self) -> f64 {
        if self.events == 0 {
            1.0
        } else {
            self.found as f64 / self.events as f64
        }
    }
    pub fn precision(&self) -> f64 {
        if self.alerts == 0 {
            1.0
        } else {
            self.true_alerts as f64 / self.alerts as f64
        }
    }
}

/// Scores alerts (EVE `alert` events) against the truth, for the kinds the truth labels.
pub fn score(truth: &Truth, alerts: &[Value]) -> BTreeMap<String, KindScore> {
    let mut out: BTreeMap<String, KindScore> = BTreeMap::new();
    for ev in &truth.events {
        let k = ev["kind"].as_str().unwrap_or("").to_string();
        let s = out.entry(k).or_default();
        s.events += 1;
        if alerts.iter().any(|a| matches(ev, a)) {
            s.found += 1;
        }
    }
    for a in alerts {
        let k = a["alert"]["kind"].as_str().unwrap_or("").to_string();
        if let Some(s) = out.get_mut(&k) {
            s.alerts += 1;
            if truth.events.iter().any(|ev| matches(ev, a)) {
                s.true_alerts += 1;
            }
        }
    }
    out
}

/// A table for test output.
pub fn table(scores: &BTreeMap<String, KindScore>) -> String {
    let mut s = format!(
        "{:<24} {:>6} {:>6} {:>7} {:>7} {:>7} {:>9}\n",
        "kind", "events", "found", "alerts", "true", "recall", "precision"
    );
    for (k, v) in scores {
        s += &format!(
            "{:<24} {:>6} {:>6} {:>7} {:>7} {:>7.2} {:>9.2}\n",
            k,
            v.events,
            v.found,
            v.alerts,
            v.true_alerts,
            v.recall(),
            v.precision()
        );
    }
    s
}
