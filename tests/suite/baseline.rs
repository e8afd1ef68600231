//! Device inventory, baselines and the learned model on real captures.

use crate::util::*;
use serde_json::Value;
use tapwatch::detect::learned::Model;

const BASELINE_KINDS: &[&str] = &[
    "rate_spike",
    "volume_spike",
    "new_peer",
    "new_service",
    "learned_outlier",
];

fn alerts_of(ev: &[Value], kinds: &[&str]) -> Vec<Value> {
    ev.iter()
        .filter(|e| e["event_type"] == "alert" && kinds.iter().any(|k| e["alert"]["kind"] == *k))
        .cloned()
        .collect()
}

#[test]
fn the_shipped_model_finds_the_lab_spikes_and_the_new_peer() {
    let model = root().join("models/default.json");
    let ev = replay_events(
        &[&pcap("lab/attack.pcap")],
        &["--model", model.to_str().unwrap()],
    );
    let a = alerts_of(&ev, BASELINE_KINDS);
    // humid (198.18.1.22) publishes ~45/s instead of one every 5 s.
    let rate = a
        .iter()
        .find(|e| e["alert"]["kind"] == "rate_spike" && e["src_ip"] == "198.18.1.22")
        .expect("rate_spike of humid");
    assert_eq!(rate["evidence"]["feature"], "mqtt_publishes");
    assert!(rate["evidence"]["ratio"].as_f64().unwrap() > 50.0, "{rate}");
    // bulb (198.18.1.24) uploads 8 MiB to a host it never talked to.
    let vol = a
        .iter()
        .find(|e| e["alert"]["kind"] == "volume_spike" && e["src_ip"] == "198.18.1.24")
        .expect("volume_spike of bulb");
    assert!(vol["evidence"]["value"].as_f64().unwrap() > 8_000_000.0);
    assert!(vol["evidence"]["explanation"]
        .as_str()
        .unwrap()
        .starts_with("bytes_out "));
    let peer = a
        .iter()
        .find(|e| e["alert"]["kind"] == "new_peer" && e["evidence"]["peer"] == "198.18.3.66")
        .expect("new_peer exfil");
    assert_eq!(peer["src_ip"], "198.18.1.24");
    assert_eq!(peer["dest_ip"], "198.18.3.66");
    // Learned outliers name the features that deviate and by how much.
    let lo = a
        .iter()
        .find(|e| e["alert"]["kind"] == "learned_outlier" && e["src_ip"] == "198.18.1.24")
        .expect("learned_outlier of bulb");
    let why = lo["evidence"]["explanation"].as_array().unwrap();
    assert!(
        !why.is_empty() && why[0].as_str().unwrap().contains("x its median"),
        "{lo}"
    );
    assert!(
        lo["evidence"]["score"].as_f64().unwrap() > lo["evidence"]["threshold"].as_f64().unwrap()
    );
    // The benign phase (before 198.18.1.24 turns) has no baseline alert.
    let attack_start = "2026-11-22T04:10:58";
    assert!(
        a.iter()
            .all(|e| e["timestamp"].as_str().unwrap() >= attack_start),
        "alerts in the benign phase: {:?}",
        a.iter()
            .filter(|e| e["timestamp"].as_str().unwrap() < attack_start)
            .collect::<Vec<_>>()
    );
}

#[test]
fn benign_captures_learned_online_stay_quiet() {
    // (capture, learning period): the first half of each long benign capture.
    for (f, learn) in [
        ("benign/ndpi_nest_log_sink.pcap", "3360s"),
        ("benign/ndpi_tplink_smarthome_broadcast.pcap", "930s"),
        ("lab/benign.pcap", "330s"),
    ] {
        let out = run(&["replay", "--learn-for", learn, pcap(f).to_str().unwrap()]);
        assert!(out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("learning done at"),
            "{f}: learning never finished: {err}"
        );
        let ev = events(&out.stdout);
        let a = alerts_of(&ev, BASELINE_KINDS);
        assert!(a.is_empty(), "{f}: {a:?}");
    }
}

