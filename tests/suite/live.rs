//! Live capture on a veth pair inside a network namespace that the test creates (no route out,
//! addresses from 198.18.0.0/15). Needs root and iproute2; prints why it is skipped otherwise.

use crate::util::*;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn sh(args: &[&str]) -> bool {
    Command::new(args[0])
        .args(&args[1..])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

struct Netns(String);
impl Drop for Netns {
    fn drop(&mut self) {
        sh(&["ip", "netns", "del", &self.0]);
    }
}

#[test]
fn live_capture_sees_ping_and_stops_cleanly_on_sigint() {
    let uid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(str::to_string))
        })
        .unwrap_or_default();
    if uid != "0" || !sh(&["ip", "-V"]) {
        eprintln!("SKIPPED live_capture test: needs root and iproute2 (uid {uid})");
        return;
    }
    if !sh(&["ping", "-V"]) {
        eprintln!("SKIPPED live_capture test: ping (iputils-ping) is not installed");
        return;
    }
    // Two namespaces joined by a veth pair: the client in one, the sensor in the other.
    let client = Netns(format!("twc{}", std::process::id()));
    let sensor = Netns(format!("tws{}", std::process::id()));
    let ok = sh(&["ip", "netns", "add", &client.0])
        && sh(&["ip", "netns", "add", &sensor.0])
        && sh(&[
            "ip", "-n", &client.0, "link", "add", "tw0", "type", "veth", "peer", "name", "tw1",
            "netns", &sensor.0,
        ])
        && sh(&[
            "ip",
            "-n",
            &client.0,
            "addr",
            "add",
            "198.18.200.1/30",
            "dev",
            "tw0",
        ])
        && sh(&[
            "ip",
            "-n",
            &sensor.0,
            "addr",
            "add",
            "198.18.200.2/30",
            "dev",
            "tw1",
        ])
        && sh(&["ip", "-n", &client.0, "link", "set", "tw0", "up"])
        && sh(&["ip", "-n", &sensor.0, "link", "set", "tw1", "up"]);
    if !ok {
        eprintln!("SKIPPED live_capture test: cannot create network namespaces here");
        return;
    }
    let ns = &sensor;
    // Inline (one thread) and with two workers fed by the capture thread.
    for workers in ["1", "2"] {
        let out = std::env::temp_dir().join(format!(
            "tapwatch-live-{}-{workers}.json",
            std::process::id()
        ));
        let _ = std::fs::remove_file(&out);
        let mut child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &ns.0,
                env!("CARGO_BIN_EXE_tapwatch"),
                "live",
                "-i",
                "tw1",
                "-q",
                "--flows",
                "--workers",
                workers,
            ])
            .args(["-f", "icmp", "-o", out.to_str().unwrap()])
            .stderr(Stdio::piped())
            .spawn()
            .expect("start tapwatch live");
        // Wait until the capture is open (bounded).
        std::thread::sleep(Duration::from_millis(1500));
        let pinged = Command::new("ip")
            .args([
                "netns",
                "exec",
                &client.0,
                "ping",
                "-c",
                "5",
                "-i",
                "0.2",
                "-W",
                "1",
                "198.18.200.2",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        std::thread::sleep(Duration::from_millis(500));
        // SIGINT the sensor (the `ip netns exec` wrapper execs it, so the PID is the sensor's).
        sh(&["kill", "-INT", &child.id().to_string()]);
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("tapwatch live did not stop within 10 s of SIGINT");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let mut err = String::new();
        use std::io::Read;
        let _ = child.stderr.take().unwrap().read_to_string(&mut err);
        assert_eq!(
            status.code(),
            Some(130),
            "exit code after SIGINT ({workers} workers); stderr: {err}"
        );
        let ev = events(&std::fs::read(&out).expect("output written"));
        let _ = std::fs::remove_file(&out);
        let st = final_stats(&ev);
        if !pinged {
            eprintln!("note: ping reported failure; checking what was captured anyway");
        }
        let icmp = st["decoder"]["icmp"].as_u64().unwrap();
        assert!(icmp >= 5, "ICMP packets seen: {st}");
        let flows = of_type(&ev, "flow");
        assert!(
            flows.iter().any(|f| f["proto"] == "ICMP"
                && (f["src_ip"] == "198.18.200.1" || f["dest_ip"] == "198.18.200.1")),
            "ICMP flow flushed at shutdown: {flows:?}"
        );
        assert!(
            st["capture"]["kernel_packets"].as_u64().unwrap() >= 5,
            "kernel counters: {st}"
        );
    }
}

