//! Criterion benches over real captures in pcaps/: per stage (decode; decode + flow table; the
//! whole worker with the rule-based detectors; each protocol analyzer on its reassembled
//! streams; the detectors alone on recorded flow events; learned scoring; EVE output of flow
//! records) and end to end (`app::replay`, output discarded). Run: `cargo bench --bench pipeline`.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::hint::black_box;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use tapwatch::app::{Emitted, OutputOptions, ReplayOptions, Worker};
use tapwatch::capture::file::{CaptureFile, Next};
use tapwatch::decode::{self, Decoded, Decoder};
use tapwatch::detect::learned::Model;
use tapwatch::detect::rules::RuleSet;
use tapwatch::detect::{Detectors, Ungated};
use tapwatch::flow::{
    Direction, FlowConfig, FlowEvent, FlowMeta, FlowTable, NoPayload, StreamHandler,
};
use tapwatch::proto::{ProtoLimits, ProtoState};
use tapwatch::settings::Settings;

/// Reads every frame of a capture into memory once: (link type, timestamp, wire length, bytes).
fn frames(rel: &str) -> Vec<(u32, tapwatch::time::Timestamp, u32, Vec<u8>)> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("pcaps")
        .join(rel);
    let mut f = CaptureFile::open(&path).expect("capture");
    let mut v = Vec::new();
    while let Ok(Next::Frame(fr)) = f.next_frame() {
        v.push((fr.link, fr.ts, fr.wire_len, fr.bytes.to_vec()));
    }
    v
}

fn raw<'a>(
    f: &'a (u32, tapwatch::time::Timestamp, u32, Vec<u8>),
) -> tapwatch::capture::RawFrame<'a> {
    tapwatch::capture::RawFrame {
        ts: f.1,
        wire_len: f.2,
        link: f.0,
        bytes: &f.3,
    }
}

fn bench(c: &mut Criterion) {
    for rel in [
        "mqtt/nfstream_mqtt_port17501_highrate_coap.pcap",
        "scan/ndpi_nmap_syn_scan_1000_ports.pcap",
        "benign/ndpi_alexa_app_phone.pcapng",
    ] {
        let fr = frames(rel);
        let name = rel.rsplit('/').next().unwrap_or(rel);
        let mut g = c.benchmark_group(name);
        g.throughput(Throughput::Elements(fr.len() as u64));
        g.bench_function("decode", |b| {
            let mut d = Decoder::new();
            b.iter(|| {
                for f in &fr {
                    black_box(d.decode(&raw(f)));
                }
            })
        });
        g.bench_function("decode+flow", |b| {
            b.iter(|| {
                let mut d = Decoder::new();
                let mut t: FlowTable<NoPayload> = FlowTable::new(FlowConfig::default());
                let mut ev = Vec::new();
                let mut clock = tapwatch::app::Clock::default();
                for f in &fr {
                    let r = raw(f);
                    if clock.due(r.ts) {
                        t.tick(r.ts, &mut ev);
                        ev.clear();
                    }
                    if let Decoded::Packet(p) = d.decode(&r) {
                        t.observe(&p, decode::payload(&r, &p), &mut ev);
                        ev.clear();
                    }
                }
                t.drain(&mut ev);
                black_box(ev.len())
            })
        });
        g.bench_function("decode+flow+proto+detect", |b| {
            let settings = Settings::default();
            let rules = RuleSet::embedded().expect("rules");
            b.iter(|| {
                let mut w = Worker::new(&settings);
                let mut det = Detectors::new(&settings, &rules).expect("detectors");
                let mut out: Vec<Emitted> = Vec::new();
                let mut findings = Vec::new();
                let mut clock = tapwatch::app::Clock::default();
                for f in &fr {
                    if clock.due(f.1) {
                        w.tick(f.1, &mut out);
                    }
                    w.frame(&raw(f), &mut out);
                    for e in out.drain(..) {
                        det.on_event(&e, &mut Ungated, &mut findings);
                    }
                    findings.clear();
                }
                w.finish(&mut out);
                for e in out.drain(..) {
                    det.on_event(&e, &mut Ungated, &mut findings);
                }
                det.finish(&mut findings);
                black_box(findings.len())
            })
        });
        g.finish();
    }
}

fn pcap_path(rel: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("pcaps")
        .join(rel)
}

