//! The fuzz harnesses, shared by the cargo-fuzz targets (`fuzz_targets/*.rs`) and the stable
//! random-input test of the normal suite (`tests/suite/robustness.rs` includes this file with
//! `#[path]`), so CI keeps the property without a nightly toolchain.
//!
//! Every function takes arbitrary bytes and must return without panicking, hanging or allocating
//! without bound. Only public library entry points are used.
#![allow(dead_code)]

use std::io::Read;
use tapwatch::analysis::{Analysis, Learning};
use tapwatch::app::{Engine, OutputOptions};
use tapwatch::capture::file::{CaptureFile, Next};
use tapwatch::capture::{linktype, RawFrame};
use tapwatch::decode::{self, Decoded, Decoder};
use tapwatch::detect::learned::Model;
use tapwatch::detect::rules::RuleSet;
use tapwatch::flow::Direction;
use tapwatch::proto::{ProtoLimits, ProtoState};
use tapwatch::settings::Settings;
use tapwatch::time::Timestamp;

/// A reader that hands out its bytes in pieces of varying size (1 .. 4 KiB), so records straddle
/// the stream reader's refills.
pub struct Dribble {
    data: Vec<u8>,
    pos: usize,
    step: usize,
}

impl Dribble {
    pub fn new(data: Vec<u8>, seed: u8) -> Self {
        Dribble {
            data,
            pos: 0,
            step: usize::from(seed) * 17 + 1,
        }
    }
}

impl Read for Dribble {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.step = (self.step * 31 + 7) % 4096 + 1;
        let rest = self.data.get(self.pos..).unwrap_or_default();
        let n = rest.len().min(buf.len()).min(self.step);
        buf[..n].copy_from_slice(&rest[..n]);
        self.pos += n;
        Ok(n)
    }
}

