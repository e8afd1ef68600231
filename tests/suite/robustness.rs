//! Random and mutated input, on the stable toolchain: the same harnesses as the cargo-fuzz
//! targets (tests/fuzz/common.rs), fed by a seeded xorshift generator from seeds made of the real
//! captures, protocol fixtures, rules, config and model. Also replays every input the fuzzers
//! ever found (tests/fuzz/regressions/TARGET/*), so fixed crashes stay fixed.
//!
//! `TAPWATCH_ROBUSTNESS_SECS` (default 1.2 per target) and `TAPWATCH_ROBUSTNESS_SEED` change the
//! budget and the seed, e.g. for a longer soak.

#[path = "../fuzz/common.rs"]
mod harness;

use crate::util::*;
use std::time::{Duration, Instant};
use tapwatch::flow::Direction;

struct XorShift(u64);
impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
    /// A copy of `base` with a few random edits: overwrite, insert, delete, truncate,
    /// duplicate a slice, or write an "interesting" integer (0, 0xff.., lengths).
    fn mutate(&mut self, base: &[u8]) -> Vec<u8> {
        let mut v = base.to_vec();
        for _ in 0..1 + self.below(8) {
            let pos = self.below(v.len().max(1));
            match self.below(8) {
                0 | 1 => {
                    if let Some(b) = v.get_mut(pos) {
                        *b = self.next() as u8;
                    }
                }
                2 => v.insert(pos.min(v.len()), self.next() as u8),
                3 => {
                    if pos < v.len() {
                        v.remove(pos);
                    }
                }
                4 => v.truncate(pos),
                5 => {
                    let end = (pos + self.below(64)).min(v.len());
                    let dup = v.get(pos..end).unwrap_or_default().to_vec();
                    let at = self.below(v.len().max(1)).min(v.len());
                    v.splice(at..at, dup);
                }
                _ => {
                    let val: [u8; 4] = match self.below(5) {
                        0 => [0, 0, 0, 0],
                        1 => [0xff; 4],
                        2 => [0x7f, 0xff, 0xff, 0xff],
                        3 => [0x80, 0, 0, 0],
                        _ => (self.next() as u32).to_le_bytes(),
                    };
                    for (i, b) in val.iter().enumerate() {
                        if let Some(x) = v.get_mut(pos + i) {
                            *x = *b;
                        }
                    }
                }
            }
        }
        v
    }
}

