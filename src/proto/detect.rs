//! Content-based protocol detection.
//!
//! The first bytes of each direction are kept (bounded) until one signature
//! matches; then they are replayed, in their original order, into the chosen
//! analyzer. The server port is only a tie-breaker / hint for weak
//! signatures (mid-stream MQTT, Telnet without option negotiation, FTP vs
//! SMTP greetings).

use super::{contains_ci, dir_index, mqtt, starts_with_ci, AppProto, Direction};

/// Most bytes kept per direction while undecided.
const DETECT_CAP: usize = 8 * 1024;

pub(crate) enum Verdict {
    NeedMore,
    NoMatch,
    /// `flipped`: the flow's Forward side is actually the server.
    Found {
        app: AppProto,
        flipped: bool,
    },
}

/// Answer of a single signature test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tri {
    Yes,
    No,
    Maybe,
}

pub(crate) struct Detector {
    bufs: [Vec<u8>; 2],
    /// Arrival order of the buffered chunks: (direction, length).
    order: Vec<(Direction, usize)>,
    cap: usize,
}

impl Detector {
    pub(crate) fn new(max_buffer: usize) -> Self {
        Detector {
            bufs: [Vec::new(), Vec::new()],
            order: Vec::new(),
            cap: max_buffer.min(DETECT_CAP),
        }
    }

    /// Buffer (a bounded prefix of) `data`; returns how many bytes were taken.
    pub(crate) fn push(&mut self, dir: Direction, data: &[u8]) -> usize {
        let Some(buf) = self.bufs.get_mut(dir_index(dir)) else {
            return 0;
        };
        let room = self.cap.saturating_sub(buf.len());
        let n = room.min(data.len());
        if n > 0 {
            buf.extend_from_slice(data.get(..n).unwrap_or_default());
            self.order.push((dir, n));
        }
        n
    }

    /// Bytes of the buffers, each measured by `m` (`Vec::len`: content; `Vec::capacity`:
    /// memory).
    pub(crate) fn bytes(&self, m: fn(&Vec<u8>) -> usize) -> usize {
        self.bufs.iter().map(m).sum()
    }

    /// A hole in one direction: what was buffered for it can no longer be
    /// trusted as the stream start; drop it and detect on what follows.
    pub(crate) fn on_gap(&mut self, dir: Direction) {
        if let Some(b) = self.bufs.get_mut(dir_index(dir)) {
            b.clear();
        }
        self.order.retain(|(d, _)| *d != dir);
    }

    /// Buffered chunks in arrival order.
    pub(crate) fn replay(&self) -> impl Iterator<Item = (Direction, &[u8])> + '_ {
        let mut offs = [0usize; 2];
        self.order.iter().map(move |&(d, n)| {
            let i = dir_index(d);
            let start = offs.get(i).copied().unwrap_or(0);
            let end = start.saturating_add(n);
            if let Some(o) = offs.get_mut(i) {
                *o = end;
            }
            let chunk = self
                .bufs
                .get(i)
                .and_then(|b| b.get(start..end))
                .unwrap_or_default();
            (d, chunk)
        })
    }

    pub(crate) fn classify(&self, port: u16) -> Verdict {
        let fwd: &[u8] = self.bufs.first().map(Vec::as_slice).unwrap_or_default();
        let rev: &[u8] = self.bufs.get(1).map(Vec::as_slice).unwrap_or_default();
        classify(fwd, rev, port)
    }
}