/// Reads every frame of a capture given as bytes (through the streaming reader); returns the
/// number of frames. `frames` sees each one.
pub fn read_capture(data: &[u8], seed: u8, mut frames: impl FnMut(&RawFrame<'_>)) -> u64 {
    let input: Box<dyn Read + Send> = if seed & 1 == 1 {
        Box::new(Dribble::new(data.to_vec(), seed))
    } else {
        Box::new(std::io::Cursor::new(data.to_vec()))
    };
    let Ok(mut f) = CaptureFile::from_reader("fuzz", input) else {
        return 0;
    };
    let mut n = 0u64;
    // Every frame consumes at least 16 bytes of input: more iterations than that is a hang.
    let limit = data.len() as u64 / 8 + 16;
    // End, a cut record or corrupt structure all end the input.
    while let Ok(Next::Frame(fr)) = f.next_frame() {
        assert!(
            fr.bytes.len() <= tapwatch::capture::file::MAX_RECORD,
            "frame larger than MAX_RECORD"
        );
        frames(&fr);
        n += 1;
        assert!(n <= limit, "capture reader does not advance");
    }
    n
}

/// pcap reader: the first byte picks one of the four magics written over the input's first four
/// bytes (the fuzzer then explores the rest of the header and the records).
pub fn capture_pcap(data: &[u8]) {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let mut v = rest.to_vec();
    let magic: [u8; 4] = match sel & 3 {
        0 => [0xd4, 0xc3, 0xb2, 0xa1],
        1 => [0xa1, 0xb2, 0xc3, 0xd4],
        2 => [0x4d, 0x3c, 0xb2, 0xa1],
        _ => [0xa1, 0xb2, 0x3c, 0x4d],
    };
    for (i, m) in magic.iter().enumerate() {
        if let Some(b) = v.get_mut(i) {
            *b = *m;
        }
    }
    let mut dec = Decoder::new();
    read_capture(&v, sel >> 2, |fr| {
        let _ = dec.decode(fr);
    });
}

/// pcapng reader: the input's first four bytes become a section header block type.
pub fn capture_pcapng(data: &[u8]) {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let mut v = rest.to_vec();
    for (i, m) in [0x0a, 0x0d, 0x0d, 0x0a].iter().enumerate() {
        if let Some(b) = v.get_mut(i) {
            *b = *m;
        }
    }
    let mut dec = Decoder::new();
    read_capture(&v, sel, |fr| {
        let _ = dec.decode(fr);
    });
}

const LINKS: [u32; 11] = [
    linktype::ETHERNET,
    linktype::NULL,
    linktype::RAW_OLD,
    linktype::RAW_OLD2,
    linktype::LOOP,
    linktype::RAW,
    linktype::LINUX_SLL,
    linktype::IPV4,
    linktype::IPV6,
    linktype::NFLOG,
    linktype::LINUX_SLL2,
];

/// One frame through the decoder: the first byte picks the link type (or, above the known ones,
/// an arbitrary one), the second whether the wire length claims more than was captured.
pub fn decode_frame(data: &[u8]) {
    let [sel, snap, bytes @ ..] = data else {
        return;
    };
    let link = LINKS
        .get(usize::from(*sel))
        .copied()
        .unwrap_or(u32::from(*sel));
    let frame = RawFrame {
        ts: Timestamp::from_secs(1_700_000_000),
        wire_len: bytes.len() as u32 + u32::from(*snap & 0x0f) * 100,
        link,
        bytes,
    };
    let mut dec = Decoder::new();
    if let Decoded::Packet(p) = dec.decode(&frame) {
        let pl = decode::payload(&frame, &p);
        assert!(pl.len() <= bytes.len());
        let _ = p.transport();
    }
}

/// Small caps, so that eviction, out-of-order limits and depth are reached quickly.
pub fn small_settings() -> Settings {
    let mut s = Settings::default();
    s.flow.max_flows = 64;
    s.flow.reassembly.max_ooo_bytes = 4096;
    s.flow.reassembly.max_ooo_segments = 8;
    s.flow.reassembly.depth = 64 * 1024;
    s.device.max_devices = 32;
    s.device.max_peers = 16;
    s
}

fn rules() -> RuleSet {
    static RULES: std::sync::OnceLock<RuleSet> = std::sync::OnceLock::new();
    RULES
        .get_or_init(|| RuleSet::embedded().expect("built-in rules compile"))
        .clone()
}

/// A whole capture through every stage (decode, flows, reassembly, analyzers, detectors, alert
/// writer with output discarded), with small table caps.
pub fn pipeline(data: &[u8]) {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let s = small_settings();
    let out = OutputOptions {
        discard: true,
        ..Default::default()
    };
    let Ok(mut engine) = Engine::new(&s, rules(), &out, None, Learning::Frozen) else {
        return;
    };
    read_capture(rest, sel, |fr| engine.frame(fr));
    let _ = engine.finish();
}

/// The chunks of a protocol input: each is `[flags, len_lo, len_hi, bytes...]` where bit 0 of
/// `flags` is the direction (1 = server to client) and bit 1 marks a gap of `len` bytes instead
/// of data.
pub fn chunks(mut data: &[u8]) -> Vec<(Direction, Option<&[u8]>, u64)> {
    let mut v = Vec::new();
    while let [flags, lo, hi, rest @ ..] = data {
        let dir = if flags & 1 == 0 {
            Direction::Forward
        } else {
            Direction::Reverse
        };
        let len = usize::from(u16::from_le_bytes([*lo, *hi]));
        if flags & 2 != 0 {
            v.push((dir, None, len as u64));
            data = rest;
            continue;
        }
        let n = len.min(rest.len());
        v.push((dir, Some(&rest[..n]), 0));
        data = &rest[n..];
    }
    if !data.is_empty() {
        v.push((Direction::Forward, Some(data), 0));
    }
    v
}

/// Encodes chunks in the format [`chunks`] reads (for seeds and generated inputs).
pub fn encode_chunks(parts: &[(Direction, &[u8])]) -> Vec<u8> {
    let mut v = Vec::new();
    for (d, bytes) in parts {
        for piece in bytes.chunks(u16::MAX as usize) {
            v.push(u8::from(*d == Direction::Reverse));
            v.extend_from_slice(&(piece.len() as u16).to_le_bytes());
            v.extend_from_slice(piece);
        }
    }
    v
}

/// A TCP stream through the protocol analyzers, with `port` as the server-port hint (content
/// decides the protocol; the seeds of each target are streams of that protocol).
pub fn proto(port: u16, data: &[u8]) {
    let mut st = ProtoState::new(port, ProtoLimits::default());
    let mut out = Vec::new();
    let mut total = 0usize;
    for (dir, bytes, gap) in chunks(data) {
        match bytes {
            Some(b) => {
                total += b.len();
                st.on_data(dir, b, &mut out);
            }
            None => st.on_gap(dir, gap),
        }
        // Events stay proportional to the input, never more.
        assert!(
            out.len() <= total + 64,
            "{} events from {total} bytes",
            out.len()
        );
        out.clear();
    }
    st.on_close(&mut out);
    let _ = (st.app(), st.encrypted());
}

pub fn proto_mqtt(data: &[u8]) {
    proto(1883, data)
}
pub fn proto_http(data: &[u8]) {
    proto(80, data)
}
pub fn proto_telnet(data: &[u8]) {
    proto(23, data)
}
pub fn proto_ftp(data: &[u8]) {
    proto(21, data)
}
pub fn proto_tls(data: &[u8]) {
    proto(443, data)
}

/// Rule files: the input is split on NUL into up to four files, compiled, then every detector is
/// built from them (which parses the detectors' parameters).
pub fn rules_text(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let files: Vec<(String, &str)> = text
        .split('\0')
        .take(4)
        .enumerate()
        .map(|(i, t)| (format!("{i}.toml"), t))
        .collect();
    if let Ok(rs) = RuleSet::from_texts(files.iter().map(|(n, t)| (n.as_str(), *t))) {
        let _ = Analysis::new(&Settings::default(), &rs, None, Learning::Frozen);
        let _ = rs.len();
    }
}

/// The config parser (and, when it accepts the text, the detectors built from the settings).
pub fn config_text(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Ok(s) = Settings::from_toml("fuzz.toml", &text) {
        let _ = Analysis::new(&s, &rules(), None, Learning::Frozen);
        let _ = s.is_home("198.18.1.1".parse().expect("ip"));
    }
}

/// The model loader; an accepted model is scored and used to build the analysis stage.
pub fn model_json(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Ok(m) = Model::from_json(&text) {
        let z = [0.0; tapwatch::device::N_FEATURES];
        let _ = m.score(&z);
        let _ = Analysis::new(&Settings::default(), &rules(), Some(m), Learning::Frozen);
    }
}