/// Pings inside `ns` (traffic for the capture), then sends SIGINT to `child` and waits (10 s at
/// most) for it to stop.
fn ping_then_interrupt(ns: &str, child: &mut std::process::Child) -> std::process::ExitStatus {
    sh(&[
        "ip",
        "netns",
        "exec",
        ns,
        "ping",
        "-c",
        "3",
        "-i",
        "0.2",
        "127.0.0.1",
    ]);
    std::thread::sleep(Duration::from_millis(300));
    sh(&["kill", "-INT", &child.id().to_string()]);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("tapwatch live did not stop within 10 s of SIGINT");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn status_field(pid: u32, field: &str) -> Option<String> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with(field))
        .map(|l| l[field.len()..].trim().to_string())
}

#[test]
fn live_capture_drops_root_with_user() {
    let uid = status_field(std::process::id(), "Uid:").unwrap_or_default();
    if !uid.starts_with("0") || !sh(&["ip", "-V"]) || !sh(&["ping", "-V"]) {
        eprintln!("SKIPPED live --user test: needs root, iproute2 and ping (uid {uid})");
        return;
    }
    let nobody = std::fs::read_to_string("/etc/passwd")
        .unwrap_or_default()
        .lines()
        .any(|l| l.starts_with("nobody:"));
    if !nobody {
        eprintln!("SKIPPED live --user test: no user `nobody`");
        return;
    }
    // One namespace, capturing on its loopback.
    let ns = Netns(format!("twu{}", std::process::id()));
    if !(sh(&["ip", "netns", "add", &ns.0]) && sh(&["ip", "-n", &ns.0, "link", "set", "lo", "up"]))
    {
        eprintln!("SKIPPED live --user test: cannot create network namespaces here");
        return;
    }
    let out = std::env::temp_dir().join(format!("tapwatch-live-user-{}.json", std::process::id()));
    let _ = std::fs::remove_file(&out);
    let mut child = Command::new("ip")
        .args(["netns", "exec", &ns.0, env!("CARGO_BIN_EXE_tapwatch")])
        .args([
            "live", "-i", "lo", "-f", "icmp", "--user", "nobody", "--flows",
        ])
        .args(["-o", out.to_str().unwrap()])
        .stderr(Stdio::piped())
        .spawn()
        .expect("start tapwatch live");
    let pid = child.id();
    // The capture opens, then the process becomes nobody with no capability left.
    let deadline = Instant::now() + Duration::from_secs(10);
    let ids = loop {
        let u = status_field(pid, "Uid:").unwrap_or_default();
        if !u.is_empty() && !u.starts_with('0') {
            break u;
        }
        if Instant::now() > deadline || child.try_wait().unwrap().is_some() {
            let _ = child.kill();
            let mut err = String::new();
            use std::io::Read;
            let _ = child.stderr.take().unwrap().read_to_string(&mut err);
            panic!("tapwatch did not drop root (Uid {u}): {err}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let uids: Vec<&str> = ids.split_whitespace().collect();
    assert!(
        uids.len() == 4 && uids.iter().all(|u| *u == "65534"),
        "Uid: {ids}"
    );
    let gids = status_field(pid, "Gid:").unwrap_or_default();
    assert!(gids.split_whitespace().all(|g| g == "65534"), "Gid: {gids}");
    assert_eq!(status_field(pid, "Groups:").unwrap_or_default(), "65534");
    for cap in ["CapEff:", "CapPrm:", "CapInh:", "CapAmb:"] {
        assert_eq!(
            status_field(pid, cap).as_deref(),
            Some("0000000000000000"),
            "{cap}"
        );
    }
    // Still capturing after the switch.
    let status = ping_then_interrupt(&ns.0, &mut child);
    let mut err = String::new();
    use std::io::Read;
    let _ = child.stderr.take().unwrap().read_to_string(&mut err);
    assert_eq!(status.code(), Some(130), "stderr: {err}");
    assert!(err.contains("as user nobody (uid 65534)"), "{err}");
    let ev = events(&std::fs::read(&out).expect("output written"));
    let _ = std::fs::remove_file(&out);
    assert!(
        final_stats(&ev)["decoder"]["icmp"].as_u64().unwrap() >= 6,
        "{:?}",
        final_stats(&ev)
    );

    // Not root: --user is refused with a clear message.
    let o = Command::new(env!("CARGO_BIN_EXE_tapwatch"))
        .args(["live", "-i", "lo", "--user", "no-such-user-tw"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("no such user"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn live_capture_with_file_capabilities_drops_them_once_open() {
    let uid = status_field(std::process::id(), "Uid:").unwrap_or_default();
    if !uid.starts_with('0') || !sh(&["ip", "-V"]) || !sh(&["getcap", "-h"]) {
        eprintln!("SKIPPED live capabilities test: needs root, iproute2, setcap and setpriv");
        return;
    }
    if !sh(&["setpriv", "-V"]) || !sh(&["ping", "-V"]) {
        eprintln!("SKIPPED live capabilities test: needs setpriv and ping");
        return;
    }
    // A copy of the binary that nobody can run, with the capture capabilities as file caps.
    let dir = std::env::temp_dir().join(format!("tapwatch-caps-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let exe = dir.join("tapwatch");
    std::fs::copy(env!("CARGO_BIN_EXE_tapwatch"), &exe).unwrap();
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
    if !sh(&[
        "setcap",
        "cap_net_raw,cap_net_admin=eip",
        exe.to_str().unwrap(),
    ]) {
        eprintln!("SKIPPED live capabilities test: setcap failed (no file capabilities here)");
        return;
    }
    let ns = Netns(format!("twk{}", std::process::id()));
    if !(sh(&["ip", "netns", "add", &ns.0]) && sh(&["ip", "-n", &ns.0, "link", "set", "lo", "up"]))
    {
        eprintln!("SKIPPED live capabilities test: cannot create network namespaces here");
        return;
    }
    let out = dir.join("eve.json");
    let rules = crate::util::root().join("rules");
    // setpriv execs: the child's PID is the sensor's, running as nobody from the start.
    let mut child = Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns.0,
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
        ])
        .args(["--clear-groups", "--"])
        .arg(&exe)
        .args(["live", "-i", "lo", "-f", "icmp", "--no-model", "-r"])
        .arg(&rules)
        .arg("-o")
        .arg(&out)
        .stderr(Stdio::piped())
        .spawn()
        .expect("start tapwatch live");
    let pid = child.id();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut err = String::new();
    loop {
        // Running as nobody with the file capabilities until the capture is open, none after.
        let eff = status_field(pid, "CapEff:").unwrap_or_default();
        let uid = status_field(pid, "Uid:").unwrap_or_default();
        if uid.starts_with("65534") && eff == "0000000000000000" && out.exists() {
            break;
        }
        if Instant::now() > deadline || child.try_wait().unwrap().is_some() {
            let _ = child.kill();
            use std::io::Read;
            let _ = child.stderr.take().unwrap().read_to_string(&mut err);
            panic!("capabilities not dropped (Uid {uid}, CapEff {eff}): {err}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        status_field(pid, "CapPrm:").as_deref(),
        Some("0000000000000000")
    );
    let status = ping_then_interrupt(&ns.0, &mut child);
    use std::io::Read;
    let _ = child.stderr.take().unwrap().read_to_string(&mut err);
    assert_eq!(status.code(), Some(130), "stderr: {err}");
    assert!(
        err.contains("dropped capabilities CAP_NET_ADMIN,CAP_NET_RAW"),
        "{err}"
    );
    let ev = events(&std::fs::read(&out).expect("output written"));
    assert!(final_stats(&ev)["decoder"]["icmp"].as_u64().unwrap() >= 6);
    std::fs::remove_dir_all(&dir).ok();
}