fn classify(fwd: &[u8], rev: &[u8], port: u16) -> Verdict {
    let maybe = std::cell::Cell::new(false);
    let note = |t: Tri| {
        if t == Tri::Maybe {
            maybe.set(true);
        }
        t == Tri::Yes
    };
    // Strong, direction-revealing signatures, checked on both sides.
    for (buf, is_fwd) in [(fwd, true), (rev, false)] {
        if buf.is_empty() {
            maybe.set(true);
            continue;
        }
        match tls_hello(buf) {
            (Tri::Yes, client) => return found(AppProto::Tls, client != is_fwd),
            (t, _) => {
                note(t);
            }
        }
        if note(tls_records(buf)) {
            return found(AppProto::Tls, false);
        }
        if note(ssh_banner(buf)) {
            return found(AppProto::Ssh, false);
        }
        if note(http_request(buf)) {
            return found(AppProto::Http, !is_fwd);
        }
        if note(http_response(buf)) {
            return found(AppProto::Http, is_fwd);
        }
        if note(mqtt_connect(buf)) {
            return found(AppProto::Mqtt, !is_fwd);
        }
        if note(telnet_negotiation(buf)) {
            return found(AppProto::Telnet, false);
        }
    }
    // Server greeting "220": FTP or SMTP.
    match greeting_220(fwd, rev, port) {
        (Tri::Yes, app) => return found(app, false),
        (t, _) => {
            note(t);
        }
    }
    match ftp_client_first(fwd, port) {
        Tri::Yes => return found(AppProto::Ftp, false),
        t => {
            note(t);
        }
    }
    // Mid-stream MQTT: a clean run of fixed headers.
    {
        let f = mqtt::plausible_stream(fwd);
        let r = mqtt::plausible_stream(rev);
        let bad = f.invalid || r.invalid;
        let total = f.complete.saturating_add(r.complete);
        let any = total > 0 || f.header_ok || r.header_ok;
        if !bad && (total >= 2 || (is_mqtt_port(port) && any)) {
            return found(AppProto::Mqtt, false);
        }
        if !bad && any {
            maybe.set(true);
        }
    }
    // Telnet without negotiation: a login prompt on a telnet port.
    if is_telnet_port(port) {
        let lower_has = |b: &[u8]| {
            contains_ci(b, b"login:")
                || contains_ci(b, b"username:")
                || contains_ci(b, b"user name:")
                || contains_ci(b, b"password:")
        };
        if lower_has(rev) {
            return found(AppProto::Telnet, false);
        }
        maybe.set(true);
    }
    if maybe.get() {
        Verdict::NeedMore
    } else {
        Verdict::NoMatch
    }
}

fn found(app: AppProto, flipped: bool) -> Verdict {
    Verdict::Found { app, flipped }
}

fn is_mqtt_port(port: u16) -> bool {
    matches!(port, 1883 | 1884 | 8883 | 8884)
}

fn is_telnet_port(port: u16) -> bool {
    matches!(port, 23 | 2323)
}

/// `b` is a prefix of `sig` (too short to decide) or starts with it.
fn prefix_tri(b: &[u8], sig: &[u8]) -> Tri {
    let n = b.len().min(sig.len());
    match (b.get(..n), sig.get(..n)) {
        (Some(x), Some(y)) if x == y => {
            if b.len() >= sig.len() {
                Tri::Yes
            } else {
                Tri::Maybe
            }
        }
        _ => Tri::No,
    }
}

/// TLS handshake record carrying a ClientHello (client = true) or a
/// ServerHello (client = false); also the SSLv2 CLIENT-HELLO format.
fn tls_hello(b: &[u8]) -> (Tri, bool) {
    let Some(&b0) = b.first() else {
        return (Tri::Maybe, true);
    };
    if b0 == 0x16 {
        let v = |i: usize| b.get(i).copied();
        if v(1).is_some_and(|x| x != 3) || v(2).is_some_and(|x| x > 4) {
            return (Tri::No, true);
        }
        return match v(5) {
            None => (Tri::Maybe, true),
            Some(1) => (Tri::Yes, true),
            Some(2) => (Tri::Yes, false),
            Some(_) => (Tri::No, true),
        };
    }
    if b0 & 0x80 != 0 {
        // SSLv2: 2-byte header, msg type 1, version 0x0002 or 0x03xx.
        let (Some(&t), Some(&v0), Some(&v1)) = (b.get(2), b.get(3), b.get(4)) else {
            return if b.len() < 5 {
                (Tri::Maybe, true)
            } else {
                (Tri::No, true)
            };
        };
        let len = (usize::from(b0 & 0x7f) << 8) | usize::from(b.get(1).copied().unwrap_or(0));
        if t == 1 && len >= 9 && ((v0 == 0 && v1 == 2) || (v0 == 3 && v1 <= 4)) {
            return (Tri::Yes, true);
        }
    }
    (Tri::No, true)
}