#[test]
fn a_model_round_trips_and_bad_models_are_refused() {
    let dir = std::env::temp_dir().join(format!("tapwatch-model-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let m1 = dir.join("m1.json");
    let out = run(&[
        "train",
        pcap("lab/benign.pcap").to_str().unwrap(),
        "-o",
        m1.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let a = Model::load(&m1).expect("load");
    assert_eq!(a.provenance.captures[0].sha256.len(), 64);
    assert!(a.baselines.devices.len() >= 10);
    let m2 = dir.join("m2.json");
    a.save(&m2).unwrap();
    let b = Model::load(&m2).unwrap();
    assert_eq!(a, b);
    let probe = [
        3.0, 5.0, 1e6, 2e3, 4.0, 1.0, 250.0, 3.0, 1.0, 2.0, 0.0, 1.0, 0.0, 0.0,
    ];
    assert_eq!(a.score(&probe).to_bits(), b.score(&probe).to_bits());
    // Training is deterministic: the same capture gives the same model (but the training date).
    let m3 = dir.join("m3.json");
    assert!(run(&[
        "train",
        pcap("lab/benign.pcap").to_str().unwrap(),
        "-o",
        m3.to_str().unwrap()
    ])
    .status
    .success());
    let mut c = Model::load(&m3).unwrap();
    c.provenance.trained_at = a.provenance.trained_at.clone();
    assert_eq!(a, c);

    let text = std::fs::read_to_string(&m1).unwrap();
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "truncated",
            text[..text.len() / 2].to_string(),
            "not a valid model file",
        ),
        (
            "garbage",
            "not json at all".to_string(),
            "not a valid model file",
        ),
        (
            "other-version",
            text.replacen("\"format_version\": 1", "\"format_version\": 99", 1),
            "format version",
        ),
        (
            "other-schema",
            text.replacen("device-window-v1", "device-window-v0", 1),
            "feature schema",
        ),
        (
            "other-features",
            text.replacen("\"mqtt_publishes\"", "\"mqtt_messages\"", 1),
            "feature list",
        ),
        (
            "nan-threshold",
            text.replacen("\"threshold\": ", "\"threshold\": -1e999, \"x\": ", 1),
            "model",
        ),
    ];
    for (name, body, msg) in cases {
        let p = dir.join(format!("{name}.json"));
        std::fs::write(&p, body).unwrap();
        let out = run(&["check", "--model", p.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(2), "{name}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(p.to_str().unwrap()) && err.contains(msg),
            "{name}: {err}"
        );
        // A replay refuses it too, before writing anything.
        let out = run(&[
            "replay",
            "--model",
            p.to_str().unwrap(),
            pcap("http/zeek_http_get_plain.pcap").to_str().unwrap(),
        ]);
        assert_eq!(out.status.code(), Some(2), "{name}");
        assert!(out.stdout.is_empty());
    }
    let out = run(&["check", "--model", m1.to_str().unwrap()]);
    assert!(out.status.success());
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn inventory_and_device_events() {
    let out = run(&[
        "inventory",
        "--json",
        pcap("lab/benign.pcap").to_str().unwrap(),
    ]);
    assert!(out.status.success());
    let devs = events(&out.stdout);
    let broker = devs
        .iter()
        .find(|d| d["id"] == "02:00:00:00:01:10")
        .expect("the broker, by MAC");
    assert!(broker["ips"]["items"]
        .as_array()
        .unwrap()
        .iter()
        .any(|i| i == "198.18.1.10"));
    let offered: Vec<&str> = broker["services_offered"]["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(
        offered.contains(&"tcp/1883 mqtt") && offered.contains(&"tcp/8883 tls"),
        "{offered:?}"
    );
    let temp = devs
        .iter()
        .find(|d| d["id"] == "02:00:00:00:01:21")
        .unwrap();
    assert_eq!(temp["mqtt_client_ids"]["items"][0], "temp");
    assert_eq!(temp["mqtt_topics"]["items"][0], "site/temp/telemetry");
    // The router's MAC carries hosts of both segments: devices behind it are told apart by IP.
    assert!(devs.iter().all(
        |d| d["id"] != "02:00:00:00:01:01" || d["ips"]["items"].as_array().unwrap().len() == 1
    ));
    assert!(
        devs.iter().any(|d| d["id"] == "02:00:00:00:02:10"),
        "srv1 by its own MAC"
    );
    // A `device` event per new device in the EVE stream.
    let ev = replay_events(&[&pcap("lab/benign.pcap")], &["--no-model"]);
    let dev_ev: Vec<_> = ev.iter().filter(|e| e["event_type"] == "device").collect();
    assert_eq!(dev_ev.len(), devs.len());
    assert!(dev_ev
        .iter()
        .any(|e| e["device"]["id"] == "02:00:00:00:01:10" && e["src_ip"] == "198.18.1.10"));
}

/// A device first seen when it answers a flow (a responder) is announced no earlier than that
/// flow's first packet: not at the start of the activity window the answer fell in, which can
/// be before the flow, or the whole capture, began.
#[test]
fn device_events_are_not_dated_before_the_capture() {
    for capture in [
        "tls/arkime_curl_tls13.pcap",
        "scan/zeek_vnc_scanner_single_probe.pcap",
    ] {
        let o = run(&["replay", "-q", "--flows", pcap(capture).to_str().unwrap()]);
        assert!(o.status.success(), "{capture}");
        let ev = events(&o.stdout);
        // The capture's first flow starts with its first packet (these have no ARP before).
        let first = of_type(&ev, "flow")
            .into_iter()
            .filter_map(|f| f["flow"]["start"].as_str())
            .min()
            .unwrap();
        let devices = of_type(&ev, "device");
        assert!(!devices.is_empty(), "{capture}");
        for d in devices {
            let ts = d["timestamp"].as_str().unwrap();
            assert!(
                ts >= first,
                "{capture}: {d} before the first packet {first}"
            );
        }
    }
}
