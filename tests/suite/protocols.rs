//! Protocol analyzers and their detections on real captures (pcaps/MANIFEST.tsv ground truth).

use crate::util::*;
use serde_json::Value;
use tapwatch::app::{Emitted, Worker};
use tapwatch::capture::file::{CaptureFile, Next};
use tapwatch::proto::{AppProto, Outcome, ProtoEvent};
use tapwatch::settings::Settings;

/// Application events of a capture, through decode, flows and reassembly (in-process).
fn app_events(rel: &str) -> Vec<(tapwatch::flow::FlowMeta, ProtoEvent)> {
    let mut w = Worker::new(&Settings::default());
    let mut f = CaptureFile::open(&pcap(rel)).expect("capture");
    let mut out = Vec::new();
    while let Ok(Next::Frame(fr)) = f.next_frame() {
        w.frame(&fr, &mut out);
    }
    w.finish(&mut out);
    out.into_iter()
        .filter_map(|e| match e {
            Emitted::App { meta, event, .. } => Some((meta, event)),
            _ => None,
        })
        .collect()
}

fn logins(rel: &str) -> Vec<(String, Option<Vec<u8>>, &'static str, Outcome)> {
    app_events(rel)
        .into_iter()
        .filter_map(|(_, e)| match e {
            ProtoEvent::Login {
                username,
                password,
                method,
                outcome,
                ..
            } => Some((username, password, method, outcome)),
            _ => None,
        })
        .collect()
}

fn alerts(rel: &str, extra: &[&str]) -> Vec<Value> {
    replay_events(&[&pcap(rel)], extra)
        .into_iter()
        .filter(|e| e["event_type"] == "alert")
        .collect()
}

fn of_kind<'a>(a: &'a [Value], kind: &str) -> Vec<&'a Value> {
    a.iter().filter(|e| e["alert"]["kind"] == kind).collect()
}

#[test]
fn mqtt_credentials_in_every_version() {
    // (capture, src, outcome)
    for (f, outcome) in [
        ("mqtt/sv_mqtt31_pub_userpass_ipv6.pcap", "accepted"),
        ("mqtt/sv_mqtt311_pub_userpass_ipv6.pcap", "accepted"),
        ("mqtt/sv_mqtt311_sub_userpass_ipv6.pcap", "accepted"),
        ("mqtt/sv_mqtt311_pub_autoclientid_ipv6.pcap", "accepted"),
        ("mqtt/sv_mqtt5_pub_userpass_ipv6.pcap", "accepted"),
        ("mqtt/sv_mqtt5_sub_userpass_ipv6.pcap", "accepted"),
        ("mqtt/sv_mqtt5_pub_qos2_ipv6.pcap", "accepted"),
        ("mqtt/sv_mqtt5_pub_mosquittoprops_ipv6.pcap", "accepted"),
        ("mqtt/sv_mqtt5_pub_jpeg_37kB_ipv6.pcap", "accepted"),
        (
            "mqtt/sv_mqtt5_connack134_badcreds_EDITED_ipv6.pcap",
            "rejected",
        ),
        ("mqtt/sv_mqtt5_userpass_ipv4_loopback.pcap", "accepted"),
    ] {
        let a = alerts(f, &[]);
        assert_eq!(of_kind(&a, "plaintext_mqtt").len(), 1, "{f}: {a:?}");
        let c = of_kind(&a, "cleartext_credentials");
        assert_eq!(c.len(), 1, "{f}: {a:?}");
        let c = c[0];
        assert_eq!(c["evidence"]["username"], "user", "{f}");
        // Masked by default: first and last character, and the length.
        assert_eq!(c["evidence"]["password"], "p**s", "{f}");
        assert_eq!(c["evidence"]["password_length"], 4, "{f}");
        assert_eq!(c["evidence"]["outcome"], outcome, "{f}");
        assert_eq!(c["app_proto"], "mqtt", "{f}");
        assert_eq!(c["dest_port"], 1883, "{f}");
        assert_eq!(c["alert"]["signature_id"], 9100101);
        assert_eq!(c["alert"]["severity"], 2);
    }
    // Shown on request, for forensics.
    let a = alerts(
        "mqtt/sv_mqtt5_pub_userpass_ipv6.pcap",
        &["--reveal-secrets"],
    );
    assert_eq!(
        of_kind(&a, "cleartext_credentials")[0]["evidence"]["password"],
        "pass"
    );
}

