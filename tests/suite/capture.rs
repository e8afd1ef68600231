//! Capture and decode on real captures: packet counts, flow counts, link types, malformed files.
#![allow(clippy::type_complexity)] // tables of expected results

use crate::util::*;

#[test]
fn every_capture_yields_the_manifest_packet_count() {
    let entries = manifest();
    assert!(
        entries.len() >= 100,
        "manifest has {} entries",
        entries.len()
    );
    let mut checked = 0;
    for e in entries {
        let r = replay_stats(&[pcap(&e.path)]);
        assert_eq!(
            r.stats.decode.packets, e.packets,
            "{}: packets decoded vs manifest",
            e.path
        );
        assert_eq!(r.stats.capture.frames, e.packets, "{}: frames read", e.path);
        assert!(
            r.stats.truncated_inputs.is_empty(),
            "{} reported as cut",
            e.path
        );
        checked += 1;
    }
    assert!(checked >= 100);
}

/// TCP and UDP conversation counts as reported by `tshark -n -r FILE -q -z conv,tcp` and
/// `conv,udp` (tshark 4.0.17, counted on 2026-11-22).
const CONVERSATIONS: &[(&str, u64, u64)] = &[
    ("mqtt/nfstream_mqtt_port17501_highrate_coap.pcap", 4, 12),
    ("benign/zeek_mixed_services_std_ports.pcap", 6, 32),
    ("benign/zeek_modbus_tcp_small.pcap", 16, 3),
    ("scan/ndpi_nmap_syn_scan_1000_ports.pcap", 1994, 0),
    ("scan/zeek_nmap_arp_sweep_and_tcp_probes.pcap", 17, 1),
    ("scan/ndpi_tcp_flag_probe_scan.pcapng", 7, 0),
    ("bruteforce/slips_nmap_ssh_brute_port902.pcap", 67, 0),
    ("bruteforce/zeek_ftp_bruteforce_30_attempts.pcap", 30, 0),
    ("bruteforce/zeek_ssh_password_guessing_11_conns.pcap", 11, 0),
    ("lateral/sv_smb2_psexec_add_user.pcap", 6, 15),
    ("mqtt/sv_mqtt311_midstream_no_connect_ipv6.pcap", 6, 0),
    ("iot-botnet/slips_rpi_mirai_like_telnet_scan.pcap", 138, 0),
    ("credentials/zeek_ftp_anonymous_ipv6.pcap", 6, 0),
    ("http/zeek_http_basic_auth_extra_space.pcap", 5, 0),
];

#[test]
fn flow_counts_match_tshark_conversations() {
    for &(f, tcp, udp) in CONVERSATIONS {
        let r = replay_stats(&[pcap(f)]);
        assert_eq!(r.stats.flow.tcp, tcp, "{f}: TCP flows");
        if !f.starts_with("iot-botnet/") {
            assert_eq!(r.stats.flow.udp, udp, "{f}: UDP flows");
        }
        assert_eq!(r.stats.flow.evicted, 0);
        assert_eq!(r.stats.flows_active, 0, "{f}: all flows flushed at the end");
        assert_eq!(r.stats.flow.ended, r.stats.flow.created, "{f}");
    }
}

#[test]
fn malformed_captures_end_with_the_documented_result() {
    // (file, packets, snapped, skip reason and count, flows)
    let cases: &[(&str, u64, u64, Option<(&str, u64)>, u64)] = &[
        ("malformed/zeek_empty.pcap", 0, 0, None, 0),
        (
            "malformed/zeek_ip4_truncated.pcap",
            1,
            1,
            Some(("truncated_ip_header", 1)),
            0,
        ),
        (
            "malformed/zeek_trunc_file_snaplen1.pcap",
            1,
            1,
            Some(("truncated_link_header", 1)),
            0,
        ),
        // Every frame cut to its headers; the SYN's options are cut but its fixed header is kept.
        (
            "malformed/zeek_tcp_syn_truncated_snaplen.pcap",
            24,
            24,
            None,
            1,
        ),
        ("malformed/tcpdump_telnet_iac_oobr.pcap", 1, 0, None, 1),
    ];
    for &(f, pkts, snapped, skip, flows) in cases {
        let ev = replay_events(&[&pcap(f)], &[]);
        let st = final_stats(&ev);
        assert_eq!(st["decoder"]["pkts"], pkts, "{f}");
        assert_eq!(st["decoder"]["snapped"], snapped, "{f}");
        assert_eq!(st["flow"]["total"], flows, "{f}");
        match skip {
            Some((reason, n)) => {
                assert_eq!(st["decoder"]["skipped_by_reason"][reason], n, "{f}");
                assert_eq!(st["decoder"]["skipped"], n, "{f}");
            }
            None => assert_eq!(st["decoder"]["skipped"], 0, "{f}"),
        }
    }
    // The cut SYN still starts a handshake: the flow saw SYN, SYN-ACK, FIN.
    let ev = replay_events(
        &[&pcap("malformed/zeek_tcp_syn_truncated_snaplen.pcap")],
        &[],
    );
    let flow = of_type(&ev, "flow")[0];
    assert_eq!(flow["tcp"]["syn"], true);
    assert_eq!(flow["src_ip"], "201.186.157.67");
    assert_eq!(flow["dest_port"], 25);
}

