//! Several workers give the same output as one (compared sorted), on real captures.

use crate::util::*;

fn output(files: &[&std::path::Path], workers: &str) -> Vec<String> {
    let mut c = bin();
    c.args(["replay", "-q", "--flows", "--workers", workers]);
    for f in files {
        c.arg(f);
    }
    let out = c.output().expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.contains("\"event_type\":\"stats\""))
        .map(str::to_string)
        .collect();
    lines.sort();
    lines
}

#[test]
fn one_and_several_workers_give_the_same_alerts_and_flows() {
    let sets: Vec<Vec<std::path::PathBuf>> = vec![
        vec![pcap("lab/attack.pcap")],
        vec![pcap("scan/ndpi_nmap_syn_scan_1000_ports.pcap")],
        vec![pcap("iot-botnet/slips_rpi_mirai_like_telnet_scan.pcap")],
        vec![
            pcap("lateral/sv_smb2_psexec_add_user.pcap"),
            pcap("bruteforce/zeek_ftp_bruteforce_30_attempts.pcap"),
        ],
        vec![pcap("mqtt/nfstream_mqtt_port17501_highrate_coap.pcap")],
        vec![pcap("benign/ndpi_alexa_app_phone.pcapng")],
    ];
    for set in sets {
        let files: Vec<&std::path::Path> = set.iter().map(|p| p.as_path()).collect();
        let one = output(&files, "1");
        assert!(
            one.iter().any(|l| l.contains("\"event_type\":\"flow\"")),
            "{set:?}"
        );
        for n in ["2", "3"] {
            let many = output(&files, n);
            assert_eq!(one.len(), many.len(), "{set:?} with {n} workers");
            assert!(one == many, "{set:?}: output differs with {n} workers");
        }
    }
    // The final stats add up across workers.
    let out = run(&[
        "replay",
        "-q",
        "--workers",
        "2",
        pcap("lab/attack.pcap").to_str().unwrap(),
    ]);
    let ev = events(&out.stdout);
    let st = final_stats(&ev);
    assert_eq!(st["decoder"]["pkts"], 27646);
    assert_eq!(st["flow"]["ended"], st["flow"]["total"]);
}

/// The worker's events, with ticks and the end of input handed on whole or in pieces of
/// `piece` flows (the worker orders each piece as it would the whole).
fn worker_events(rel: &str, piece: Option<usize>) -> Vec<String> {
    use tapwatch::app::{Clock, Emitted, Worker};
    use tapwatch::capture::file::{CaptureFile, Next};
    let settings = tapwatch::settings::Settings::default();
    let mut w = Worker::new(&settings);
    let mut f = CaptureFile::open(&pcap(rel)).unwrap();
    let mut clock = Clock::default();
    let (mut ev, mut all): (Vec<Emitted>, Vec<String>) = (Vec::new(), Vec::new());
    let hand_on = |ev: &mut Vec<Emitted>, all: &mut Vec<String>| {
        all.extend(ev.drain(..).map(|e| format!("{e:?}")));
    };
    while let Ok(Next::Frame(fr)) = f.next_frame() {
        if clock.due(fr.ts) {
            match piece {
                None => w.tick(fr.ts, &mut ev),
                Some(n) => {
                    while w.tick_some(fr.ts, &mut ev, n) {
                        hand_on(&mut ev, &mut all);
                    }
                }
            }
            hand_on(&mut ev, &mut all);
        }
        w.frame(&fr, &mut ev);
        hand_on(&mut ev, &mut all);
    }
    match piece {
        None => w.finish(&mut ev),
        Some(n) => {
            while w.finish_some(&mut ev, n) {
                hand_on(&mut ev, &mut all);
            }
        }
    }
    hand_on(&mut ev, &mut all);
    all
}

#[test]
fn ticks_and_the_end_of_input_in_pieces_give_the_same_events() {
    for rel in [
        "lab/attack.pcap",
        "scan/ndpi_nmap_syn_scan_1000_ports.pcap",
        "benign/ndpi_nest_log_sink.pcap",
    ] {
        let whole = worker_events(rel, None);
        let activity = whole.iter().filter(|e| e.starts_with("Activity")).count();
        assert!(activity > 10, "{rel}: {activity} activity reports");
        for n in [1, 7] {
            assert_eq!(worker_events(rel, Some(n)), whole, "{rel}, pieces of {n}");
        }
    }
}