/// Records a TCP flow's reassembled stream, handed on when the flow ends.
struct Recorder {
    port: u16,
    chunks: Vec<(Direction, Vec<u8>)>,
}

impl StreamHandler for Recorder {
    type Event = (u16, Vec<(Direction, Vec<u8>)>);
    fn for_flow(meta: &FlowMeta) -> Option<Self> {
        Some(Recorder {
            port: meta.responder.port,
            chunks: Vec::new(),
        })
    }
    fn on_data(&mut self, dir: Direction, data: &[u8], _: &mut Vec<Self::Event>) {
        self.chunks.push((dir, data.to_vec()));
    }
    fn on_gap(&mut self, _: Direction, _: u64) {}
    fn on_close(&mut self, out: &mut Vec<Self::Event>) {
        out.push((self.port, std::mem::take(&mut self.chunks)));
    }
    fn app_name(&self) -> &'static str {
        "unknown"
    }
}

/// The reassembled TCP streams of a capture whose server port is `port`.
fn streams(rel: &str, port: u16) -> Vec<Vec<(Direction, Vec<u8>)>> {
    let fr = frames(rel);
    let mut d = Decoder::new();
    let mut t: FlowTable<Recorder> = FlowTable::new(FlowConfig::default());
    let mut ev = Vec::new();
    for f in &fr {
        if let Decoded::Packet(p) = d.decode(&raw(f)) {
            t.observe(&p, decode::payload(&raw(f), &p), &mut ev);
        }
    }
    t.drain(&mut ev);
    ev.into_iter()
        .filter_map(|e| match e {
            FlowEvent::App {
                event: (p, chunks), ..
            } if p == port && !chunks.is_empty() => Some(chunks),
            _ => None,
        })
        .collect()
}

fn protocols(c: &mut Criterion) {
    let mut g = c.benchmark_group("proto");
    for (name, rel, port) in [
        ("mqtt", "lab/attack.pcap", 1883),
        ("http", "http/zeek_http_dvwa_sqli.pcapng", 80),
        ("telnet", "lab/attack.pcap", 23),
        ("ftp", "bruteforce/zeek_ftp_bruteforce_30_attempts.pcap", 21),
        ("tls", "benign/ndpi_alexa_app_phone.pcapng", 443),
    ] {
        let st = streams(rel, port);
        let bytes: usize = st.iter().flatten().map(|(_, b)| b.len()).sum();
        assert!(bytes > 0, "{name}: no stream on port {port} in {rel}");
        g.throughput(Throughput::Bytes(bytes as u64));
        g.bench_function(name, |b| {
            b.iter(|| {
                let mut out = Vec::new();
                for s in &st {
                    let mut p = ProtoState::new(port, ProtoLimits::default());
                    for (dir, data) in s {
                        p.on_data(*dir, data, &mut out);
                    }
                }
                black_box(out.len())
            })
        });
    }
    g.finish();
}

/// The worker's events for a capture's frames, as the back end receives them.
fn recorded_events(
    settings: &Settings,
    fr: &[(u32, tapwatch::time::Timestamp, u32, Vec<u8>)],
) -> Vec<Emitted> {
    let mut w = Worker::new(settings);
    let mut out: Vec<Emitted> = Vec::new();
    let mut clock = tapwatch::app::Clock::default();
    for f in fr {
        if clock.due(f.1) {
            w.tick(f.1, &mut out);
        }
        w.frame(&raw(f), &mut out);
    }
    w.finish(&mut out);
    out
}

/// A large site policy from `benches/make-policy` (2,505 MQTT topic policy entries, 302 zones
/// under an allow-all segmentation policy), written into `dir`: None if it cannot be made
/// (no python3).
fn large_policy(dir: &Path) -> Option<(Settings, RuleSet)> {
    let _ = std::fs::remove_dir_all(dir);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/make-policy");
    let made = std::process::Command::new("python3")
        .arg(script)
        .arg(dir)
        .output()
        .ok()?;
    if !made.status.success() {
        return None;
    }
    let settings = Settings::from_file(&dir.join("tapwatch.toml")).ok()?;
    let rules = RuleSet::load_dir(&dir.join("rules")).ok()?;
    Some((settings, rules))
}