#[test]
fn mqtt_without_credentials_gives_no_credential_finding() {
    for f in [
        "mqtt/zeek_mqtt31_public_broker_noauth.pcap",
        "mqtt/sv_mqtt311_midstream_no_connect_ipv6.pcap",
        "mqtt/sv_mqtt5_customauth_rejected_ipv6.pcap",
        "mqtt/sv_mqtt_pingreq_only.pcap",
    ] {
        let a = alerts(f, &[]);
        let mqtt_creds = of_kind(&a, "cleartext_credentials")
            .into_iter()
            .filter(|e| e["app_proto"] == "mqtt")
            .count();
        assert_eq!(mqtt_creds, 0, "{f}: {a:?}");
        assert_eq!(of_kind(&a, "plaintext_mqtt").len(), 1, "{f}: {a:?}");
    }
    // MQTT 5 enhanced authentication: the method is seen, the CONNACK is 140.
    let ev = app_events("mqtt/sv_mqtt5_customauth_rejected_ipv6.pcap");
    assert!(ev.iter().any(|(_, e)| matches!(
        e,
        ProtoEvent::MqttConnect {
            level: 5,
            auth_method: Some(_),
            username: None,
            ..
        }
    )));
    assert!(ev.iter().any(|(_, e)| matches!(
        e,
        ProtoEvent::MqttConnack {
            code: 140,
            outcome: Outcome::Rejected
        }
    )));
    // The same capture holds a RabbitMQ management login over HTTP Basic on port 64000
    // (tshark -Y http.authorization: satta:Jolee9fair9g): found, and masked.
    let a = alerts("mqtt/sv_mqtt311_midstream_no_connect_ipv6.pcap", &[]);
    let c = of_kind(&a, "cleartext_credentials");
    assert!(c.iter().any(|e| e["evidence"]["username"] == "satta"
        && e["evidence"]["password"] == "J**********g"
        && e["dest_port"] == 64000));
    // The same capture holds a RabbitMQ management login over HTTP Basic on port 64000
    // (tshark -Y http.authorization: satta:Jolee9fair9g), picked up mid-stream: found, with the
    // client and server told apart by content, and masked.
    let a = alerts("mqtt/sv_mqtt311_midstream_no_connect_ipv6.pcap", &[]);
    let c = of_kind(&a, "cleartext_credentials");
    assert!(c.iter().any(|e| e["evidence"]["username"] == "satta"
        && e["evidence"]["password"] == "J**********g"
        && e["dest_port"] == 64000
        && e["src_port"] == 39976));
    // Mid-stream pickup: publishes before any CONNECT are parsed.
    let ev = app_events("mqtt/sv_mqtt311_midstream_no_connect_ipv6.pcap");
    let publishes = ev
        .iter()
        .filter(|(_, e)| matches!(e, ProtoEvent::MqttPublish { .. }))
        .count();
    assert!(publishes > 0);
    assert!(ev.iter().any(|(_, e)| matches!(e, ProtoEvent::MqttConnect { client_id, username: None, .. } if client_id == "P1")));
}

#[test]
fn mqtt_two_connects_in_pcapng_and_non_standard_port() {
    let a = alerts("mqtt/ndpi_mqtt_user_eq_pass_and_azure_sas.pcap", &[]);
    let c = of_kind(&a, "cleartext_credentials");
    assert_eq!(c.len(), 2, "{a:?}");
    assert!(c
        .iter()
        .any(|e| e["evidence"]["username"] == "02D5050223D3" && e["src_ip"] == "192.168.0.1"));
    assert!(c.iter().any(|e| e["evidence"]["username"]
        .as_str()
        .unwrap()
        .starts_with("iotazewpmlithub.azure-devices.net/")
        && e["src_ip"] == "100.67.35.238"));
    // MQTT on 17501, found by content: ~3200 PUBLISH over 4 connections.
    let a = alerts("mqtt/nfstream_mqtt_port17501_highrate_coap.pcap", &[]);
    let p = of_kind(&a, "plaintext_mqtt");
    assert!(!p.is_empty());
    assert!(p
        .iter()
        .all(|e| e["dest_port"] == 17501 && e["dest_ip"] == "192.168.56.101"));
    let ev = app_events("mqtt/nfstream_mqtt_port17501_highrate_coap.pcap");
    let pubs = ev
        .iter()
        .filter(|(_, e)| matches!(e, ProtoEvent::MqttPublish { .. }))
        .count();
    // tshark -d tcp.port==17501,mqtt -Y 'mqtt.msgtype==3' | wc -l
    assert!(pubs > 3000, "{pubs} publishes");
    // The 35 KB JPEG PUBLISH spread over several segments is one PUBLISH.
    let ev = app_events("mqtt/sv_mqtt5_pub_jpeg_37kB_ipv6.pcap");
    assert!(ev.iter().any(|(_, e)| matches!(e, ProtoEvent::MqttPublish { topic, payload_len, .. } if &**topic == "topicX" && *payload_len > 35_000)));
}

