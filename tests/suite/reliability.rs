//! Clean stops and output handling: SIGINT during a replay from a slow pipe, a second signal,
//! output rotation by size and SIGHUP reopen (logrotate), a full disk.

use crate::util::*;
use serde_json::Value;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("tapwatch-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn signal(child: &Child, sig: &str) {
    let ok = std::process::Command::new("kill")
        .args([&format!("-{sig}"), &child.id().to_string()])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "kill -{sig} failed");
}

fn wait_exit(child: &mut Child, within: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("tapwatch did not exit within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until `f` holds for the JSON lines of `path` (bounded).
fn wait_for(path: &Path, what: &str, f: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        // Only whole lines.
        let whole = text.rsplit_once('\n').map_or("", |(a, _)| a);
        let ev: Vec<Value> = whole
            .lines()
            .map(|l| serde_json::from_str(l).expect("JSON line"))
            .collect();
        if f(&ev) {
            return ev;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn alerts(ev: &[Value]) -> Vec<String> {
    let mut v: Vec<String> = of_type(ev, "alert").iter().map(|a| a.to_string()).collect();
    v.sort();
    v
}

/// Starts `tapwatch replay -q -o OUT -` with its standard input held open by the test.
fn replay_from_pipe(out: &Path, extra: &[&str]) -> Child {
    bin()
        .args(["replay", "-q", "--no-model", "-o", out.to_str().unwrap()])
        .args(extra)
        .arg("-")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start tapwatch")
}

#[test]
fn a_frames_alerts_are_written_while_the_pipe_idles() {
    // The engine hands events to the analysis stage in batches of frames; an input that goes
    // quiet must not keep the last frames' alerts back. 63 frames within one second of packet
    // time: no tick hands them on either, only the idle input.
    let f = "pcaps/credentials/sv_ftp_bob_password_success.pcap";
    let dir = tmpdir("idle");
    let capture = std::fs::read(f).unwrap();
    for workers in ["1", "2"] {
        let full = dir.join(format!("full{workers}.json"));
        let o = run(&[
            "replay",
            "-q",
            "--no-model",
            "--workers",
            workers,
            "-o",
            full.to_str().unwrap(),
            f,
        ]);
        assert!(o.status.success());
        let expected = alerts(&events(&std::fs::read(&full).unwrap()));
        assert!(!expected.is_empty(), "the FTP login raises alerts");
        let out = dir.join(format!("idle{workers}.json"));
        let mut child = replay_from_pipe(&out, &["--workers", workers]);
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(&capture).unwrap();
        stdin.flush().unwrap();
        let ev = wait_for(&out, "every alert while the input idles", |ev| {
            alerts(ev).len() >= expected.len()
        });
        assert_eq!(alerts(&ev), expected, "{workers} workers");
        signal(&child, "INT");
        let status = wait_exit(&mut child, Duration::from_secs(10));
        drop(stdin);
        assert_eq!(status.code(), Some(130));
    }
}

#[test]
fn sigint_during_replay_from_a_slow_pipe_keeps_every_alert() {
    let dir = tmpdir("sigint");
    let capture = std::fs::read(pcap("lab/attack.pcap")).unwrap();
    // What a complete replay writes.
    let full = dir.join("full.json");
    let o = run(&[
        "replay",
        "-q",
        "--no-model",
        "-o",
        full.to_str().unwrap(),
        "pcaps/lab/attack.pcap",
    ]);
    assert!(o.status.success());
    let expected = alerts(&events(&std::fs::read(&full).unwrap()));
    assert!(expected.len() > 20, "the lab attack raises alerts");

    // The same capture through a pipe that then stays open and silent (a live feed): SIGINT.
    let out = dir.join("eve.json");
    let mut child = replay_from_pipe(&out, &[]);
    let mut stdin = child.stdin.take().unwrap();
    for c in capture.chunks(64 << 10) {
        stdin.write_all(c).unwrap();
    }
    stdin.flush().unwrap();
    // Alerts are flushed while the input is idle, before any signal.
    wait_for(&out, "alerts flushed while idle", |ev| {
        !of_type(ev, "alert").is_empty()
    });
    std::thread::sleep(Duration::from_millis(300));
    signal(&child, "INT");
    let status = wait_exit(&mut child, Duration::from_secs(10));
    drop(stdin);
    let mut err = String::new();
    use std::io::Read;
    let _ = child.stderr.take().unwrap().read_to_string(&mut err);
    assert_eq!(status.code(), Some(130), "exit code; stderr: {err}");
    let ev = events(&std::fs::read(&out).unwrap());
    assert_eq!(
        ev.last().map(|e| e["event_type"].clone()),
        Some("stats".into()),
        "the final stats event is the last line"
    );
    assert_eq!(
        final_stats(&ev)["capture"]["truncated_inputs"],
        serde_json::json!([])
    );
    assert_eq!(
        alerts(&ev),
        expected,
        "an interrupted replay writes every alert a full one does"
    );

    // Interrupted in the middle of the capture: what was raised so far is written, with stats.
    let out2 = dir.join("half.json");
    let mut child = replay_from_pipe(&out2, &[]);
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(&capture[..capture.len() / 2]).unwrap();
    stdin.flush().unwrap();
    wait_for(&out2, "first alerts", |ev| !of_type(ev, "alert").is_empty());
    signal(&child, "TERM");
    let status = wait_exit(&mut child, Duration::from_secs(10));
    drop(stdin);
    assert_eq!(status.code(), Some(130));
    let ev = events(&std::fs::read(&out2).unwrap());
    let st = final_stats(&ev);
    assert!(st["decoder"]["pkts"].as_u64().unwrap() > 1000, "{st}");
    assert_eq!(
        st["detect"]["alerts"].as_u64().unwrap(),
        of_type(&ev, "alert").len() as u64,
        "every alert counted was written"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_second_signal_exits_at_once() {
    let dir = tmpdir("sig2");
    let out = dir.join("eve.json");
    // Blocked reading the capture header: the first signal cannot be acted on yet.
    let mut child = replay_from_pipe(&out, &[]);
    std::thread::sleep(Duration::from_millis(500));
    signal(&child, "INT");
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        child.try_wait().unwrap().is_none(),
        "still waiting for input"
    );
    signal(&child, "INT");
    let status = wait_exit(&mut child, Duration::from_secs(5));
    assert_eq!(status.code(), Some(130));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn rotation_by_size_loses_no_line() {
    let dir = tmpdir("rotate");
    let out = dir.join("eve.json");
    let o = run(&[
        "replay",
        "-q",
        "--flows",
        "--rotate-size",
        "20K",
        "-o",
        out.to_str().unwrap(),
        "pcaps/scan/ndpi_nmap_syn_scan_1000_ports.pcap",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(files.len() > 5, "rotated into several files: {files:?}");
    let mut all = Vec::new();
    for f in &files {
        let bytes = std::fs::read(f).unwrap();
        assert!(bytes.ends_with(b"\n"), "{} ends mid-line", f.display());
        if f != &out {
            assert!(bytes.len() >= 20 << 10, "{} rotated early", f.display());
            assert!(bytes.len() < 24 << 10, "{} rotated late", f.display());
        }
        all.extend(events(&bytes));
    }
    // The same lines as without rotation: 1994 flows, the alert, devices, stats.
    assert_eq!(of_type(&all, "flow").len(), 1994);
    let plain = run(&[
        "replay",
        "-q",
        "--flows",
        "pcaps/scan/ndpi_nmap_syn_scan_1000_ports.pcap",
    ]);
    assert_eq!(all.len(), events(&plain.stdout).len());

    // Rotation needs an output file.
    let o = run(&[
        "replay",
        "--rotate-size",
        "1M",
        "pcaps/http/zeek_http_get_plain.pcap",
    ]);
    assert_eq!(o.status.code(), Some(2));
    let o = run(&[
        "replay",
        "--rotate-size",
        "12X",
        "-o",
        out.to_str().unwrap(),
        "pcaps/http/zeek_http_get_plain.pcap",
    ]);
    assert_eq!(o.status.code(), Some(2));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn sighup_reopens_the_output_after_logrotate_moved_it() {
    let dir = tmpdir("hup");
    let out = dir.join("eve.json");
    let moved = dir.join("eve.json.rotated");
    let capture = std::fs::read(pcap("lab/attack.pcap")).unwrap();
    let mut child = replay_from_pipe(&out, &["--flows"]);
    let mut stdin = child.stdin.take().unwrap();
    let half = capture.len() / 2;
    stdin.write_all(&capture[..half]).unwrap();
    stdin.flush().unwrap();
    wait_for(&out, "first half written", |ev| ev.len() > 10);
    // logrotate: move the file away, then SIGHUP.
    std::fs::rename(&out, &moved).unwrap();
    signal(&child, "HUP");
    std::thread::sleep(Duration::from_millis(300));
    stdin.write_all(&capture[half..]).unwrap();
    drop(stdin);
    let status = wait_exit(&mut child, Duration::from_secs(30));
    assert!(status.success(), "{status:?}");
    let before = events(&std::fs::read(&moved).unwrap());
    let after = events(&std::fs::read(&out).expect("reopened file"));
    assert!(!before.is_empty() && !after.is_empty());
    assert_eq!(after.last().unwrap()["event_type"], "stats");
    // Nothing lost: the two files hold what one replay writes.
    let plain = run(&[
        "replay",
        "-q",
        "--no-model",
        "--flows",
        "pcaps/lab/attack.pcap",
    ]);
    assert_eq!(before.len() + after.len(), events(&plain.stdout).len());
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_full_disk_is_reported_with_the_file_and_exit_1() {
    if !Path::new("/dev/full").exists() {
        eprintln!("SKIPPED: no /dev/full");
        return;
    }
    let o = run(&[
        "replay",
        "-q",
        "--flows",
        "-o",
        "/dev/full",
        "pcaps/scan/ndpi_nmap_syn_scan_1000_ports.pcap",
    ]);
    assert_eq!(o.status.code(), Some(1));
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        e.contains("writing /dev/full") && e.contains("No space left on device"),
        "{e}"
    );
    // Standard output on a full disk too.
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    let o = bin()
        .args(["replay", "-q", "pcaps/http/zeek_http_get_plain.pcap"])
        .stdout(full)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("writing standard output"));
}

#[test]
fn passwords_stay_masked_in_every_output_unless_revealed() {
    // HTTP Basic satta:Jolee9fair9g (base64 c2F0dGE6Sm9sZWU5ZmFpcjln) and MQTT user/pass logins.
    let secret = ["Jolee9fair9g", "c2F0dGE6Sm9sZWU5ZmFpcjln"];
    let f = "pcaps/mqtt/sv_mqtt311_midstream_no_connect_ipv6.pcap";
    for args in [
        vec!["replay", "--flows", f],
        vec!["replay", "--flows", "--learn-for", "1m", f],
        vec!["inventory", f],
        vec!["inventory", "--json", f],
        vec!["bench", f],
    ] {
        let o = run(&args);
        assert!(o.status.success(), "{args:?}");
        for out in [&o.stdout, &o.stderr] {
            let text = String::from_utf8_lossy(out);
            for s in secret {
                assert!(!text.contains(s), "{args:?} shows a password: {text}");
            }
        }
    }
    let o = run(&["replay", "--reveal-secrets", f]);
    assert!(String::from_utf8_lossy(&o.stdout).contains(secret[0]));
}

#[test]
fn rotation_by_time_loses_no_line() {
    let dir = tmpdir("rotate-secs");
    let out = dir.join("eve.json");
    let capture = std::fs::read(pcap("lab/attack.pcap")).unwrap();
    let mut child = replay_from_pipe(&out, &["--flows", "--rotate-secs", "1"]);
    let mut stdin = child.stdin.take().unwrap();
    let third = capture.len() / 3;
    for part in capture.chunks(third) {
        stdin.write_all(part).unwrap();
        stdin.flush().unwrap();
        std::thread::sleep(Duration::from_millis(1300));
    }
    drop(stdin);
    let status = wait_exit(&mut child, Duration::from_secs(30));
    assert!(status.success(), "{status:?}");
    let mut total = 0;
    let mut files = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let bytes = std::fs::read(e.unwrap().path()).unwrap();
        assert!(bytes.is_empty() || bytes.ends_with(b"\n"));
        total += events(&bytes).len();
        files += 1;
    }
    assert!(files >= 3, "{files} files");
    let plain = run(&[
        "replay",
        "-q",
        "--no-model",
        "--flows",
        "pcaps/lab/attack.pcap",
    ]);
    assert_eq!(total, events(&plain.stdout).len());
    std::fs::remove_dir_all(&dir).ok();
}
