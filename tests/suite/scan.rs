//! Scan and lateral-movement detection on the real captures (issue 5). The expected numbers come
//! from tshark; each assertion gives the command.

use crate::util::{of_type, pcap, replay_events};
use serde_json::Value;

fn alerts(rel: &str) -> Vec<Value> {
    let ev = replay_events(&[&pcap(rel)], &[]);
    of_type(&ev, "alert").into_iter().cloned().collect()
}

fn of_kind<'a>(al: &'a [Value], kind: &str) -> Vec<&'a Value> {
    al.iter().filter(|a| a["alert"]["kind"] == kind).collect()
}

fn scans(al: &[Value]) -> Vec<&Value> {
    al.iter()
        .filter(|a| a["alert"]["kind"] == "port_scan" || a["alert"]["kind"] == "host_scan")
        .collect()
}

/// The single alert of `kind`, from `src`.
fn one<'a>(al: &'a [Value], kind: &str, src: &str) -> &'a Value {
    let v = of_kind(al, kind);
    assert_eq!(v.len(), 1, "one {kind} expected: {al:#?}");
    assert_eq!(v[0]["src_ip"], src, "{:#}", v[0]);
    v[0]
}

fn n(a: &Value, key: &str) -> u64 {
    a["evidence"][key]
        .as_u64()
        .unwrap_or_else(|| panic!("evidence.{key} in {a:#}"))
}

fn strings(a: &Value, key: &str) -> Vec<String> {
    a["evidence"][key]
        .as_array()
        .unwrap_or_else(|| panic!("evidence.{key} in {a:#}"))
        .iter()
        .map(|v| v.as_str().unwrap_or_default().to_string())
        .collect()
}

fn close(got: u64, want: u64, tolerance: u64) -> bool {
    got.abs_diff(want) <= tolerance
}

#[test]
fn nmap_syn_scan_is_a_port_scan_of_1000_ports() {
    let al = alerts("scan/ndpi_nmap_syn_scan_1000_ports.pcap");
    let a = one(&al, "port_scan", "172.16.0.8");
    assert_eq!(a["dest_ip"], "64.13.134.52");
    assert_eq!(n(a, "targets"), 1);
    // tshark -n -r pcaps/scan/ndpi_nmap_syn_scan_1000_ports.pcap
    //   -Y 'tcp.flags.syn==1 && tcp.flags.ack==0' -T fields -e tcp.dstport | sort -u | wc -l  -> 1000
    assert_eq!(n(a, "ports"), 1000);
    // ... -Y 'tcp.flags.syn==1 && tcp.flags.ack==1' -T fields -e tcp.srcport | sort -u -> 22 53 80
    assert_eq!(n(a, "failed"), 997);
    assert_eq!(a["evidence"]["probe_type"], "syn");
    assert_eq!(a["evidence"]["mirai_like"], false);
    assert!(of_kind(&al, "host_scan").is_empty());
}

#[test]
fn flag_probes_are_a_port_scan() {
    let al = alerts("scan/ndpi_tcp_flag_probe_scan.pcapng");
    let a = one(&al, "port_scan", "192.168.1.178");
    assert_eq!(a["dest_ip"], "192.168.1.2");
    // tshark -n -r pcaps/scan/ndpi_tcp_flag_probe_scan.pcapng -Y 'ip.src==192.168.1.178 && tcp'
    //   -T fields -e tcp.dstport -e tcp.flags.str | sort -u
    //   -> SYN 80 443 445 3389, FIN 3390, NULL 3391, FIN+PSH+URG 3392: 7 ports, 1 host
    assert_eq!(n(a, "ports"), 7);
    assert_eq!(n(a, "targets"), 1);
    let types = &a["evidence"]["probe_types"];
    for t in ["null", "fin", "xmas"] {
        assert_eq!(types[t], 1, "{t}: {a:#}");
    }
    assert_eq!(a["evidence"]["decided_by"], "odd_flags");
}

#[test]
fn arp_scan_of_255_hosts() {
    let al = alerts("scan/slips_arp_scan_257_hosts.pcap");
    let a = one(&al, "host_scan", "192.168.1.247");
    assert_eq!(a["evidence"]["probe_type"], "arp");
    // tshark -n -r pcaps/scan/slips_arp_scan_257_hosts.pcap
    //   -Y 'arp.opcode==1 && arp.src.proto_ipv4==192.168.1.247' -T fields -e arp.dst.proto_ipv4
    //   | sort -u | wc -l  -> 255
    assert_eq!(a["evidence"]["targets_by_protocol"]["arp"], 255);
    assert!(close(n(a, "targets"), 255, 3), "{a:#}");
    // ... -Y 'arp.opcode==2 && arp.dst.proto_ipv4==192.168.1.247' -> 3 replies
    assert!(close(n(a, "failed"), 252, 3), "{a:#}");
    assert_eq!(scans(&al).len(), 1);
}