#[test]
fn http_authorization_schemes() {
    let l = logins("http/arkime_http_basic_auth_anonymized.pcap");
    assert_eq!(l.len(), 1);
    assert_eq!(l[0].0, "userrrrr");
    assert_eq!(l[0].1.as_deref(), Some(&b"passworddddd"[..]));
    assert_eq!(l[0].3, Outcome::Accepted, "304 after Basic");

    let a = alerts("http/ndpi_http_basic_auth_401.pcap", &[]);
    let c = of_kind(&a, "cleartext_credentials");
    assert_eq!(c.len(), 1);
    assert_eq!(c[0]["evidence"]["username"], "test");
    assert_eq!(c[0]["evidence"]["outcome"], "rejected");
    assert_eq!(c[0]["evidence"]["method"], "http-basic");

    // Password with ':' (split at the first colon) and extra spaces after "Basic".
    assert_eq!(
        logins("http/zeek_http_basic_auth_colon_in_pass_rawip4.pcap")[0]
            .1
            .as_deref(),
        Some(&b"1:34"[..])
    );
    let l = logins("http/zeek_http_basic_auth_extra_space.pcap");
    assert!(!l.is_empty());
    assert!(l
        .iter()
        .all(|x| x.0 == "test" && x.1.as_deref() == Some(&b"1234"[..])));

    // Digest: the username, never a password.
    let l = logins("http/arkime_http_digest_auth_anonymized.pcap");
    assert_eq!(l.len(), 1);
    assert_eq!(l[0].0, "user12345678@domain.xxxx");
    assert_eq!(l[0].1, None);
    assert_eq!(l[0].2, "http-digest");
    assert!(of_kind(
        &alerts("http/arkime_http_digest_auth_anonymized.pcap", &[]),
        "cleartext_credentials"
    )
    .is_empty());

    // Bearer and unknown schemes: plaintext HTTP, no credential.
    for f in [
        "http/sv_http_bearer_token_loopback.pcap",
        "http/sv_http_unknown_auth_scheme_loopback.pcap",
        "http/zeek_http_get_plain.pcap",
        "http/zeek_http_dvwa_sqli.pcapng",
    ] {
        let a = alerts(f, &[]);
        assert!(!of_kind(&a, "plaintext_http").is_empty(), "{f}");
        assert!(
            of_kind(&a, "cleartext_credentials").is_empty(),
            "{f}: {a:?}"
        );
    }
    let ev = app_events("http/sv_http_bearer_token_loopback.pcap");
    assert!(ev.iter().any(|(_, e)| matches!(
        e,
        ProtoEvent::HttpRequest {
            auth: Some(tapwatch::proto::HttpAuth::Bearer { .. }),
            ..
        }
    )));
    // Keep-alive: the three DVWA requests are all parsed.
    let ev = app_events("http/zeek_http_dvwa_sqli.pcapng");
    let reqs = ev
        .iter()
        .filter(|(_, e)| matches!(e, ProtoEvent::HttpRequest { uri, .. } if uri.contains("sqli")))
        .count();
    assert!(reqs >= 3, "{reqs}");
}

#[test]
fn telnet_and_ftp_logins() {
    let a = alerts("credentials/sv_telnet_login_fake_user.pcap", &[]);
    assert_eq!(of_kind(&a, "plaintext_telnet").len(), 1);
    let c = of_kind(&a, "cleartext_credentials");
    assert_eq!(c.len(), 1, "{a:?}");
    assert_eq!(c[0]["evidence"]["username"], "fake");
    assert_eq!(c[0]["evidence"]["password"], "u**r");
    assert_eq!(c[0]["evidence"]["outcome"], "accepted");
    assert_eq!(c[0]["src_ip"], "192.168.0.2");

    for (f, user, outcome) in [
        (
            "credentials/zeek_ftp_anonymous_ipv4.pcap",
            "anonymous",
            "accepted",
        ),
        (
            "credentials/zeek_ftp_anonymous_ipv6.pcap",
            "anonymous",
            "accepted",
        ),
        (
            "credentials/zeek_ftp_admin_qwerty_failed.pcap",
            "Admin",
            "rejected",
        ),
        (
            "credentials/sv_ftp_bob_password_success.pcap",
            "bob",
            "accepted",
        ),
    ] {
        let a = alerts(f, &[]);
        assert!(!of_kind(&a, "plaintext_ftp").is_empty(), "{f}");
        let c = of_kind(&a, "cleartext_credentials");
        assert!(
            c.iter()
                .any(|e| e["evidence"]["username"] == user && e["evidence"]["outcome"] == outcome),
            "{f}: {a:?}"
        );
    }
    // USER without PASS, refused: a login attempt with no password, so no credential alert.
    let l = logins("credentials/ndpi_ftp_login_refused_ipv6.pcap");
    assert_eq!(l.len(), 1);
    assert_eq!(
        (l[0].0.as_str(), l[0].1.clone(), l[0].3),
        ("hello", None, Outcome::Rejected)
    );
    // AUTH TLS: encrypted from there on; no plaintext finding at all.
    let a = alerts("credentials/zeek_ftp_auth_tls_encrypted.pcap", &[]);
    assert!(of_kind(&a, "plaintext_ftp").is_empty(), "{a:?}");
    assert!(of_kind(&a, "cleartext_credentials").is_empty(), "{a:?}");
    assert!(app_events("credentials/zeek_ftp_auth_tls_encrypted.pcap")
        .iter()
        .any(|(_, e)| matches!(e, ProtoEvent::StartTls { .. })));
}