/// Mid-stream TLS: the bytes are a clean run of TLS records (at least one
/// complete record, all headers valid).
fn tls_records(b: &[u8]) -> Tri {
    let mut rest = b;
    let mut complete = 0usize;
    loop {
        let Some(&t) = rest.first() else {
            return if complete > 0 { Tri::Yes } else { Tri::Maybe };
        };
        if !(20..=24).contains(&t) {
            return Tri::No;
        }
        match (rest.get(1), rest.get(2)) {
            (Some(3), Some(1..=4)) | (Some(3), None) | (None, None) => {}
            _ => return Tri::No,
        }
        let (Some(&l0), Some(&l1)) = (rest.get(3), rest.get(4)) else {
            return if complete > 0 { Tri::Yes } else { Tri::Maybe };
        };
        let len = usize::from(u16::from_be_bytes([l0, l1]));
        if len == 0 || len > 18_432 {
            return Tri::No;
        }
        match rest.get(5 + len..) {
            Some(r) => {
                complete += 1;
                rest = r;
            }
            None => return if complete > 0 { Tri::Yes } else { Tri::Maybe },
        }
    }
}

fn ssh_banner(b: &[u8]) -> Tri {
    prefix_tri(b, b"SSH-")
}

fn http_response(b: &[u8]) -> Tri {
    prefix_tri(b, b"HTTP/1.")
}

/// `METHOD SP URI SP HTTP/1.x` on the first line.
fn http_request(b: &[u8]) -> Tri {
    let tok_len = b
        .iter()
        .take_while(|c| c.is_ascii_uppercase() || **c == b'-' || **c == b'_')
        .count();
    match b.get(tok_len) {
        None => {
            return if tok_len <= 20 { Tri::Maybe } else { Tri::No };
        }
        Some(b' ') if (3..=20).contains(&tok_len) => {}
        Some(_) => return Tri::No,
    }
    let Some(eol) = b.iter().position(|&c| c == b'\n') else {
        // Request line not complete yet; URIs can be long.
        return if b.contains(&0) { Tri::No } else { Tri::Maybe };
    };
    let line = b.get(..eol).unwrap_or_default();
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.ends_with(b" HTTP/1.1") || line.ends_with(b" HTTP/1.0") {
        Tri::Yes
    } else {
        Tri::No
    }
}

/// MQTT CONNECT: 0x10, valid remaining length, protocol name MQTT / MQIsdp.
fn mqtt_connect(b: &[u8]) -> Tri {
    match b.first() {
        None => return Tri::Maybe,
        Some(0x10) => {}
        Some(_) => return Tri::No,
    }
    let (hlen, _rl) = match mqtt::fixed_header(b) {
        mqtt::Header::Ok { hlen, rl, .. } => (hlen, rl),
        mqtt::Header::Short => return Tri::Maybe,
        mqtt::Header::Bad => return Tri::No,
    };
    let rest = b.get(hlen..).unwrap_or_default();
    match prefix_tri(rest, b"\x00\x04MQTT") {
        Tri::No => prefix_tri(rest, b"\x00\x06MQIsdp"),
        t => t,
    }
}

/// IAC followed by WILL/WONT/DO/DONT/SB at the very start.
fn telnet_negotiation(b: &[u8]) -> Tri {
    match (b.first(), b.get(1)) {
        (Some(0xff), Some(c)) if (0xfa..=0xfe).contains(c) => Tri::Yes,
        (Some(0xff), None) => Tri::Maybe,
        _ => Tri::No,
    }
}

const FTP_VERBS: &[&[u8]] = &[
    b"USER", b"PASS", b"AUTH", b"FEAT", b"SYST", b"OPTS", b"HOST", b"PBSZ", b"PWD", b"CWD",
    b"TYPE", b"PASV", b"EPSV", b"LIST", b"RETR", b"STOR", b"QUIT", b"NOOP",
];
const SMTP_VERBS: &[&[u8]] = &[b"EHLO", b"HELO", b"LHLO", b"STARTTLS", b"MAIL"];