/// The lines a successful run wrote, in order, without its `stats` events.
fn body(o: &std::process::Output) -> Vec<String> {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter(|l| !l.contains("\"event_type\":\"stats\""))
        .map(str::to_string)
        .collect()
}

/// Runs of the same capture write the same bytes in the same order, also when several
/// brute-force episodes close at one moment (hash tables iterate in a per-process random
/// order; what is written must not follow it). The capture is the lab attack replayed as six
/// sites 0.1 s apart (`benches/make-capture`), so the sites' episodes end together.
#[test]
fn runs_write_the_same_bytes_in_the_same_order() {
    let path = std::env::temp_dir().join(format!("tapwatch-sites-{}.pcap", std::process::id()));
    let made = std::process::Command::new("python3")
        .arg(root().join("benches/make-capture"))
        .arg(&path)
        .args(["-n", "170000", "--attack-share", "1", "--spread", "0.6"])
        .output();
    // python3 is on every machine CI runs on (.ci/run installs it): no silent skip.
    let o = made.expect("python3 (benches/make-capture)");
    assert!(
        o.status.success(),
        "make-capture: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let p = path.to_str().unwrap();
    let a = run(&["replay", "-q", "--workers", "1", p]);
    let b = run(&["replay", "-q", "--workers", "1", p]);
    let c = run(&["replay", "-q", "--workers", "2", p]);
    let _ = std::fs::remove_file(&path);
    let (a, b, c) = (body(&a), body(&b), body(&c));
    assert!(a == b, "two runs wrote different output");
    assert!(
        a == c,
        "one and two workers wrote different output (unsorted)"
    );
    // The six sites replay one capture 0.1 s apart: their brute-force episodes start and end in
    // the same order, so the alerts come out in the order of their episodes' starts.
    let firsts: Vec<String> = a
        .iter()
        .filter(|l| l.contains("\"kind\":\"brute_force\""))
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["evidence"]["first"].as_str().unwrap_or("").to_string()
        })
        .collect();
    assert!(firsts.len() >= 12, "{} brute-force alerts", firsts.len());
    assert!(
        firsts.is_sorted(),
        "brute-force alerts out of order: {firsts:?}"
    );
}

/// Frames read from a stream are copied into the batches; a batch goes on once its copies reach
/// 1 MiB (so queued batches stay bounded whatever the frame size). A capture of large frames
/// (an MQTT 5 session publishing a 35 kB JPEG in 32 kB segments, repeated 64 times 1000 s
/// apart: 896 frames, 2.4 MB, one worker's 512 frames well over 1 MiB) read from standard input
/// with 2 workers writes the same bytes as the mapped file.
#[test]
fn a_stream_of_large_frames_gives_the_same_output_as_the_mapped_file() {
    let src = std::fs::read(pcap("mqtt/sv_mqtt5_pub_jpeg_37kB_ipv6.pcap")).unwrap();
    let (hdr, recs) = src.split_at(24);
    assert_eq!(
        &hdr[..4],
        b"\xd4\xc3\xb2\xa1",
        "little-endian microsecond pcap"
    );
    let mut out = hdr.to_vec();
    for k in 0..64u32 {
        let mut at = 0;
        while at + 16 <= recs.len() {
            let caplen = u32::from_le_bytes(recs[at + 8..at + 12].try_into().unwrap()) as usize;
            let secs = u32::from_le_bytes(recs[at..at + 4].try_into().unwrap()) + k * 1000;
            out.extend_from_slice(&secs.to_le_bytes());
            out.extend_from_slice(&recs[at + 4..at + 16 + caplen]);
            at += 16 + caplen;
        }
    }
    assert!(out.len() > 2 << 20);
    let path = std::env::temp_dir().join(format!("tapwatch-large-{}.pcap", std::process::id()));
    std::fs::write(&path, &out).unwrap();
    let mapped = run(&["replay", "-q", "--workers", "2", path.to_str().unwrap()]);
    let streamed = bin()
        .args(["replay", "-q", "--workers", "2", "-"])
        .stdin(std::fs::File::open(&path).unwrap())
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&path);
    let (a, b) = (body(&mapped), body(&streamed));
    assert!(a
        .iter()
        .any(|l| l.contains("\"kind\":\"cleartext_credentials\"")));
    assert!(a == b, "stream and mapped file differ");
    // Every frame was read, from both.
    for o in [&mapped, &streamed] {
        let ev = events(&o.stdout);
        assert_eq!(final_stats(&ev)["decoder"]["pkts"], 64 * 14);
        assert_eq!(final_stats(&ev)["flow"]["total"], 64);
    }
}
