//! The EVE output: every line is typed JSON with the documented fields.

use crate::util::*;
use serde::Deserialize;

/// The header fields every flow event carries.
#[derive(Deserialize, Debug)]
#[allow(dead_code)]
struct FlowLine {
    timestamp: String,
    flow_id: u64,
    event_type: String,
    src_ip: std::net::IpAddr,
    dest_ip: std::net::IpAddr,
    proto: String,
    flow: FlowBody,
}

#[derive(Deserialize, Debug)]
#[allow(dead_code)]
struct FlowBody {
    pkts_toserver: u64,
    pkts_toclient: u64,
    bytes_toserver: u64,
    bytes_toclient: u64,
    start: String,
    end: String,
    reason: String,
}

fn is_rfc3339_micros(s: &str) -> bool {
    // 2024-05-01T12:00:03.123456+00:00
    let b = s.as_bytes();
    b.len() == 32
        && b[4] == b'-'
        && b[10] == b'T'
        && b[19] == b'.'
        && s.ends_with("+00:00")
        && b[20..26].iter().all(u8::is_ascii_digit)
}

#[test]
fn flow_and_stats_events_have_the_eve_shape() {
    let ev = replay_events(&[&pcap("benign/zeek_mixed_services_std_ports.pcap")], &[]);
    let flows = of_type(&ev, "flow");
    // tshark -q -z conv,tcp / conv,udp: 6 and 32 conversations.
    assert_eq!(flows.iter().filter(|f| f["proto"] == "TCP").count(), 6);
    assert_eq!(flows.iter().filter(|f| f["proto"] == "UDP").count(), 32);
    let mut ids = std::collections::HashSet::new();
    for f in &flows {
        let fl: FlowLine = serde_json::from_value((*f).clone()).expect("flow line");
        assert!(is_rfc3339_micros(&fl.timestamp), "{}", fl.timestamp);
        assert!(fl.flow_id < (1 << 53));
        assert!(ids.insert(fl.flow_id), "flow ids are unique");
        if fl.proto == "TCP" || fl.proto == "UDP" {
            assert!(f["src_port"].is_u64() && f["dest_port"].is_u64());
        }
        assert!(fl.flow.pkts_toserver >= 1);
    }
    // Timestamps come from the capture (2008..2012), never from the wall clock.
    assert!(flows
        .iter()
        .all(|f| f["timestamp"].as_str().unwrap() < "2020"));
    let st = final_stats(&ev);
    assert_eq!(st["decoder"]["pkts"], 263);
    assert!(
        ev.last().unwrap()["event_type"] == "stats",
        "stats come last"
    );
}

#[test]
fn tcp_flow_records_follow_the_connection() {
    let ev = replay_events(&[&pcap("http/zeek_http_get_plain.pcap")], &[]);
    let f = of_type(&ev, "flow");
    assert_eq!(f.len(), 1);
    let f = f[0];
    assert_eq!(f["proto"], "TCP");
    assert_eq!(f["dest_port"], 80);
    assert_eq!(f["tcp"]["syn"], true);
    assert_eq!(f["tcp"]["fin"], true);
    assert_eq!(f["flow"]["state"], "closed");
    let total =
        f["flow"]["pkts_toserver"].as_u64().unwrap() + f["flow"]["pkts_toclient"].as_u64().unwrap();
    assert_eq!(total, final_stats(&ev)["decoder"]["pkts"].as_u64().unwrap());
}

/// The flow log has one row per flow, device, role and window, written when the flow ends or
/// its window closes: a long flow cut into slices by the active timeout keeps one row a window.
#[test]
fn flow_log_rows_are_one_per_flow_and_window_across_active_timeout_slices() {
    let dir = std::env::temp_dir().join(format!("tapwatch-slices-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("slices.toml");
    std::fs::write(&cfg, "[flow]\nactive_timeout_secs = 20\n").unwrap();
    let ev = replay_events(
        &[&pcap("lab/benign.pcap")],
        &["--no-model", "-c", cfg.to_str().unwrap()],
    );
    let timeouts = final_stats(&ev)["flow"]["active_timeouts"]
        .as_u64()
        .unwrap();
    assert!(timeouts > 10, "{timeouts} active timeouts");
    let rows = of_type(&ev, "flow_window");
    assert!(rows.len() > 100, "{} rows", rows.len());
    let mut seen = std::collections::HashSet::new();
    for r in &rows {
        let key = (
            r["flow_id"].as_u64().unwrap(),
            r["device"].as_str().unwrap().to_string(),
            r["role"].as_str().unwrap().to_string(),
            r["window"].as_u64().unwrap(),
        );
        assert!(seen.insert(key.clone()), "two rows for {key:?}");
    }
    std::fs::remove_dir_all(&dir).ok();
}