fn first_line(b: &[u8]) -> Option<&[u8]> {
    let eol = b.iter().position(|&c| c == b'\n')?;
    b.get(..eol)
}

fn verb_in(line: &[u8], verbs: &[&[u8]]) -> bool {
    verbs.iter().any(|v| {
        starts_with_ci(line, v)
            && matches!(
                line.get(v.len()),
                None | Some(b' ') | Some(b'\r') | Some(b'\n')
            )
    })
}

/// "220 ..." / "220-..." from the server: FTP or SMTP.
fn greeting_220(fwd: &[u8], rev: &[u8], port: u16) -> (Tri, AppProto) {
    let head = match prefix_tri(rev, b"220") {
        Tri::No => return (Tri::No, AppProto::Unknown),
        Tri::Maybe => return (Tri::Maybe, AppProto::Unknown),
        Tri::Yes => rev.get(3),
    };
    match head {
        None => return (Tri::Maybe, AppProto::Unknown),
        Some(b' ') | Some(b'-') => {}
        Some(_) => return (Tri::No, AppProto::Unknown),
    }
    let Some(line) = first_line(rev) else {
        return if rev.len() > 1024 {
            (Tri::No, AppProto::Unknown)
        } else {
            (Tri::Maybe, AppProto::Unknown)
        };
    };
    if contains_ci(line, b"smtp") {
        return (Tri::Yes, AppProto::Smtp);
    }
    if contains_ci(line, b"ftp") {
        return (Tri::Yes, AppProto::Ftp);
    }
    match port {
        21 | 2121 => return (Tri::Yes, AppProto::Ftp),
        25 | 465 | 587 | 2525 => return (Tri::Yes, AppProto::Smtp),
        _ => {}
    }
    match first_line(fwd) {
        None => (Tri::Maybe, AppProto::Unknown),
        Some(l) if verb_in(l, SMTP_VERBS) => (Tri::Yes, AppProto::Smtp),
        Some(l) if verb_in(l, FTP_VERBS) => (Tri::Yes, AppProto::Ftp),
        Some(_) => (Tri::No, AppProto::Unknown),
    }
}