#[test]
fn link_types_decode_to_the_expected_endpoints() {
    // (file, expected flow src, dest, dest_port, vlan)
    let cases: &[(&str, &str, &str, u64, Option<&[u64]>)] = &[
        (
            "linktypes/sv_sll2_http.pcap",
            "192.168.1.253",
            "192.168.1.21",
            80,
            None,
        ),
        (
            "linktypes/zeek_nflog_http.pcap",
            "10.0.2.15",
            "93.184.216.34",
            80,
            None,
        ),
        (
            "linktypes/sv_http_ipv6_null_loopback.pcap",
            "::1",
            "::1",
            8000,
            None,
        ),
        (
            "linktypes/zeek_http_vlan_8021q.pcap",
            "141.142.228.5",
            "192.150.187.43",
            80,
            Some(&[0]),
        ),
        (
            "linktypes/zeek_http_qinq.pcap",
            "141.142.228.5",
            "192.150.187.43",
            80,
            Some(&[0, 0]),
        ),
        (
            "linktypes/zeek_http_vlan_qinqinq.pcap",
            "141.142.228.5",
            "192.150.187.43",
            80,
            Some(&[30, 20]),
        ),
        // VXLAN: the flow is the inner HTTP connection, not the outer UDP tunnel.
        (
            "linktypes/zeek_vxlan_http.pcap",
            "172.16.11.201",
            "54.86.237.188",
            80,
            None,
        ),
        (
            "linktypes/tcpdump_linktype_raw_ipv4_dns.pcap",
            "192.168.1.100",
            "9.9.9.9",
            53,
            None,
        ),
        (
            "linktypes/tcpdump_linktype_raw_ipv6_dns.pcap",
            "2001:db8::1",
            "2620:fe::9",
            53,
            None,
        ),
        (
            "http/zeek_http_basic_auth_colon_in_pass_rawip4.pcap",
            "",
            "",
            0,
            None,
        ),
    ];
    for &(f, src, dst, port, vlan) in cases {
        let ev = replay_events(&[&pcap(f)], &[]);
        let flows = of_type(&ev, "flow");
        assert!(!flows.is_empty(), "{f}: no flow");
        if src.is_empty() {
            continue;
        }
        let fl = flows
            .iter()
            .find(|e| e["dest_port"] == port)
            .unwrap_or_else(|| panic!("{f}: no flow to port {port}: {flows:?}"));
        assert_eq!(fl["src_ip"], src, "{f}");
        assert_eq!(fl["dest_ip"], dst, "{f}");
        match vlan {
            Some(v) => assert_eq!(fl["vlan"], serde_json::json!(v), "{f}"),
            None => assert!(fl.get("vlan").is_none(), "{f}"),
        }
        assert_eq!(final_stats(&ev)["decoder"]["skipped"], 0, "{f}");
    }
    let ev = replay_events(&[&pcap("linktypes/zeek_vxlan_http.pcap")], &[]);
    assert_eq!(final_stats(&ev)["decoder"]["vxlan"], 12);
    assert_eq!(of_type(&ev, "flow")[0]["vxlan"]["vni"], 1);
    // ARP and RARP over SLL2: ARP decodes; the RARP frame's EtherType is counted as unsupported.
    let ev = replay_events(&[&pcap("linktypes/zeek_sll2_icmp_arp.pcap")], &[]);
    let d = &final_stats(&ev)["decoder"];
    assert_eq!(d["pkts"], 6);
    assert!(d["arp"].as_u64().unwrap() >= 1, "{d}");
    assert!(d["icmp"].as_u64().unwrap() >= 2, "{d}");
}

#[test]
fn pcapng_with_two_interfaces_and_misnamed_files() {
    let r = replay_stats(&[pcap("linktypes/zeek_pcapng_multi_interface.pcapng")]);
    assert_eq!(r.stats.decode.packets, 6);
    assert_eq!(r.stats.decode.udp, 6);
    // pcapng named .pcap and pcap named .pcapng.
    let r = replay_stats(&[pcap("mqtt/ndpi_mqtt_user_eq_pass_and_azure_sas.pcap")]);
    assert_eq!(r.stats.decode.packets, 9);
    let r = replay_stats(&[pcap("scan/ndpi_tcp_flag_probe_scan.pcapng")]);
    assert_eq!(r.stats.flow.tcp, 7);
}

#[test]
fn several_files_form_one_timeline() {
    let a = pcap("mqtt/sv_mqtt5_pub_userpass_ipv6.pcap");
    let b = pcap("http/zeek_http_get_plain.pcap");
    let r = replay_stats(&[a.clone(), b.clone()]);
    let ra = replay_stats(&[a]);
    let rb = replay_stats(&[b]);
    assert_eq!(
        r.stats.decode.packets,
        ra.stats.decode.packets + rb.stats.decode.packets
    );
    assert_eq!(
        r.stats.flow.created,
        ra.stats.flow.created + rb.stats.flow.created
    );
}

#[test]
fn a_file_cut_mid_record_is_processed_up_to_the_cut() {
    let src = std::fs::read(pcap("benign/zeek_modbus_tcp_small.pcap")).unwrap();
    let dir = std::env::temp_dir().join(format!("tapwatch-cut-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cut = dir.join("cut.pcap");
    std::fs::write(&cut, &src[..src.len() - 30]).unwrap();
    let out = run(&["replay", "-q", cut.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cut mid-record"), "{stderr}");
    let ev = events(&out.stdout);
    let st = final_stats(&ev);
    assert_eq!(st["decoder"]["pkts"], 165, "all complete records of 166");
    assert_eq!(
        st["capture"]["truncated_inputs"].as_array().unwrap().len(),
        1
    );
    std::fs::remove_dir_all(&dir).ok();
}
