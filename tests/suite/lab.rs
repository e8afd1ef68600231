//! End to end on the lab captures (pcaps/lab, recorded by tests/lab/run): per-kind recall and
//! precision against the ground truth. The thresholds are the bar the detectors are held to:
//! raise them as detectors improve, never lower them.

use crate::scorer::{score, table, Truth};
use crate::util::*;

/// (kind, minimum recall, minimum precision) on the attack capture.
const BAR: &[(&str, f64, f64)] = &[
    ("plaintext_mqtt", 1.0, 1.0),
    ("plaintext_http", 1.0, 1.0),
    ("plaintext_telnet", 1.0, 1.0),
    ("cleartext_credentials", 1.0, 0.65),
    ("default_credentials", 1.0, 0.5),
    ("brute_force", 1.0, 1.0),
    ("topic_acl_violation", 1.0, 0.65),
    ("port_scan", 1.0, 1.0),
    ("host_scan", 1.0, 0.5),
    ("lateral_movement", 1.0, 0.5),
    // With the shipped model (models/default.json, trained on pcaps/lab/benign.pcap).
    ("rate_spike", 1.0, 0.33),
    ("volume_spike", 1.0, 1.0),
    ("new_peer", 1.0, 0.65),
];

#[test]
fn attack_capture_meets_the_bar() {
    let truth = Truth::load(&pcap("lab/attack.truth.json"));
    let model = root().join("models/default.json");
    let ev = replay_events(
        &[&pcap("lab/attack.pcap")],
        &["--model", model.to_str().unwrap()],
    );
    let alerts: Vec<_> = ev
        .into_iter()
        .filter(|e| e["event_type"] == "alert")
        .collect();
    let s = score(&truth, &alerts);
    eprintln!("{}", table(&s));
    for &(kind, recall, precision) in BAR {
        let k = s
            .get(kind)
            .unwrap_or_else(|| panic!("{kind} has no labelled event"));
        assert!(
            k.recall() >= recall,
            "{kind}: recall {:.2} < {recall}\n{}",
            k.recall(),
            table(&s)
        );
        assert!(
            k.precision() >= precision,
            "{kind}: precision {:.2} < {precision}\n{}",
            k.precision(),
            table(&s)
        );
    }
}
