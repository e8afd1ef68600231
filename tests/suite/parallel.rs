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