#[test]
fn brute_force_from_failures_and_from_ssh_connection_patterns() {
    let a = alerts("bruteforce/zeek_ftp_bruteforce_30_attempts.pcap", &[]);
    let b = of_kind(&a, "brute_force");
    assert_eq!(b.len(), 1, "{a:?}");
    assert_eq!(b[0]["src_ip"], "192.168.56.1");
    assert_eq!(b[0]["dest_port"], 21);
    // tshark -Y 'ftp.response.code==530' | wc -l  -> 30
    assert_eq!(b[0]["evidence"]["failed_logins"], 30);
    assert_eq!(b[0]["evidence"]["final_outcome"], "rejected");

    let a = alerts("bruteforce/zeek_ssh_password_guessing_11_conns.pcap", &[]);
    let b = of_kind(&a, "brute_force");
    assert_eq!(b.len(), 1, "{a:?}");
    assert_eq!(b[0]["app_proto"], "ssh");
    assert_eq!(b[0]["evidence"]["connections"], 11);

    // nmap ssh-brute against SSH on port 902: SSH found by its banner, not the port.
    let a = alerts("bruteforce/slips_nmap_ssh_brute_port902.pcap", &[]);
    let b = of_kind(&a, "brute_force");
    assert!(!b.is_empty(), "{a:?}");
    assert!(b
        .iter()
        .all(|e| e["dest_port"] == 902 && e["app_proto"] == "ssh"));

    // Ordinary SSH sessions are no brute force.
    for f in ["ssh/tcpdump_ssh.pcap", "ssh/zeek_ssh_single_conn.pcap"] {
        assert!(of_kind(&alerts(f, &[]), "brute_force").is_empty(), "{f}");
    }
}

