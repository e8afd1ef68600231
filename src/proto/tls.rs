//! TLS / SSL handshake: ClientHello (SNI, versions, ciphers, ALPN, JA3,
//! JA4) and ServerHello (negotiated version and cipher).
//!
//! Records are followed by a streaming 5-byte-header walker; only handshake
//! record payloads are copied, into a per-direction handshake buffer (capped
//! at `max_buffer`) so that a ClientHello spanning several records and TCP
//! segments is reassembled. Complete handshake messages are decoded with
//! `tls-parser`; the extension block is walked here (tls-parser's extension
//! parser stops at unknown extensions and folds GREASE). SSLv2-format
//! CLIENT-HELLO / SERVER-HELLO records are recognised at a direction's start.
//!
//! A ServerHello (other than a HelloRetryRequest), or application data,
//! means the session is encrypted: parsing stops there.

use md5::{Digest as _, Md5};
use sha2::Sha256;
use tls_parser::{TlsMessage, TlsMessageHandshake};

use super::{dir_index, AppProto, Direction, ProtoEvent, Reader};

const REC_CCS: u8 = 20;
const REC_ALERT: u8 = 21;
const REC_HANDSHAKE: u8 = 22;
const REC_APPDATA: u8 = 23;
const REC_HEARTBEAT: u8 = 24;
/// Largest TLSCiphertext fragment (2^14 + 2048).
const MAX_RECORD: usize = 18_432;

const HRR_RANDOM: [u8; 32] = [
    0xcf, 0x21, 0xad, 0x74, 0xe5, 0x9a, 0x61, 0x11, 0xbe, 0x1d, 0x8c, 0x02, 0x1e, 0x65, 0xb8, 0x91,
    0xc2, 0xa2, 0x11, 0x16, 0x7a, 0xbb, 0x8c, 0x5e, 0x07, 0x9e, 0x09, 0xe2, 0xc8, 0xa8, 0x33, 0x9c,
];

const EXT_SNI: u16 = 0x0000;
const EXT_GROUPS: u16 = 0x000a;
const EXT_POINT_FORMATS: u16 = 0x000b;
const EXT_SIG_ALGS: u16 = 0x000d;
const EXT_ALPN: u16 = 0x0010;
const EXT_SUPPORTED_VERSIONS: u16 = 0x002b;

/// GREASE values (RFC 8701): 0x?a?a with both bytes equal.
pub(crate) fn is_grease(v: u16) -> bool {
    v & 0x0f0f == 0x0a0a && (v >> 8) == (v & 0xff)
}

struct Side {
    hdr: [u8; 5],
    hdr_len: usize,
    in_record: bool,
    rec_type: u8,
    rec_remaining: usize,
    /// Handshake message reassembly.
    hs: Vec<u8>,
    /// Nothing seen yet in this direction (an SSLv2 record may start it).
    fresh: bool,
    /// SSLv2 record being gathered: bytes still missing.
    v2_remaining: usize,
    dead: bool,
}

impl Side {
    fn new() -> Self {
        Side {
            hdr: [0; 5],
            hdr_len: 0,
            in_record: false,
            rec_type: 0,
            rec_remaining: 0,
            hs: Vec::new(),
            fresh: true,
            v2_remaining: 0,
            dead: false,
        }
    }
}

pub(crate) struct TlsAnalyzer {
    max_buffer: usize,
    sides: [Side; 2],
    encrypted: bool,
    /// A HelloRetryRequest was seen: a second ClientHello will follow.
    hrr: bool,
    done: bool,
}

/// Fields of a ClientHello needed for the event and fingerprints.
#[derive(Default, Debug)]
struct Hello {
    legacy_version: u16,
    ciphers: Vec<u16>,
    ext_types: Vec<u16>,
    sni: Option<String>,
    groups: Vec<u16>,
    point_formats: Vec<u8>,
    sig_algs: Vec<u16>,
    alpn: Vec<Vec<u8>>,
    supported_versions: Vec<u16>,
    sslv2: bool,
}

impl TlsAnalyzer {
    /// `_app`: the flow's protocol (TLS, or FTP/SMTP after STARTTLS);
    /// anomalies are always reported as TLS.
    pub(crate) fn new(max_buffer: usize, _app: AppProto) -> Self {
        TlsAnalyzer {
            max_buffer,
            sides: [Side::new(), Side::new()],
            encrypted: false,
            hrr: false,
            done: false,
        }
    }