/// Picked up after the greeting: the client's first line is an FTP command
/// on an FTP port.
fn ftp_client_first(fwd: &[u8], port: u16) -> Tri {
    if !matches!(port, 21 | 2121) {
        return Tri::No;
    }
    match first_line(fwd) {
        Some(l) if verb_in(l, FTP_VERBS) => Tri::Yes,
        Some(_) => Tri::No,
        None if fwd.len() < 512 => Tri::Maybe,
        None => Tri::No,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdict(fwd: &[u8], rev: &[u8], port: u16) -> Option<(AppProto, bool)> {
        match classify(fwd, rev, port) {
            Verdict::Found { app, flipped } => Some((app, flipped)),
            _ => None,
        }
    }

    fn need_more(fwd: &[u8], rev: &[u8], port: u16) -> bool {
        matches!(classify(fwd, rev, port), Verdict::NeedMore)
    }

    #[test]
    fn http_any_port() {
        assert_eq!(
            verdict(b"GET / HTTP/1.1\r\nHost: x\r\n", b"", 5000),
            Some((AppProto::Http, false))
        );
        assert_eq!(
            verdict(b"", b"HTTP/1.1 200 OK\r\n", 5000),
            Some((AppProto::Http, false))
        );
        // Request seen on the Reverse side: directions flipped.
        assert_eq!(
            verdict(b"", b"POST /x HTTP/1.0\r\n", 80),
            Some((AppProto::Http, true))
        );
        assert!(need_more(b"GET /very/long", b"", 80));
        assert_eq!(verdict(b"GET / RTSP/1.0\r\n", b"x", 80), None);
    }

    #[test]
    fn tls_and_sslv2() {
        assert_eq!(
            verdict(&[0x16, 3, 1, 2, 0, 1], b"", 9090),
            Some((AppProto::Tls, false))
        );
        assert_eq!(
            verdict(b"", &[0x16, 3, 3, 0, 0x7a, 2], 9090),
            Some((AppProto::Tls, false))
        );
        assert_eq!(
            verdict(&[0x80, 0x2e, 1, 0, 2, 0, 0x15], b"", 443),
            Some((AppProto::Tls, false))
        );
        assert!(need_more(&[0x16, 3], b"", 443));
        // Mid-stream: application data records.
        let mut rec = vec![0x17, 3, 3, 0, 4, 1, 2, 3, 4];
        assert!(need_more(&rec[..7], b"", 443));
        assert_eq!(verdict(&rec, b"", 5000), Some((AppProto::Tls, false)));
        rec[2] = 9;
        assert!(verdict(&rec, b"", 5000).is_none());
    }

    #[test]
    fn server_first_protocols() {
        assert_eq!(
            verdict(b"", b"SSH-2.0-OpenSSH_7.8\r\n", 2222),
            Some((AppProto::Ssh, false))
        );
        assert_eq!(
            verdict(b"", b"220 (vsFTPd 3.0.3)\r\n", 2100),
            Some((AppProto::Ftp, false))
        );
        assert_eq!(
            verdict(b"", b"220 mx.google.com ESMTP\r\n", 2100),
            Some((AppProto::Smtp, false))
        );
        assert_eq!(
            verdict(b"", b"220 hello\r\n", 21),
            Some((AppProto::Ftp, false))
        );
        assert!(need_more(b"", b"220 hello\r\n", 4000));
        assert_eq!(
            verdict(b"USER bob\r\n", b"220 hello\r\n", 4000),
            Some((AppProto::Ftp, false))
        );
        assert_eq!(
            verdict(b"", &[0xff, 0xfd, 0x18], 8023),
            Some((AppProto::Telnet, false))
        );
        assert_eq!(
            verdict(b"", b"\r\nrouter login: ", 23),
            Some((AppProto::Telnet, false))
        );
        assert!(need_more(b"", b"\r\nWelcome\r\n", 2323));
    }

    #[test]
    fn mqtt_connect_and_midstream() {
        let connect = b"\x10\x0c\x00\x04MQTT\x04\x02\x00\x3c\x00\x00";
        assert_eq!(verdict(connect, b"", 17501), Some((AppProto::Mqtt, false)));
        // PINGREQ alone: MQTT only with the port hint.
        assert_eq!(
            verdict(&[0xc0, 0x00], b"", 1883),
            Some((AppProto::Mqtt, false))
        );
        assert!(need_more(&[0xc0, 0x00], b"", 5000));
        // Two clean packets on any port.
        assert_eq!(
            verdict(&[0xc0, 0x00], &[0xd0, 0x00], 5000),
            Some((AppProto::Mqtt, false))
        );
        assert_eq!(
            verdict(b"\x30\x07\x00\x03a/bxy\xc0\x00", b"", 5000),
            Some((AppProto::Mqtt, false))
        );
        // Garbage is not MQTT.
        assert!(verdict(&[0x00, 0x00, 0x01], &[0xf7, 0x01], 1883).is_none());
    }

    #[test]
    fn replay_keeps_order() {
        let mut d = Detector::new(1 << 16);
        d.push(Direction::Reverse, b"220 a");
        d.push(Direction::Forward, b"USER");
        d.push(Direction::Reverse, b"bc\r\n");
        let v: Vec<(Direction, Vec<u8>)> = d.replay().map(|(d, c)| (d, c.to_vec())).collect();
        assert_eq!(
            v,
            vec![
                (Direction::Reverse, b"220 a".to_vec()),
                (Direction::Forward, b"USER".to_vec()),
                (Direction::Reverse, b"bc\r\n".to_vec())
            ]
        );
    }

    #[test]
    fn fuzz_classify_no_panic() {
        let mut rng = super::super::testutil::XorShift::new(77);
        for i in 0..30_000u32 {
            let f = rng.bytes_upto(64);
            let r = rng.bytes_upto(64);
            let port = [21u16, 23, 25, 80, 1883, 5000][i as usize % 6];
            let _ = classify(&f, &r, port);
        }
    }
}
