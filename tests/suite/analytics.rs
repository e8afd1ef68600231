//! The `analytics` feature (polars): window features from a flow log equal the ones computed
//! from the capture, `train --flows` gives the capture-trained model, `report` writes CSV and
//! Parquet that agree with the EVE log.

use crate::util::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use tapwatch::analytics;
use tapwatch::app;
use tapwatch::settings::Settings;

fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("tapwatch-analytics-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Replays `capture` with `--flows` into `out` (no model: the flow log does not depend on it).
fn flow_log(capture: &Path, out: &Path, extra: &[&str]) {
    let o = bin()
        .args(["replay", "-q", "--flows", "-o"])
        .arg(out)
        .args(extra)
        .arg(capture)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

type Row = (String, u64, Vec<f64>);

/// The device stage's windows of a capture (what `tapwatch train` learns from).
fn capture_windows(capture: &Path) -> Vec<Row> {
    let rules = app::load_rules(Some(&root().join("rules"))).unwrap();
    let r = app::collect(
        &Settings::default(),
        rules,
        &[capture.to_path_buf()],
        &AtomicBool::new(false),
    )
    .unwrap();
    r.analysis
        .learner
        .as_ref()
        .and_then(|l| l.kept.clone())
        .unwrap()
        .into_iter()
        .map(|w| (w.device.to_string(), w.window.secs(), w.values.to_vec()))
        .collect()
}

/// The complete windows computed by polars from a flow log (EVE JSON or Parquet).
fn log_windows(log: &Path) -> Vec<Row> {
    let lf = analytics::scan_flow_log(&[log.to_path_buf()]).unwrap();
    analytics::window_features(lf)
        .unwrap()
        .windows
        .into_iter()
        .filter(|w| !w.partial)
        .map(|w| (w.device.to_string(), w.window.secs(), w.values.to_vec()))
        .collect()
}

#[test]
fn flow_log_group_bys_give_the_capture_features() {
    let dir = tmpdir("features");
    for (i, cap) in [
        pcap("lab/benign.pcap"),
        pcap("lab/attack.pcap"),
        pcap("benign/ndpi_nest_log_sink.pcap"),
        pcap("benign/ndpi_tplink_smarthome_broadcast.pcap"),
    ]
    .iter()
    .enumerate()
    {
        let log = dir.join(format!("{i}.json"));
        flow_log(cap, &log, &["--no-model"]);
        let from_capture = capture_windows(cap);
        let from_log = log_windows(&log);
        assert!(
            from_capture.len() >= 5,
            "{}: {} windows",
            cap.display(),
            from_capture.len()
        );
        assert_eq!(from_log.len(), from_capture.len(), "{}", cap.display());
        for (a, b) in from_log.iter().zip(&from_capture) {
            assert_eq!(a, b, "{}", cap.display());
        }
        // Some windows carry traffic in every capture (the equality is not over zeros).
        assert!(from_log.iter().any(|w| w.2[2] > 0.0));
    }
    // The attack capture's spikes are in the log's features: bulb's 8 MiB upload.
    let attack = log_windows(&dir.join("1.json"));
    assert!(attack.iter().any(|w| w.2[2] > 8_000_000.0));
    std::fs::remove_dir_all(&dir).ok();
}

fn model_json(p: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
}

#[test]
fn train_from_a_flow_log_equals_train_from_the_capture_and_reads_parquet() {
    let dir = tmpdir("train");
    let log = dir.join("benign.json");
    flow_log(&pcap("lab/benign.pcap"), &log, &["--no-model"]);
    let from_cap = dir.join("cap.json");
    let from_log = dir.join("log.json");
    let from_parquet = dir.join("parquet.json");
    let o = run(&[
        "train",
        "pcaps/lab/benign.pcap",
        "-o",
        from_cap.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = run(&[
        "train",
        "--flows",
        log.to_str().unwrap(),
        "-o",
        from_log.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // report writes the flow log as Parquet; training reads it too.
    let rep = dir.join("report");
    let o = run(&["report", log.to_str().unwrap(), "-o", rep.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let pq = rep.join("flow_windows.parquet");
    assert_eq!(&std::fs::read(&pq).unwrap()[..4], b"PAR1");
    assert_eq!(log_windows(&pq), log_windows(&log));
    let o = run(&[
        "train",
        "--flows",
        pq.to_str().unwrap(),
        "-o",
        from_parquet.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    let (c, l, p) = (
        model_json(&from_cap),
        model_json(&from_log),
        model_json(&from_parquet),
    );
    for key in [
        "features",
        "feature_schema",
        "scaler",
        "scorer",
        "threshold",
        "window_secs",
    ] {
        assert_eq!(c[key], l[key], "{key}");
        assert_eq!(l[key], p[key], "{key}");
    }
    // Per-device medians, MADs, peers and services too (addresses seen only in ARP are not in
    // a flow log, so `ips` may be a subset).
    let (cd, ld) = (
        c["baselines"]["devices"].as_array().unwrap(),
        l["baselines"]["devices"].as_array().unwrap(),
    );
    assert_eq!(cd.len(), ld.len());
    for (a, b) in cd.iter().zip(ld) {
        for key in ["device", "windows", "median", "mad", "peers", "services"] {
            assert_eq!(a[key], b[key], "{} {key}", a["device"]);
        }
        for ip in b["ips"].as_array().unwrap() {
            assert!(a["ips"].as_array().unwrap().contains(ip));
        }
    }
    std::fs::remove_dir_all(&dir).ok();
}

fn csv_rows(p: &Path) -> Vec<Vec<String>> {
    std::fs::read_to_string(p)
        .unwrap()
        .lines()
        .map(|l| l.split(',').map(str::to_string).collect())
        .collect()
}

#[test]
fn report_writes_device_summaries_and_alert_timelines() {
    let dir = tmpdir("report");
    let log = dir.join("attack.json");
    let model = root().join("models/default.json");
    flow_log(
        &pcap("lab/attack.pcap"),
        &log,
        &["--model", model.to_str().unwrap()],
    );
    let ev = events(&std::fs::read(&log).unwrap());
    let alerts = of_type(&ev, "alert");
    assert!(alerts.len() > 10);
    let rep = dir.join("out");
    let o = run(&["report", log.to_str().unwrap(), "-o", rep.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for f in [
        "alerts.csv",
        "alerts.parquet",
        "alert_timeline.csv",
        "alert_timeline.parquet",
        "devices.csv",
        "devices.parquet",
        "flow_windows.parquet",
    ] {
        assert!(rep.join(f).is_file(), "{f}");
    }
    for f in [
        "alerts.parquet",
        "devices.parquet",
        "alert_timeline.parquet",
    ] {
        assert_eq!(&std::fs::read(rep.join(f)).unwrap()[..4], b"PAR1", "{f}");
    }
    // Every alert, in time order.
    let rows = csv_rows(&rep.join("alerts.csv"));
    assert_eq!(rows[0][0], "timestamp");
    assert_eq!(rows.len() - 1, alerts.len());
    let times: Vec<&String> = rows[1..].iter().map(|r| &r[0]).collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]));
    // The timeline counts add up to the alerts, per source and kind.
    let tl = csv_rows(&rep.join("alert_timeline.csv"));
    let h = &tl[0];
    let n = h.iter().position(|c| c == "alerts").unwrap();
    let total: usize = tl[1..].iter().map(|r| r[n].parse::<usize>().unwrap()).sum();
    assert_eq!(total, alerts.len());
    // One row per device of the flow log; the bulb (198.18.1.24, exfiltration) has alerts and
    // its 8 MiB upload.
    let devs = csv_rows(&rep.join("devices.csv"));
    let h = &devs[0];
    let col = |name: &str| h.iter().position(|c| c == name).unwrap();
    let distinct: std::collections::BTreeSet<&str> = of_type(&ev, "flow_window")
        .iter()
        .filter_map(|e| e["device"].as_str())
        .collect();
    assert_eq!(devs.len() - 1, distinct.len());
    let bulb_dev = of_type(&ev, "flow_window")
        .iter()
        .find(|e| e["device_ip"] == "198.18.1.24")
        .and_then(|e| e["device"].as_str())
        .unwrap()
        .to_string();
    let bulb = devs.iter().find(|r| r[col("device")] == bulb_dev).unwrap();
    assert!(bulb[col("alerts")].parse::<u64>().unwrap() > 0);
    assert!(bulb[col("bytes_out")].parse::<u64>().unwrap() > 8_000_000);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_bad_flow_log_is_refused_with_the_file_name() {
    let dir = tmpdir("bad");
    let empty = dir.join("no-flows.json");
    std::fs::write(&empty, "{\"event_type\":\"stats\"}\n").unwrap();
    let o = run(&[
        "train",
        "--flows",
        empty.to_str().unwrap(),
        "-o",
        "/dev/null",
    ]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("no-flows.json") && err.contains("no flow_window events"),
        "{err}"
    );
    let bad = dir.join("bad.json");
    std::fs::write(&bad, "{\"event_type\":\"flow_window\",\"window\":\"x\"\n").unwrap();
    let o = run(&["train", "--flows", bad.to_str().unwrap(), "-o", "/dev/null"]);
    assert_eq!(
        o.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("bad.json"));
    std::fs::remove_dir_all(&dir).ok();
}