    pub(crate) fn encrypted(&self) -> bool {
        self.encrypted
    }

    fn anomaly(&self, name: &'static str, out: &mut Vec<ProtoEvent>) {
        out.push(ProtoEvent::Anomaly {
            app: AppProto::Tls,
            name,
        });
    }

    fn kill(&mut self, i: usize, name: &'static str, out: &mut Vec<ProtoEvent>) {
        if let Some(s) = self.sides.get_mut(i) {
            s.dead = true;
            s.hs.clear();
        }
        self.anomaly(name, out);
    }

    pub(crate) fn on_data(&mut self, dir: Direction, data: &[u8], out: &mut Vec<ProtoEvent>) {
        let i = dir_index(dir);
        let mut input = data;
        while !input.is_empty() && !self.done {
            let max_buffer = self.max_buffer;
            let Some(side) = self.sides.get_mut(i) else {
                return;
            };
            if side.dead {
                return;
            }
            if side.v2_remaining > 0 {
                let n = side.v2_remaining.min(input.len());
                side.hs
                    .extend_from_slice(input.get(..n).unwrap_or_default());
                side.v2_remaining -= n;
                input = input.get(n..).unwrap_or_default();
                if side.v2_remaining == 0 {
                    let rec = std::mem::take(&mut side.hs);
                    side.dead = true; // later SSLv2 messages are not parsed
                    self.sslv2_record(&rec, out);
                }
                continue;
            }
            if !side.in_record {
                let n = (5 - side.hdr_len).min(input.len());
                for (k, &b) in input.iter().take(n).enumerate() {
                    if let Some(slot) = side.hdr.get_mut(side.hdr_len + k) {
                        *slot = b;
                    }
                }
                side.hdr_len += n;
                input = input.get(n..).unwrap_or_default();
                if side.hdr_len < 5 {
                    // An SSLv2 record may be shorter than 5 bytes of header use.
                    continue;
                }
                side.hdr_len = 0;
                let [t, major, minor, l0, l1] = side.hdr;
                let fresh = std::mem::replace(&mut side.fresh, false);
                if fresh && t & 0x80 != 0 && matches!(minor, 1 | 4) {
                    // SSLv2 record: 2-byte header, then the message (whose
                    // first 3 bytes are already in the header array).
                    let len = (usize::from(t & 0x7f) << 8) | usize::from(major);
                    side.hs.clear();
                    side.hs.extend_from_slice(&[minor, l0, l1]);
                    if len > max_buffer {
                        self.kill(i, "tls.handshake_too_long", out);
                        return;
                    }
                    let len = len.max(3);
                    side.v2_remaining = len - 3;
                    if side.v2_remaining == 0 {
                        let rec = std::mem::take(&mut side.hs);
                        side.dead = true;
                        self.sslv2_record(&rec, out);
                    }
                    continue;
                }
                let len = usize::from(u16::from_be_bytes([l0, l1]));
                if !(REC_CCS..=REC_HEARTBEAT).contains(&t)
                    || major != 3
                    || minor > 4
                    || len > MAX_RECORD
                {
                    self.kill(i, "tls.bad_record", out);
                    return;
                }
                side.rec_type = t;
                side.rec_remaining = len;
                side.in_record = len > 0;
                match t {
                    REC_APPDATA => {
                        self.encrypted = true;
                        self.done = true;
                        return;
                    }
                    REC_CCS if !self.hrr => {
                        self.encrypted = true;
                        self.done = true;
                        return;
                    }
                    _ => {}
                }
                continue;
            }
            let n = side.rec_remaining.min(input.len());
            let piece = input.get(..n).unwrap_or_default();
            input = input.get(n..).unwrap_or_default();
            side.rec_remaining -= n;
            if side.rec_remaining == 0 {
                side.in_record = false;
            }
            match side.rec_type {
                REC_HANDSHAKE => {
                    if side.hs.len() + piece.len() > max_buffer {
                        self.kill(i, "tls.handshake_too_long", out);
                        return;
                    }
                    side.hs.extend_from_slice(piece);
                    self.handshake_messages(i, out);
                }
                REC_CCS | REC_ALERT | REC_HEARTBEAT => {}
                _ => {}
            }
        }
    }

