//! Criterion benches: decode, decode + flow table, and the whole worker, over real captures.
//! Run: `cargo bench --bench pipeline`.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::hint::black_box;
use std::path::Path;
use tapwatch::app::{Emitted, Worker};
use tapwatch::capture::file::{CaptureFile, Next};
use tapwatch::decode::{self, Decoded, Decoder};
use tapwatch::detect::Detectors;
use tapwatch::flow::{FlowConfig, FlowTable, NoPayload};
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
            let rules = tapwatch::detect::rules::RuleSet::embedded().expect("rules");
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
                        det.on_event(&e, &mut findings);
                    }
                    findings.clear();
                }
                w.finish(&mut out);
                for e in out.drain(..) {
                    det.on_event(&e, &mut findings);
                }
                det.finish(&mut findings);
                black_box(findings.len())
            })
        });
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