fn budget() -> Duration {
    let secs: f64 = std::env::var("TAPWATCH_ROBUSTNESS_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.2);
    Duration::from_secs_f64(secs)
}

fn seed() -> u64 {
    std::env::var("TAPWATCH_ROBUSTNESS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x7a97_a7c4_5eed_0001)
}

/// Runs `f` on the seeds, then on random and mutated inputs until the time budget is spent.
/// A panic names the target and the input's seed/iteration so it can be reproduced.
fn soak(name: &str, seeds: &[Vec<u8>], max_len: usize, f: fn(&[u8])) -> u64 {
    for s in seeds {
        f(s);
    }
    let mut rng = XorShift(
        seed()
            ^ name
                .bytes()
                .fold(0u64, |h, b| h.wrapping_mul(31) ^ u64::from(b)),
    );
    let started = Instant::now();
    let mut n = 0u64;
    while started.elapsed() < budget() {
        let input = if seeds.is_empty() || rng.below(5) == 0 {
            let len = rng.below(max_len);
            rng.bytes(len)
        } else {
            let base = &seeds[rng.below(seeds.len())];
            let mut v = rng.mutate(base);
            // Now and then a splice of two seeds.
            if rng.below(8) == 0 {
                let other = &seeds[rng.below(seeds.len())];
                let cut = rng.below(other.len().max(1));
                v.extend_from_slice(other.get(cut..).unwrap_or_default());
            }
            v
        };
        let r = std::panic::catch_unwind(|| f(&input));
        if r.is_err() {
            let dir = std::env::temp_dir().join("tapwatch-robustness");
            let _ = std::fs::create_dir_all(&dir);
            let p = dir.join(format!("{name}-{n}"));
            let _ = std::fs::write(&p, &input);
            panic!("{name}: input {n} panicked; saved to {}", p.display());
        }
        n += 1;
    }
    eprintln!("{name}: {} seeds, {n} random/mutated inputs", seeds.len());
    n
}

fn read(rel: &str) -> Vec<u8> {
    std::fs::read(root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// Small captures of every container and link type, cut to 16 KiB.
fn capture_seeds(ng: bool) -> Vec<Vec<u8>> {
    let mut v = Vec::new();
    for e in manifest() {
        let b = read(&format!("pcaps/{}", e.path));
        let is_ng = b.starts_with(&[0x0a, 0x0d, 0x0d, 0x0a]);
        if is_ng == ng && b.len() > 24 {
            let mut s = vec![0u8];
            s.extend_from_slice(&b[..b.len().min(16 << 10)]);
            v.push(s);
        }
    }
    v
}

/// The protocol fixtures (`F hex` / `R hex` lines) of src/proto/testdata, as chunk inputs.
fn proto_seeds(words: &[&str]) -> Vec<Vec<u8>> {
    let dir = root().join("src/proto/testdata");
    let mut v = Vec::new();
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .expect("testdata")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".hex") && words.iter().any(|w| n.contains(w)))
        .collect();
    names.sort();
    for n in names {
        let text = std::fs::read_to_string(dir.join(&n)).expect("fixture");
        let mut parts: Vec<(Direction, Vec<u8>)> = Vec::new();
        for l in text.lines() {
            let (d, hex) = match l.split_once(' ') {
                Some(("F", h)) => (Direction::Forward, h),
                Some(("R", h)) => (Direction::Reverse, h),
                _ => continue,
            };
            let bytes: Vec<u8> = (0..hex.len() / 2)
                .filter_map(|i| u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok())
                .collect();
            parts.push((d, bytes));
        }
        let refs: Vec<(Direction, &[u8])> = parts.iter().map(|(d, b)| (*d, b.as_slice())).collect();
        let mut enc = harness::encode_chunks(&refs);
        enc.truncate(32 << 10);
        v.push(enc);
    }
    assert!(!v.is_empty(), "no fixtures for {words:?}");
    v
}

#[test]
fn capture_readers_survive_random_input() {
    let n = soak(
        "capture_pcap",
        &capture_seeds(false),
        4096,
        harness::capture_pcap,
    );
    let m = soak(
        "capture_pcapng",
        &capture_seeds(true),
        4096,
        harness::capture_pcapng,
    );
    assert!(n > 0 && m > 0);
}

#[test]
fn decoder_survives_random_frames() {
    let mut seeds = Vec::new();
    for e in manifest().iter().step_by(3) {
        let b = read(&format!("pcaps/{}", e.path));
        harness::read_capture(&b, 0, |fr| {
            if seeds.len() < 400 {
                let sel = [1u32, 0, 12, 14, 108, 101, 113, 228, 229, 239, 276]
                    .iter()
                    .position(|l| *l == fr.link)
                    .unwrap_or(200) as u8;
                let mut s = vec![sel, 0];
                s.extend_from_slice(fr.bytes);
                seeds.push(s);
            }
        });
    }
    soak("decode", &seeds, 256, harness::decode_frame);
}

#[test]
fn pipeline_survives_mutated_captures() {
    // The whole pipeline with small table caps, on mutated real captures.
    let seeds: Vec<Vec<u8>> = capture_seeds(false)
        .into_iter()
        .chain(capture_seeds(true))
        .map(|mut s| {
            s.truncate(6 << 10);
            s
        })
        .collect();
    soak("pipeline", &seeds, 2048, harness::pipeline);
}

#[test]
fn protocol_analyzers_survive_random_streams() {
    soak(
        "proto_mqtt",
        &proto_seeds(&["mqtt"]),
        2048,
        harness::proto_mqtt,
    );
    soak(
        "proto_http",
        &proto_seeds(&["http"]),
        2048,
        harness::proto_http,
    );
    soak(
        "proto_telnet",
        &proto_seeds(&["telnet"]),
        2048,
        harness::proto_telnet,
    );
    soak(
        "proto_ftp",
        &proto_seeds(&["ftp"]),
        2048,
        harness::proto_ftp,
    );
    soak(
        "proto_tls",
        &proto_seeds(&["tls", "ssl"]),
        2048,
        harness::proto_tls,
    );
}

#[test]
fn rule_config_and_model_parsers_survive_random_text() {
    let mut rules = Vec::new();
    for f in [
        "10-protocol",
        "20-credentials",
        "30-scan",
        "40-lateral",
        "50-baseline",
    ] {
        rules.push(read(&format!("rules/{f}.toml")));
    }
    soak("rules", &rules, 512, harness::rules_text);
    let readme = String::from_utf8(read("README.md")).expect("utf-8");
    let cfg = readme
        .split("```toml\n")
        .nth(1)
        .and_then(|s| s.split("```").next())
        .expect("README config block")
        .to_string();
    let seg = "[zones]\niot = [\"198.18.1.0/24\"]\noffice = [\"198.18.2.0/24\"]\n[[segmentation]]\nfrom = \"office\"\nto = \"iot\"\nallow = [\"https\", \"tcp/8000-8100\", \"mqtt\"]\n";
    soak(
        "config",
        &[cfg.into_bytes(), seg.as_bytes().to_vec()],
        512,
        harness::config_text,
    );
    soak(
        "model",
        &[read("models/default.json")],
        512,
        harness::model_json,
    );
}

/// Every input a fuzzer found (crash, hang, large allocation) stays fixed.
#[test]
fn fuzz_regressions_stay_fixed() {
    let dir = root().join("tests/fuzz/regressions");
    type Harness = fn(&[u8]);
    let targets: [(&str, Harness); 12] = [
        ("capture_pcap", harness::capture_pcap),
        ("capture_pcapng", harness::capture_pcapng),
        ("decode", harness::decode_frame),
        ("pipeline", harness::pipeline),
        ("proto_mqtt", harness::proto_mqtt),
        ("proto_http", harness::proto_http),
        ("proto_telnet", harness::proto_telnet),
        ("proto_ftp", harness::proto_ftp),
        ("proto_tls", harness::proto_tls),
        ("rules", harness::rules_text),
        ("config", harness::config_text),
        ("model", harness::model_json),
    ];
    let mut n = 0;
    for (t, f) in targets {
        let Ok(rd) = std::fs::read_dir(dir.join(t)) else {
            continue;
        };
        for e in rd.flatten() {
            let input = std::fs::read(e.path()).expect("regression input");
            let started = Instant::now();
            f(&input);
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "{t}: {} took {:?}",
                e.path().display(),
                started.elapsed()
            );
            n += 1;
        }
    }
    eprintln!("{n} fuzz regression inputs replayed");
}