    /// Decode the complete handshake messages gathered for direction `i`.
    fn handshake_messages(&mut self, i: usize, out: &mut Vec<ProtoEvent>) {
        let Some(side) = self.sides.get_mut(i) else {
            return;
        };
        let mut hs = std::mem::take(&mut side.hs);
        let mut off = 0usize;
        while !self.done {
            let Some(rest) = hs.get(off..) else { break };
            let mut r = Reader::new(rest);
            let (Some(_t), Some(len)) = (r.u8(), r.u24()) else {
                break;
            };
            let total = (len as usize).saturating_add(4);
            if total > self.max_buffer {
                self.kill(i, "tls.handshake_too_long", out);
                return;
            }
            let Some(msg) = rest.get(..total) else { break };
            self.handshake(msg, out);
            off += total;
        }
        hs.drain(..off.min(hs.len()));
        if let Some(side) = self.sides.get_mut(i) {
            if !side.dead {
                side.hs = hs;
            }
        }
    }

    /// One complete handshake message (type, 24-bit length, body).
    fn handshake(&mut self, msg: &[u8], out: &mut Vec<ProtoEvent>) {
        let Some(&t) = msg.first() else { return };
        if t != 1 && t != 2 && t != 6 {
            return;
        }
        let parsed = tls_parser::parse_tls_message_handshake(msg);
        match parsed {
            Ok((_, TlsMessage::Handshake(TlsMessageHandshake::ClientHello(ch)))) => {
                let mut h = Hello {
                    legacy_version: ch.version.0,
                    ciphers: ch.ciphers.iter().map(|c| c.0).collect(),
                    ..Hello::default()
                };
                if let Some(ext) = ch.ext {
                    if !walk_extensions(ext, &mut h) {
                        self.anomaly("tls.bad_extension", out);
                    }
                }
                out.push(client_hello_event(h));
            }
            Ok((_, TlsMessage::Handshake(TlsMessageHandshake::ServerHello(sh)))) => {
                let hello_retry = sh.random == HRR_RANDOM;
                let version = sh.ext.and_then(selected_version).unwrap_or(sh.version.0);
                self.server_hello(version, sh.cipher.0, hello_retry, out);
            }
            Ok((_, TlsMessage::Handshake(TlsMessageHandshake::ServerHelloV13Draft18(sh)))) => {
                let version = sh.ext.and_then(selected_version).unwrap_or(sh.version.0);
                self.server_hello(version, sh.cipher.0, false, out);
            }
            Ok((_, TlsMessage::Handshake(TlsMessageHandshake::HelloRetryRequest(h)))) => {
                self.server_hello(h.version.0, h.cipher.0, true, out);
            }
            _ => {
                let name = if t == 1 {
                    "tls.bad_client_hello"
                } else {
                    "tls.bad_server_hello"
                };
                self.anomaly(name, out);
            }
        }
    }

    fn server_hello(
        &mut self,
        version: u16,
        cipher: u16,
        hello_retry: bool,
        out: &mut Vec<ProtoEvent>,
    ) {
        out.push(ProtoEvent::TlsServerHello {
            version,
            cipher,
            hello_retry,
        });
        if hello_retry {
            self.hrr = true;
        } else {
            self.encrypted = true;
            self.done = true;
        }
    }