#[test]
fn nmap_arp_sweep_then_tcp_probes() {
    let al = alerts("scan/zeek_nmap_arp_sweep_and_tcp_probes.pcap");
    let a = one(&al, "host_scan", "192.168.1.71");
    assert_eq!(a["evidence"]["probe_type"], "arp");
    // tshark -n -r pcaps/scan/zeek_nmap_arp_sweep_and_tcp_probes.pcap -Y 'arp.opcode==1'
    //   -T fields -e arp.dst.proto_ipv4 | sort -u | wc -l  -> 245
    assert_eq!(a["evidence"]["targets_by_protocol"]["arp"], 245);
    // ... -Y 'ip.src==192.168.1.71 && tcp.flags.syn==1' -T fields -e ip.dst | sort -u | wc -l -> 7
    assert_eq!(a["evidence"]["targets_by_protocol"]["tcp"], 7);
    assert!(a["evidence"]["probe_types"]["syn"].as_u64().unwrap_or(0) > 0);
    assert_eq!(scans(&al).len(), 1);
}

#[test]
fn icmp_ping_sweep() {
    let al = alerts("scan/slips_icmp_ping_sweep.pcap");
    let a = one(&al, "host_scan", "192.168.1.109");
    assert_eq!(a["evidence"]["probe_type"], "icmp");
    assert_eq!(a["proto"], "ICMP");
    // tshark -n -r pcaps/scan/slips_icmp_ping_sweep.pcap -Y 'icmp.type==8' -T fields -e ip.dst
    //   | sort -u | wc -l  -> 18;  -Y 'icmp.type==0' -> 11 hosts answer
    assert_eq!(n(a, "targets"), 18);
    assert_eq!(n(a, "failed"), 7);
}

#[test]
fn mirai_like_telnet_scanning() {
    let al = alerts("iot-botnet/slips_rpi_mirai_like_telnet_scan.pcap");
    // A 10-minute scan: reported when it passes max_episode_secs (600 s) while ongoing, then
    // once more, summarised, when it ends.
    let hs = of_kind(&al, "host_scan");
    assert!(
        hs.len() <= 2 && hs.iter().all(|a| a["src_ip"] == "192.168.2.16"),
        "{hs:#?}"
    );
    let a = *hs.last().expect("a host_scan");
    assert!(hs.len() == 1 || a["evidence"]["update"] == true);
    assert_eq!(a["evidence"]["mirai_like"], true);
    assert_eq!(a["evidence"]["probe_type"], "syn");
    // tshark -n -r pcaps/iot-botnet/slips_rpi_mirai_like_telnet_scan.pcap
    //   -Y 'ip.src==192.168.2.16 && tcp.flags.syn==1 && tcp.flags.ack==0 && !icmp'
    //   -T fields -e ip.dst | sort -u | wc -l  -> 136
    assert!(
        close(
            a["evidence"]["targets_by_protocol"]["tcp"]
                .as_u64()
                .unwrap(),
            136,
            2
        ),
        "{a:#}"
    );
    // ... same with '&& (tcp.dstport==23 || tcp.dstport==2323)' -> 81
    assert_eq!(n(a, "telnet_targets"), 81);
    let top: Vec<u64> = a["evidence"]["top_ports"]
        .as_array()
        .unwrap()
        .iter()
        .take(3)
        .map(|p| p["port"].as_u64().unwrap())
        .collect();
    assert_eq!(top, vec![23, 8080, 2323], "{a:#}");
    assert_eq!(scans(&al).len(), hs.len());
}

#[test]
fn no_scan_alert_for_one_probe_benign_or_brute_force() {
    let mut files = vec![
        "scan/zeek_vnc_scanner_single_probe.pcap".to_string(),
        "bruteforce/zeek_ftp_bruteforce_30_attempts.pcap".into(),
        "bruteforce/zeek_ssh_password_guessing_11_conns.pcap".into(),
        "bruteforce/slips_nmap_ssh_brute_port902.pcap".into(),
    ];
    let dir = crate::util::root().join("pcaps/benign");
    let mut benign: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| format!("benign/{}", e.unwrap().file_name().to_string_lossy()))
        .collect();
    benign.sort();
    assert!(benign.len() >= 10);
    files.extend(benign);
    for f in files {
        let al = alerts(&f);
        assert!(scans(&al).is_empty(), "{f}: {:#?}", scans(&al));
    }
}

