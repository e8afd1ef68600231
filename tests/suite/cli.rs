//! Command line: exit codes, messages, `check`, standard input.

use crate::util::*;
use std::io::Write;
use std::process::Stdio;

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn input_errors_exit_2_with_the_file_and_reason() {
    let o = run(&["replay", "Cargo.toml"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("Cargo.toml: not a capture file"),
        "{}",
        stderr(&o)
    );
    assert!(o.stdout.is_empty(), "nothing written before the error");

    let o = run(&["replay", "pcaps/does-not-exist.pcap"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("does-not-exist.pcap"), "{}", stderr(&o));

    // A header cut short.
    let dir = std::env::temp_dir().join(format!("tapwatch-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let short = dir.join("short.pcap");
    let bytes = std::fs::read(pcap("http/zeek_http_get_plain.pcap")).unwrap();
    std::fs::write(&short, &bytes[..10]).unwrap();
    let o = run(&["replay", short.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("truncated file header"),
        "{}",
        stderr(&o)
    );

    // A bad file among good ones: nothing is processed, nothing written.
    let good = pcap("http/zeek_http_get_plain.pcap");
    let o = run(&["replay", good.to_str().unwrap(), short.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(o.stdout.is_empty());
    std::fs::remove_dir_all(&dir).ok();

    let o = run(&["replay"]);
    assert_eq!(o.status.code(), Some(2), "usage error");
}

#[test]
fn standard_input_is_read_as_a_stream() {
    let bytes = std::fs::read(pcap("mqtt/nfstream_mqtt_port17501_highrate_coap.pcap")).unwrap();
    let mut child = bin()
        .args(["replay", "-q", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        // Small writes, so records straddle reads.
        for chunk in bytes.chunks(1000) {
            stdin.write_all(chunk).unwrap();
        }
    });
    let o = child.wait_with_output().unwrap();
    writer.join().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let ev = events(&o.stdout);
    let st = final_stats(&ev);
    assert_eq!(st["decoder"]["pkts"], 8516);
    assert_eq!(st["flow"]["tcp"], 4);
    // pcapng through standard input too.
    let ng = std::fs::File::open(pcap("benign/ndpi_alexa_app_phone.pcapng")).unwrap();
    let o = bin()
        .args(["replay", "-q", "-"])
        .stdin(ng)
        .output()
        .unwrap();
    assert!(o.status.success());
    assert_eq!(final_stats(&events(&o.stdout))["decoder"]["pkts"], 3103);
}

#[test]
fn check_validates_config_and_rules_with_locations() {
    let o = run(&["check"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("rules from rules"));

    let dir = std::env::temp_dir().join(format!("tapwatch-check-{}", std::process::id()));
    let rules = dir.join("rules");
    std::fs::create_dir_all(&rules).unwrap();
    std::fs::write(
        rules.join("10-x.toml"),
        "[[rule]]\nsid = 1\nrev = 1\nkind = \"no_such_kind\"\nsignature = \"x\"\ncategory = \"y\"\nseverity = 2\n",
    )
    .unwrap();
    let o = run(&["check", "--rules", rules.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    let e = stderr(&o);
    assert!(
        e.contains("10-x.toml:4:") && e.contains("unknown kind"),
        "{e}"
    );

    let cfg = dir.join("tapwatch.toml");
    std::fs::write(
        &cfg,
        "[network]\nhome_net = [\"198.18.0.0/15\", \"198.18.0.0/99\"]\n",
    )
    .unwrap();
    let o = run(&["check", "--config", cfg.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    let e = stderr(&o);
    assert!(
        e.contains("tapwatch.toml:2:") && e.contains("198.18.0.0/99"),
        "{e}"
    );

    // The same errors stop a replay before any output.
    let o = run(&[
        "replay",
        "--config",
        cfg.to_str().unwrap(),
        "pcaps/http/zeek_http_get_plain.pcap",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(o.stdout.is_empty());
    std::fs::remove_dir_all(&dir).ok();
}

/// Copies a directory tree (the shipped rules, to edit one file of a copy).
fn copy_tree(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), &dest).unwrap();
        }
    }
}

#[test]
fn check_points_at_a_bad_topic_policy_entry() {
    let dir = std::env::temp_dir().join(format!("tapwatch-acl-{}", std::process::id()));
    let rules = dir.join("rules");
    copy_tree(std::path::Path::new("rules"), &rules);
    let policy = rules.join("policy/mqtt-topics.toml");
    let good = "[[device]]\nip = \"198.18.1.21\"\npublish = [\"site/temp/#\"]\n\n";
    for (bad, reason) in [
        (
            "[[device]]\nip = \"198.18.1.22\"\nclient_id = \"x\"\n",
            "exactly one of ip or client_id",
        ),
        ("[[device]]\nip = \"198.18.1.999\"\n", "198.18.1.999"),
    ] {
        std::fs::write(&policy, format!("{good}{bad}")).unwrap();
        let o = run(&["check", "--rules", rules.to_str().unwrap()]);
        assert_eq!(o.status.code(), Some(2));
        let e = stderr(&o);
        // The second entry starts on line 5.
        assert!(
            e.contains("mqtt-topics.toml:5:") && e.contains(reason),
            "{e}"
        );
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn output_to_a_file_and_a_closed_pipe() {
    let dir = std::env::temp_dir().join(format!("tapwatch-out-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("eve.json");
    let o = run(&[
        "replay",
        "-q",
        "--flows",
        "-o",
        out.to_str().unwrap(),
        "pcaps/scan/ndpi_nmap_syn_scan_1000_ports.pcap",
    ]);
    assert!(o.status.success());
    assert!(o.stdout.is_empty());
    let ev = events(&std::fs::read(&out).unwrap());
    assert_eq!(of_type(&ev, "flow").len(), 1994);
    std::fs::remove_dir_all(&dir).ok();

    // `tapwatch replay ... | head -1`: the reader goes away; tapwatch ends quietly.
    let mut child = bin()
        .args([
            "replay",
            "-q",
            "--flows",
            "pcaps/scan/ndpi_nmap_syn_scan_1000_ports.pcap",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "exit {:?}: {}", o.status, stderr(&o));
    assert!(stderr(&o).is_empty(), "{}", stderr(&o));
}

#[test]
fn bench_reports_rates() {
    let f = "pcaps/mqtt/nfstream_mqtt_port17501_highrate_coap.pcap";
    let o = run(&["bench", "--workers", "2", f]);
    assert!(o.status.success(), "{}", stderr(&o));
    let s = String::from_utf8_lossy(&o.stdout);
    assert!(
        s.contains("packets      8516") && s.contains("workers      2"),
        "{s}"
    );
    // With workers, each thread's CPU time (where Linux tells it).
    if std::path::Path::new("/proc/thread-self/schedstat").exists() {
        let line = s.lines().find(|l| l.starts_with("cpu (s)")).unwrap_or("");
        for k in ["reader", "workers", "back end", "%"] {
            assert!(line.contains(k), "{k} missing in {s}");
        }
        assert_eq!(line.matches('%').count(), 4, "{s}");
        // Their total, over the cores this process (and so the child) may run on.
        let total = s.lines().find(|l| l.starts_with("cpu total")).unwrap_or("");
        let cores = tapwatch::cli::cores();
        let core = if cores == 1 { "core" } else { "cores" };
        assert!(total.contains(&format!("% of {cores} {core} ")), "{s}");
    }
    // Time per stage is measured with one worker.
    let o = run(&["bench", "--workers", "1", f]);
    assert!(o.status.success(), "{}", stderr(&o));
    let s = String::from_utf8_lossy(&o.stdout);
    assert!(s.contains("packets      8516"), "{s}");
    for k in ["packets/s", "Gbit/s", "decode", "flow+proto", "peak RSS"] {
        assert!(s.contains(k), "{k} missing in {s}");
    }
    // The heap and stacks apart (where Linux tells them): some, and within the peak RSS.
    let mib = |key: &str| {
        s.lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(2))
            .and_then(|v| v.parse::<f64>().ok())
    };
    if std::fs::read_to_string("/proc/self/status").is_ok_and(|t| t.contains("RssAnon:")) {
        let (anon, rss) = (mib("peak anon"), mib("peak RSS"));
        assert!(anon.zip(rss).is_some_and(|(a, r)| a > 0.0 && a <= r), "{s}");
    }
}