    /// A whole SSLv2 record body (after its 2-byte header).
    fn sslv2_record(&mut self, rec: &[u8], out: &mut Vec<ProtoEvent>) {
        let mut r = Reader::new(rec);
        match r.u8() {
            Some(1) => {
                // CLIENT-HELLO
                let parsed = (|| {
                    let version = r.u16()?;
                    let cs_len = r.u16()?;
                    let sid_len = r.u16()?;
                    let ch_len = r.u16()?;
                    let specs = r.take(usize::from(cs_len))?;
                    r.take(usize::from(sid_len))?;
                    r.take(usize::from(ch_len))?;
                    Some((version, specs))
                })();
                match parsed {
                    Some((version, specs)) => {
                        // 3-byte cipher kinds, reported by their low 16 bits
                        // (TLS suites are 0x00XXXX; SSLv2 kinds e.g. 0x0700c0).
                        let ciphers = specs
                            .chunks_exact(3)
                            .filter_map(|c| match c {
                                [_, a, b] => Some(u16::from_be_bytes([*a, *b])),
                                _ => None,
                            })
                            .collect();
                        let h = Hello {
                            legacy_version: version,
                            ciphers,
                            sslv2: true,
                            ..Hello::default()
                        };
                        out.push(client_hello_event(h));
                    }
                    None => self.anomaly("tls.bad_client_hello", out),
                }
            }
            Some(4) => {
                // SERVER-HELLO: session-id-hit, certificate type, version,
                // certificate length, cipher specs length, connection id length.
                let parsed = (|| {
                    r.take(2)?;
                    let version = r.u16()?;
                    let cert_len = r.u16()?;
                    let cs_len = r.u16()?;
                    r.u16()?;
                    r.take(usize::from(cert_len))?;
                    let specs = r.take(usize::from(cs_len))?;
                    let first = specs.get(..3)?;
                    Some((
                        version,
                        u16::from_be_bytes([*first.get(1)?, *first.get(2)?]),
                    ))
                })();
                match parsed {
                    Some((version, cipher)) => self.server_hello(version, cipher, false, out),
                    None => self.anomaly("tls.bad_server_hello", out),
                }
            }
            _ => self.anomaly("tls.bad_record", out),
        }
    }

    /// Bytes of the buffers, each measured by `m` (`Vec::len`: content; `Vec::capacity`:
    /// memory).
    pub(crate) fn bytes(&self, m: fn(&Vec<u8>) -> usize) -> usize {
        self.sides.iter().map(|s| m(&s.hs)).sum()
    }

    pub(crate) fn on_gap(&mut self, dir: Direction, len: u64) {
        let Some(side) = self.sides.get_mut(dir_index(dir)) else {
            return;
        };
        if side.in_record && side.rec_type != REC_HANDSHAKE && len <= side.rec_remaining as u64 {
            side.rec_remaining -= len as usize;
            if side.rec_remaining == 0 {
                side.in_record = false;
            }
            return;
        }
        // Framing lost.
        side.dead = true;
        side.hs = Vec::new();
    }
}

/// supported_versions in a ServerHello: the selected version.
fn selected_version(ext: &[u8]) -> Option<u16> {
    let mut r = Reader::new(ext);
    while !r.is_empty() {
        let t = r.u16()?;
        let data = r.block16()?;
        if t == EXT_SUPPORTED_VERSIONS {
            return Reader::new(data).u16();
        }
    }
    None
}

/// Raw walk of a ClientHello extension block. False if it is malformed
/// (what was read before the fault is kept).
fn walk_extensions(ext: &[u8], h: &mut Hello) -> bool {
    let mut r = Reader::new(ext);
    while !r.is_empty() {
        let (Some(t), Some(data)) = (r.u16(), r.block16()) else {
            return false;
        };
        h.ext_types.push(t);
        let mut d = Reader::new(data);
        let ok = match t {
            EXT_SNI => (|| {
                let mut list = Reader::new(d.block16()?);
                while !list.is_empty() {
                    let kind = list.u8()?;
                    let name = list.block16()?;
                    if kind == 0 && h.sni.is_none() {
                        h.sni = Some(String::from_utf8_lossy(name).into_owned());
                    }
                }
                Some(())
            })(),
            EXT_GROUPS => d.block16().map(|b| h.groups = u16_list(b)),
            EXT_POINT_FORMATS => d.block8().map(|b| h.point_formats = b.to_vec()),
            EXT_SIG_ALGS => d.block16().map(|b| h.sig_algs = u16_list(b)),
            EXT_ALPN => (|| {
                let mut list = Reader::new(d.block16()?);
                while !list.is_empty() {
                    h.alpn.push(list.block8()?.to_vec());
                }
                Some(())
            })(),
            EXT_SUPPORTED_VERSIONS => d.block8().map(|b| h.supported_versions = u16_list(b)),
            _ => Some(()),
        };
        if ok.is_none() {
            return false;
        }
    }
    true
}