#[test]
fn default_credentials_use_the_shipped_and_the_users_lists() {
    // The shipped list knows Mirai's pairs; this capture's bob/password is not one of them.
    let a = alerts("credentials/sv_ftp_bob_password_success.pcap", &[]);
    assert!(of_kind(&a, "default_credentials").is_empty());
    // A site adds its own list: bob/password becomes a default credential, with the outcome.
    let dir = std::env::temp_dir().join(format!("tapwatch-rules-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("credentials")).unwrap();
    for entry in std::fs::read_dir(root().join("rules")).unwrap() {
        let p = entry.unwrap().path();
        if p.is_file() {
            std::fs::copy(&p, dir.join(p.file_name().unwrap())).unwrap();
        }
    }
    std::fs::create_dir_all(dir.join("policy")).unwrap();
    std::fs::copy(
        root().join("rules/policy/mqtt-topics.toml"),
        dir.join("policy/mqtt-topics.toml"),
    )
    .unwrap();
    std::fs::write(
        dir.join("credentials/site.txt"),
        "# our appliances\nbob:password\n",
    )
    .unwrap();
    let rules = std::fs::read_to_string(dir.join("20-credentials.toml")).unwrap();
    let rules = rules.replace(
        "kind = \"default_credentials\"",
        "kind = \"default_credentials\"\nparams = { lists = [\"credentials/site.txt\"] }",
    );
    std::fs::write(dir.join("20-credentials.toml"), rules).unwrap();
    let a = alerts(
        "credentials/sv_ftp_bob_password_success.pcap",
        &["--rules", dir.to_str().unwrap()],
    );
    let d = of_kind(&a, "default_credentials");
    assert_eq!(d.len(), 1, "{a:?}");
    assert_eq!(d[0]["evidence"]["username"], "bob");
    assert_eq!(d[0]["evidence"]["outcome"], "accepted");
    assert_eq!(d[0]["evidence"]["password"], "p******d");
    assert_eq!(d[0]["alert"]["severity"], 1);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn tls_versions_sni_and_weak_tls() {
    for (f, version, stage) in [
        ("tls/zeek_tls10_sni_gstatic.pcap", "TLSv1.0", "offered"),
        ("tls/zeek_tls11.pcap", "TLSv1.1", "offered"),
        ("tls/zeek_sslv2_clienthello.pcap", "SSLv2", "offered"),
        (
            "tls/zeek_tls_clienthello_to_http_server.pcap",
            "TLSv1.0",
            "offered",
        ),
    ] {
        let a = alerts(f, &[]);
        let w = of_kind(&a, "weak_tls");
        assert!(w.iter().any(|e| e["evidence"]["tls_version"] == version && e["evidence"]["stage"] == stage), "{f}: {a:?}");
    }
    let a = alerts("tls/zeek_tls10_sni_gstatic.pcap", &[]);
    assert_eq!(
        of_kind(&a, "weak_tls")[0]["evidence"]["sni"],
        "ssl.gstatic.com"
    );
    // TLS 1.1 negotiated by the server too.
    let a = alerts("tls/zeek_tls11.pcap", &[]);
    assert!(of_kind(&a, "weak_tls")
        .iter()
        .any(|e| e["evidence"]["stage"] == "negotiated"));
    for f in [
        "tls/arkime_curl_tls13.pcap",
        "tls/zeek_tls12_no_sni.pcap",
        "tls/zeek_tls13_hello_retry_request.pcap",
        "tls/zeek_tls13_ech_cloudflare.pcap",
        "tls/ndpi_tls13_ech_ipv6.pcapng",
        "tls/arkime_tls_clienthello_split_2_segments.pcap",
        "tls/sv_tls_clienthello_mtu300_fragmented.pcap",
        "tls/zeek_tls13_wolfssl_lan_port9090.pcap",
    ] {
        let a = alerts(f, &[]);
        assert!(of_kind(&a, "weak_tls").is_empty(), "{f}: {a:?}");
        assert!(
            a.iter().all(|e| !e["alert"]["kind"]
                .as_str()
                .unwrap()
                .starts_with("plaintext")),
            "{f}"
        );
    }
    let sni = |f: &str| -> Vec<Option<String>> {
        app_events(f)
            .into_iter()
            .filter_map(|(_, e)| match e {
                ProtoEvent::TlsClientHello { sni, .. } => Some(sni),
                _ => None,
            })
            .collect()
    };
    // SNI needs reassembly of 2 and 3 segments.
    assert_eq!(
        sni("tls/arkime_tls_clienthello_split_2_segments.pcap"),
        vec![Some("clients2.google.com".to_string())]
    );
    assert_eq!(
        sni("tls/sv_tls_clienthello_mtu300_fragmented.pcap"),
        vec![Some("www.google.com".to_string())]
    );
    assert_eq!(
        sni("tls/ndpi_tls13_ech_ipv6.pcapng"),
        vec![Some("performance.radar.cloudflare.com".to_string())]
    );
    assert_eq!(sni("tls/zeek_tls12_no_sni.pcap"), vec![None]);
    // TLS found by content on port 9090 and on port 80; a STARTTLS upgrade on SMTP.
    assert_eq!(sni("tls/zeek_tls13_wolfssl_lan_port9090.pcap").len(), 1);
    assert_eq!(
        sni("tls/zeek_tls_clienthello_to_http_server.pcap"),
        vec![Some("vk.com".to_string())]
    );
    let ev = app_events("tls/zeek_smtp_starttls.pcap");
    assert!(ev
        .iter()
        .any(|(_, e)| matches!(e, ProtoEvent::StartTls { .. })));
    assert!(ev
        .iter()
        .any(|(_, e)| matches!(e, ProtoEvent::TlsClientHello { .. })));
    let ev = app_events("tls/arkime_curl_tls13.pcap");
    assert!(ev.iter().any(|(_, e)| matches!(
        e,
        ProtoEvent::TlsServerHello {
            version: 0x0304,
            ..
        }
    )));
    assert!(ev
        .iter()
        .any(|(_, e)| matches!(e, ProtoEvent::Detected { app: AppProto::Tls })));
}

#[test]
fn malformed_protocol_data_is_named_not_fatal() {
    // 64 KiB of Telnet IAC option bytes: no login, no crash.
    let ev = app_events("malformed/tcpdump_telnet_iac_oobr.pcap");
    assert!(!ev
        .iter()
        .any(|(_, e)| matches!(e, ProtoEvent::Login { .. })));
}