fn detectors_and_model(c: &mut Criterion) {
    let settings = Settings::default();
    let rules = RuleSet::embedded().expect("rules");
    // The worker's events for the lab attack capture, recorded once.
    let fr = frames("lab/attack.pcap");
    let mut g = c.benchmark_group("attack.pcap");
    g.throughput(Throughput::Elements(fr.len() as u64));
    let detect = |b: &mut criterion::Bencher, settings: &Settings, rules: &RuleSet| {
        b.iter_batched(
            || {
                let det = Detectors::new(settings, rules).expect("detectors");
                (recorded_events(settings, &fr), det)
            },
            |(events, mut det)| {
                let mut findings = Vec::new();
                for e in &events {
                    det.on_event(e, &mut Ungated, &mut findings);
                }
                det.finish(&mut findings);
                black_box(findings.len())
            },
            criterion::BatchSize::LargeInput,
        )
    };
    g.bench_function("detectors (rules) on recorded events", |b| {
        detect(b, &settings, &rules)
    });
    // The same with a large site policy: its topic policy and zones are found through maps,
    // so it should cost about what the shipped one does.
    let dir = std::env::temp_dir().join(format!("tapwatch-bench-policy-{}", std::process::id()));
    match large_policy(&dir) {
        Some((big_settings, big_rules)) => {
            g.bench_function(
                "detectors (rules) on recorded events, large site policy",
                |b| detect(b, &big_settings, &big_rules),
            );
        }
        None => eprintln!("benches: benches/make-policy failed (python3?); large policy skipped"),
    }
    let _ = std::fs::remove_dir_all(&dir);
    g.bench_function("end to end (replay, output discarded)", |b| {
        let opts = ReplayOptions {
            inputs: vec![pcap_path("lab/attack.pcap")],
            output: OutputOptions {
                discard: true,
                ..Default::default()
            },
            progress: false,
            quiet: true,
            bench: false,
            model: Model::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("models/default.json"))
                .ok(),
            learning: Default::default(),
            workers: 1,
        };
        b.iter(|| {
            let r = tapwatch::app::replay(&settings, rules.clone(), &opts, &AtomicBool::new(false))
                .expect("replay");
            black_box(r.stats.decode.packets)
        })
    });
    g.finish();

    // Learned scoring: every window of the lab attack capture, with the shipped model.
    let model = Model::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("models/default.json"))
        .expect("model");
    let r = tapwatch::app::collect(
        &settings,
        rules.clone(),
        &[pcap_path("lab/attack.pcap")],
        &AtomicBool::new(false),
    )
    .expect("collect");
    let windows = r
        .analysis
        .learner
        .as_ref()
        .and_then(|l| l.kept.clone())
        .unwrap_or_default();
    assert!(!windows.is_empty());
    let mut g = c.benchmark_group("learned");
    g.throughput(Throughput::Elements(windows.len() as u64));
    g.bench_function("kmeans score", |b| {
        b.iter(|| {
            let s: f64 = windows.iter().map(|w| model.score(&w.values)).sum();
            black_box(s)
        })
    });
    g.bench_function("score + explain", |b| {
        b.iter(|| {
            let n: usize = windows.iter().map(|w| model.explain(w, 3).len()).sum();
            black_box(n)
        })
    });
    g.finish();
}

/// The alert stage's biggest output: EVE `flow` lines (`--flows`), one per flow record of a
/// long benign capture.
fn output(c: &mut Criterion) {
    let settings = Settings::default();
    let events = recorded_events(&settings, &frames("lab/benign.pcap"));
    let records: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            Emitted::Flow(r) => Some(r),
            _ => None,
        })
        .collect();
    assert!(!records.is_empty());
    let mut g = c.benchmark_group("output");
    g.throughput(Throughput::Elements(records.len() as u64));
    g.bench_function("EVE flow events (benign.pcap)", |b| {
        let mut buf: Vec<u8> = Vec::with_capacity(1 << 20);
        b.iter(|| {
            buf.clear();
            for r in &records {
                serde_json::to_writer(&mut buf, &tapwatch::alert::flow_event(r)).expect("json");
                buf.push(b'\n');
            }
            black_box(buf.len())
        })
    });
    g.finish();
}

criterion_group!(benches, bench, protocols, detectors_and_model, output);
criterion_main!(benches);