fn u16_list(b: &[u8]) -> Vec<u16> {
    b.chunks_exact(2)
        .map(|c| {
            u16::from_be_bytes([
                c.first().copied().unwrap_or(0),
                c.get(1).copied().unwrap_or(0),
            ])
        })
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

fn join<T: std::fmt::Display>(v: impl Iterator<Item = T>, sep: &str) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    for (i, x) in v.enumerate() {
        if i > 0 {
            s.push_str(sep);
        }
        let _ = write!(s, "{x}");
    }
    s
}

/// Joins values as 4-digit lowercase hex, written in place (no string per value).
fn join_hex(v: impl Iterator<Item = u16>, sep: &str) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(64);
    for (i, x) in v.enumerate() {
        if i > 0 {
            s.push_str(sep);
        }
        let _ = write!(s, "{x:04x}");
    }
    s
}

/// JA3 string: `SSLVersion,Ciphers,Extensions,EllipticCurves,EllipticCurvePointFormats`.
fn ja3_string(h: &Hello) -> String {
    let ng = |v: &[u16]| join(v.iter().copied().filter(|x| !is_grease(*x)), "-");
    format!(
        "{},{},{},{},{}",
        h.legacy_version,
        ng(&h.ciphers),
        ng(&h.ext_types),
        ng(&h.groups),
        join(h.point_formats.iter(), "-")
    )
}

/// JA4 (FoxIO) for TCP.
fn ja4(h: &Hello) -> String {
    let version = h
        .supported_versions
        .iter()
        .copied()
        .filter(|v| !is_grease(*v))
        .max()
        .filter(|_| !h.sslv2)
        .unwrap_or(h.legacy_version);
    let vcode = match version {
        0x0304 => "13",
        0x0303 => "12",
        0x0302 => "11",
        0x0301 => "10",
        0x0300 => "s3",
        0x0002 => "s2",
        0xfeff => "d1",
        0xfefd => "d2",
        0xfefc => "d3",
        _ => "00",
    };
    let sni = if h.ext_types.contains(&EXT_SNI) {
        'd'
    } else {
        'i'
    };
    let mut ciphers: Vec<u16> = h
        .ciphers
        .iter()
        .copied()
        .filter(|c| !is_grease(*c))
        .collect();
    let exts: Vec<u16> = h
        .ext_types
        .iter()
        .copied()
        .filter(|e| !is_grease(*e))
        .collect();
    let alpn = match h.alpn.first() {
        Some(a) if !a.is_empty() => {
            let first = a.first().copied().unwrap_or(0);
            let last = a.last().copied().unwrap_or(0);
            if first.is_ascii_alphanumeric() && last.is_ascii_alphanumeric() {
                format!("{}{}", first as char, last as char)
            } else {
                let f = format!("{first:02x}");
                let l = format!("{last:02x}");
                format!("{}{}", f.get(..1).unwrap_or("0"), l.get(1..).unwrap_or("0"))
            }
        }
        _ => "00".to_string(),
    };
    let a = format!(
        "t{vcode}{sni}{:02}{:02}{alpn}",
        ciphers.len().min(99),
        exts.len().min(99)
    );
    ciphers.sort_unstable();
    let b = if ciphers.is_empty() {
        "000000000000".to_string()
    } else {
        sha256_12(&join_hex(ciphers.iter().copied(), ","))
    };
    let mut sorted: Vec<u16> = exts
        .into_iter()
        .filter(|e| *e != EXT_SNI && *e != EXT_ALPN)
        .collect();
    sorted.sort_unstable();
    let c = if sorted.is_empty() {
        "000000000000".to_string()
    } else {
        let mut s = join_hex(sorted.iter().copied(), ",");
        let sigs: Vec<u16> = h
            .sig_algs
            .iter()
            .copied()
            .filter(|x| !is_grease(*x))
            .collect();
        if !sigs.is_empty() {
            s.push('_');
            s.push_str(&join_hex(sigs.iter().copied(), ","));
        }
        sha256_12(&s)
    };
    format!("{a}_{b}_{c}")
}

fn sha256_12(s: &str) -> String {
    let d = Sha256::digest(s.as_bytes());
    let mut h = hex(&d);
    h.truncate(12);
    h
}