#[test]
fn psexec_over_smb_is_lateral_movement() {
    let al = alerts("lateral/sv_smb2_psexec_add_user.pcap");
    let v = of_kind(&al, "lateral_movement");
    let a = v
        .iter()
        .find(|a| a["dest_ip"] == "192.168.10.10")
        .unwrap_or_else(|| panic!("{al:#?}"));
    assert_eq!(a["src_ip"], "192.168.10.31");
    assert_eq!(a["evidence"]["service"], "smb");
    // tshark -n -r pcaps/lateral/sv_smb2_psexec_add_user.pcap -Y 'smb2.cmd==3 || smb2.cmd==5'
    //   -T fields -e smb2.tree -e smb2.filename
    let shares = strings(a, "smb_shares");
    assert!(shares.contains(&"ADMIN$".into()) && shares.contains(&"IPC$".into()));
    let pipes = strings(a, "named_pipes");
    for p in ["svcctl", "PSEXESVC", "PSEXESVC-VICTIM-PC-2412-stdin"] {
        assert!(pipes.contains(&p.to_string()), "{p}: {pipes:?}");
    }
    assert!(strings(a, "smb_files").contains(&"PSEXESVC.exe".into()));
    // ... -Y 'dcerpc.cn_bind_to_uuid' -> 367abb81-9844-35f1-ad32-98f038001003 (svcctl)
    assert!(strings(a, "rpc_interfaces").contains(&"svcctl".into()));
    let tech = strings(a, "techniques");
    assert!(tech.contains(&"psexec".into()) && tech.contains(&"remote_service".into()));
}

#[test]
fn remote_at_job_samr_and_svcctl_over_tcp() {
    // tshark -n -r pcaps/lateral/sv_smb2_atsvc_remote_job.pcap -Y dcerpc.cn_bind_to_uuid
    //   -> 1ff70682-0a51-30e8-076d-740be8cee98b (atsvc), 192.168.10.31 -> 192.168.10.30:445
    let al = alerts("lateral/sv_smb2_atsvc_remote_job.pcap");
    let a = one(&al, "lateral_movement", "192.168.10.31");
    assert_eq!(a["dest_ip"], "192.168.10.30");
    assert!(strings(a, "rpc_interfaces").contains(&"atsvc".into()));
    assert!(strings(a, "rpc_operations").contains(&"JobAdd".into()));
    assert!(strings(a, "techniques").contains(&"scheduled_task".into()));

    // ... sv_smb2_samr_net_user_enum.pcap: \\DC1.contoso.local\IPC$, pipe samr, SAMR bind
    let al = alerts("lateral/sv_smb2_samr_net_user_enum.pcap");
    let a = one(&al, "lateral_movement", "192.168.10.31");
    assert_eq!(a["dest_ip"], "192.168.10.10");
    assert!(strings(a, "smb_shares").contains(&"IPC$".into()));
    assert!(strings(a, "named_pipes").contains(&"samr".into()));
    assert!(strings(a, "rpc_interfaces").contains(&"samr".into()));

    // ... sv_dcerpc_psexec_svcctl.pcap: DCE/RPC on TCP 49155, svcctl bind
    let al = alerts("lateral/sv_dcerpc_psexec_svcctl.pcap");
    let a = one(&al, "lateral_movement", "192.168.10.31");
    assert_eq!(a["dest_ip"], "192.168.10.30");
    assert_eq!(a["dest_port"], 49155);
    assert_eq!(a["evidence"]["service"], "dcerpc");
    let ops = strings(a, "rpc_operations");
    assert!(ops.contains(&"StartServiceW".into()), "{ops:?}");
}

#[test]
fn rdp_and_smb_admin_logon_between_internal_hosts() {
    // tshark -n -r pcaps/lateral/zeek_rdp_lan_cookie_JOHN-PC.pcap -Y 'tcp.flags.syn==1'
    //   -> 192.168.1.1 -> 192.168.1.2:3389
    let al = alerts("lateral/zeek_rdp_lan_cookie_JOHN-PC.pcap");
    let a = one(&al, "lateral_movement", "192.168.1.1");
    assert_eq!(a["dest_ip"], "192.168.1.2");
    assert_eq!(a["evidence"]["service"], "rdp");
    assert_eq!(a["evidence"]["first_contact"], true);

    // tshark -n -r pcaps/lateral/zeek_smb311_ntlm_administrator.pcap -Y ntlmssp.auth.username
    //   -T fields -e ntlmssp.auth.username  -> administrator
    let al = alerts("lateral/zeek_smb311_ntlm_administrator.pcap");
    let a = one(&al, "lateral_movement", "192.168.100.168");
    assert_eq!(a["dest_ip"], "10.160.67.244");
    assert_eq!(strings(a, "users"), vec!["administrator".to_string()]);
    assert_eq!(a["evidence"]["privileged_user"], true);
}

#[test]
fn lateral_captures_are_not_scans() {
    for f in [
        "lateral/sv_smb2_psexec_add_user.pcap",
        "lateral/sv_smb2_atsvc_remote_job.pcap",
        "lateral/sv_smb2_samr_net_user_enum.pcap",
        "lateral/sv_dcerpc_psexec_svcctl.pcap",
        "lateral/zeek_rdp_lan_cookie_JOHN-PC.pcap",
        "lateral/zeek_smb311_ntlm_administrator.pcap",
    ] {
        let al = alerts(f);
        assert!(scans(&al).is_empty(), "{f}: {:#?}", scans(&al));
    }
}