fn client_hello_event(h: Hello) -> ProtoEvent {
    let ja3_string = ja3_string(&h);
    let ja3 = hex(&Md5::digest(ja3_string.as_bytes()));
    let ja4 = ja4(&h);
    ProtoEvent::TlsClientHello {
        sni: h.sni,
        legacy_version: h.legacy_version,
        supported_versions: h.supported_versions,
        ciphers: h.ciphers,
        alpn: h
            .alpn
            .iter()
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect(),
        ja3,
        ja3_string,
        ja4,
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::super::{ProtoLimits, ProtoState};
    use super::*;

    struct Ch {
        sni: Option<String>,
        legacy: u16,
        versions: Vec<u16>,
        alpn: Vec<String>,
        ja3: String,
        ja3_string: String,
        ja4: String,
    }

    fn hellos(ev: &[ProtoEvent]) -> Vec<Ch> {
        ev.iter()
            .filter_map(|e| match e {
                ProtoEvent::TlsClientHello {
                    sni,
                    legacy_version,
                    supported_versions,
                    alpn,
                    ja3,
                    ja3_string,
                    ja4,
                    ..
                } => Some(Ch {
                    sni: sni.clone(),
                    legacy: *legacy_version,
                    versions: supported_versions.clone(),
                    alpn: alpn.clone(),
                    ja3: ja3.clone(),
                    ja3_string: ja3_string.clone(),
                    ja4: ja4.clone(),
                }),
                _ => None,
            })
            .collect()
    }

    fn server_hellos(ev: &[ProtoEvent]) -> Vec<(u16, u16, bool)> {
        ev.iter()
            .filter_map(|e| match e {
                ProtoEvent::TlsServerHello {
                    version,
                    cipher,
                    hello_retry,
                } => Some((*version, *cipher, *hello_retry)),
                _ => None,
            })
            .collect()
    }

    fn run_fx(fx: &str, port: u16) -> (Vec<ProtoEvent>, ProtoState) {
        run(port, &fixture(fx), ProtoLimits::default())
    }

    #[test]
    fn grease() {
        assert!(is_grease(0x0a0a) && is_grease(0xfafa) && is_grease(0x9a9a));
        assert!(!is_grease(0x0a1a) && !is_grease(0x1301) && !is_grease(0xfeff));
    }

    #[test]
    fn ja4_hash_parts_match_published_vector() {
        // JA4_r -> JA4 pair published for a Chrome ClientHello:
        // t13d1516h2_8daaf6152771_d8a2da3f94cd
        assert_eq!(
            sha256_12("002f,0035,009c,009d,1301,1302,1303,c013,c014,c02b,c02c,c02f,c030,cca8,cca9"),
            "8daaf6152771"
        );
        assert_eq!(
            sha256_12(
                "0005,000a,000b,000d,0012,0017,001b,0023,002b,002d,0033,44cd,fe0d,ff01_0403,0804,0401,0503,0805,0501,0806,0601"
            ),
            "d8a2da3f94cd"
        );
    }

    #[test]
    fn curl_tls13() {
        // shared/pcaps/tls/arkime_curl_tls13.pcap (arkime, Apache-2.0)
        let (ev, st) = run_fx(include_str!("testdata/arkime_curl_tls13.hex"), 443);
        let ch = hellos(&ev);
        assert_eq!(ch.len(), 1);
        assert_eq!(ch[0].sni.as_deref(), Some("enabled.tls13.com"));
        assert_eq!(ch[0].legacy, 0x0303);
        assert_eq!(ch[0].versions, vec![0x0304]);
        assert_eq!(ch[0].alpn, vec!["h2".to_string(), "http/1.1".to_string()]);
        // tshark 4.0: tls.handshake.ja3 / ja3_full
        assert_eq!(
            ch[0].ja3_string,
            "771,4866-4867-4865-255,0-11-10-13172-16-22-23-49-13-43-45-51-21,29-23-30-25-24,0-1-2"
        );
        assert_eq!(ch[0].ja3, "eeadfd2f446a45ded96f804720a0c75b");
        // ja4plus 1.4.0 (PyPI, independent implementation) on the same pcap.
        assert_eq!(ch[0].ja4, "t13d0413h2_16476d049b0b_ffceb19bae65");
        assert_eq!(server_hellos(&ev), vec![(0x0304, 0x1302, false)]);
        assert!(st.encrypted());
        assert_eq!(st.app(), AppProto::Tls);
    }

    #[test]
    fn clienthello_split_over_two_segments_with_grease() {
        // shared/pcaps/tls/arkime_tls_clienthello_split_2_segments.pcap
        let (ev, _) = run_fx(
            include_str!("testdata/arkime_tls_clienthello_split_2_segments.hex"),
            443,
        );
        let ch = hellos(&ev);
        assert_eq!(ch.len(), 1);
        assert_eq!(ch[0].sni.as_deref(), Some("clients2.google.com"));
        assert_eq!(ch[0].versions, vec![0x9a9a, 0x0304, 0x0303]);
        assert_eq!(ch[0].ja3, "35708a08e7be9f7aa5bce7f2d5c1cecb");
        assert_eq!(ch[0].ja4, "t13d1516h2_8daaf6152771_02713d6af862");
        assert_eq!(server_hellos(&ev), vec![(0x0304, 0x1301, false)]);
    }

    #[test]
    fn clienthello_split_over_three_segments() {
        // shared/pcaps/tls/sv_tls_clienthello_mtu300_fragmented.pcap (suricata-verify, MIT)
        let (ev, _) = run_fx(
            include_str!("testdata/sv_tls_clienthello_mtu300_fragmented.hex"),
            443,
        );
        let ch = hellos(&ev);
        assert_eq!(ch.len(), 1);
        assert_eq!(ch[0].sni.as_deref(), Some("www.google.com"));
        assert_eq!(ch[0].ja3, "a64c29923906f2a1be278be1da0714fa");
        assert_eq!(ch[0].ja4, "t12d8008h2_9cedc1f1428b_046e095b7c4a");
        assert_eq!(server_hellos(&ev), vec![(0x0303, 0xc02b, false)]);
    }

    #[test]
    fn other_versions_and_ja3() {
        // (fixture, sni, ja3 from tshark 4.0 `tls.handshake.ja3`, ja4 from
        // ja4plus 1.4.0 on the same pcap, ServerHello version)
        type Case<'a> = (&'a str, Option<&'a str>, &'a str, &'a str, Option<u16>);
        let cases: &[Case] = &[
            // shared/pcaps/tls/zeek_tls12_no_sni.pcap
            (
                include_str!("testdata/zeek_tls12_no_sni.hex"),
                None,
                "bd9c99b3a0f752c3ab8b052a79e9de3e",
                "t12i800500_15c493246000_3eafcbe19126",
                Some(0x0303),
            ),
            // shared/pcaps/tls/zeek_tls10_sni_gstatic.pcap
            (
                include_str!("testdata/zeek_tls10_sni_gstatic.hex"),
                Some("ssl.gstatic.com"),
                "62351d5ea3cd4f21f697965b10a9bbbe",
                "t10d360600_b06c425f59b5_eb0e26099a3f",
                Some(0x0301),
            ),
            // shared/pcaps/tls/zeek_tls13_ech_cloudflare.pcap tcp.stream 1 (outer SNI, ECH;
            // Chrome shuffles extensions: JA3 differs from stream 0, JA4 does not)
            (
                include_str!("testdata/zeek_tls13_ech_cloudflare.hex"),
                Some("cloudflare-ech.com"),
                "2fcbf8655473005933c5869b2b5d8044",
                "t13d1517h2_8daaf6152771_b1ff8ab2d16f",
                Some(0x0304),
            ),
            // shared/pcaps/tls/arkime_tls13_draft_ipv6.pcap: supported_versions has 0x7f12 (draft 18)
            (
                include_str!("testdata/arkime_tls13_draft_ipv6.hex"),
                Some("blog.cloudflare.com"),
                "4826a90ec2daf4f7b4b64cc1c8bd343b",
                "t00d1815h2_a30347de7a75_2a77702ff8e0",
                Some(0x7f12),
            ),
        ];
        for (fx, sni, ja3, ja4_prefix, sv) in cases {
            let (ev, st) = run_fx(fx, 443);
            let ch = hellos(&ev);
            assert_eq!(ch.len(), 1, "{ja3}");
            assert_eq!(ch[0].sni.as_deref(), *sni);
            assert_eq!(&ch[0].ja3, ja3);
            assert_eq!(&ch[0].ja4, ja4_prefix);
            assert_eq!(server_hellos(&ev).first().map(|s| s.0), *sv);
            assert!(st.encrypted(), "{ja3}");
            assert!(
                !ev.iter().any(|e| matches!(e, ProtoEvent::Anomaly { .. })),
                "{ev:?}"
            );
        }
    }

    #[test]
    fn hello_retry_request() {
        // shared/pcaps/tls/zeek_tls13_hello_retry_request.pcap: CH, HRR, CCS + 2nd CH, SH.
        let (ev, st) = run_fx(
            include_str!("testdata/zeek_tls13_hello_retry_request.hex"),
            443,
        );
        let ch = hellos(&ev);
        assert_eq!(ch.len(), 2);
        assert!(ch.iter().all(|c| c.sni.is_none()
            && c.ja3 == "0f14b679807628ec7f9c02cada3ee941"
            && c.ja4 == "t13i040900_16476d049b0b_78f1d400d464"));
        let sh = server_hellos(&ev);
        assert_eq!(sh.first(), Some(&(0x0304, 0x1302, true)));
        assert!(st.encrypted());
    }

    #[test]
    fn sslv2_client_hello() {
        // shared/pcaps/tls/zeek_sslv2_clienthello.pcap (zeek, BSD)
        let (ev, st) = run_fx(include_str!("testdata/zeek_sslv2_clienthello.hex"), 443);
        let ch = hellos(&ev);
        assert_eq!(ch.len(), 1);
        assert_eq!(ch[0].legacy, 0x0002);
        assert_eq!(ch[0].ja3_string, "2,192-128-128-128-64-128-128,,,");
        assert!(ch[0].ja4.starts_with("ts2i0700"), "{}", ch[0].ja4);
        // SSLv2 SERVER-HELLO: version 2, first cipher kind 0x0700c0.
        assert_eq!(server_hellos(&ev), vec![(0x0002, 0x00c0, false)]);
        assert!(st.encrypted());
    }

    #[test]
    fn tls_on_odd_port_and_bad_record() {
        let fx = fixture(include_str!("testdata/zeek_tls12_no_sni.hex"));
        let (ev, _) = run(9090, &fx, ProtoLimits::default());
        assert_eq!(
            ev.first(),
            Some(&ProtoEvent::Detected { app: AppProto::Tls })
        );
        let mut a = TlsAnalyzer::new(1 << 16, AppProto::Tls);
        let mut out = Vec::new();
        a.on_data(
            Direction::Forward,
            &[0x16, 0x03, 0x01, 0xff, 0xff, 0x01],
            &mut out,
        );
        assert_eq!(
            out,
            vec![ProtoEvent::Anomaly {
                app: AppProto::Tls,
                name: "tls.bad_record"
            }]
        );
    }

    #[test]
    fn fuzz_tls_no_panic() {
        let mut rng = XorShift::new(0x715);
        let seeds: Vec<(Direction, Vec<u8>)> = [
            include_str!("testdata/arkime_curl_tls13.hex"),
            include_str!("testdata/zeek_sslv2_clienthello.hex"),
            include_str!("testdata/zeek_tls13_hello_retry_request.hex"),
        ]
        .iter()
        .flat_map(|f| fixture(f))
        .collect();
        for i in 0..25_000usize {
            let mut a = TlsAnalyzer::new(512 + i % 4096, AppProto::Tls);
            let mut out = Vec::new();
            for j in 0..3 {
                let (d, c) = &seeds[(i * 3 + j) % seeds.len()];
                let input = if i % 5 == 0 {
                    rng.bytes_upto(300)
                } else {
                    rng.mutate(c)
                };
                let cut = if input.is_empty() {
                    0
                } else {
                    (rng.next() as usize) % input.len()
                };
                a.on_data(*d, &input[..cut], &mut out);
                if rng.one_in(10) {
                    a.on_gap(*d, rng.next() % 100);
                }
                a.on_data(*d, &input[cut..], &mut out);
            }
        }
        // Hello bodies straight into the walker.
        for _ in 0..20_000 {
            let mut h = Hello::default();
            let b = rng.bytes_upto(120);
            walk_extensions(&b, &mut h);
            let _ = ja4(&h);
            let _ = selected_version(&b);
        }
    }
}
