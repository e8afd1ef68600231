//! Heap allocations on the packet path, counted by a counting global allocator (this test
//! binary only). A replay must not allocate per packet: allocations come with new flows, new
//! devices, application events and alerts, not with packets.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::path::PathBuf;
use tapwatch::app::{Clock, Emitted, Worker};
use tapwatch::capture::file::{CaptureFile, Next};
use tapwatch::settings::Settings;

struct Counting;

thread_local! {
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: forwards to the system allocator; only counts on the calling thread.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
        unsafe { System.realloc(p, l, n) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocs() -> u64 {
    ALLOCS.with(|c| c.get())
}

/// Frames of a capture, in memory (read before counting).
fn frames(rel: &str) -> Vec<(u32, tapwatch::time::Timestamp, u32, Vec<u8>)> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("pcaps")
        .join(rel);
    let mut f = CaptureFile::open(&p).expect("capture");
    let mut v = Vec::new();
    while let Ok(Next::Frame(fr)) = f.next_frame() {
        v.push((fr.link, fr.ts, fr.wire_len, fr.bytes.to_vec()));
    }
    v
}

/// Runs decode, flows, reassembly and the protocol analyzers over the frames, and returns
/// (allocations, packets, flows, application events).
fn count(fr: &[(u32, tapwatch::time::Timestamp, u32, Vec<u8>)]) -> (u64, u64, u64, u64) {
    count_with(fr, &Settings::default())
}

fn count_with(
    fr: &[(u32, tapwatch::time::Timestamp, u32, Vec<u8>)],
    settings: &Settings,
) -> (u64, u64, u64, u64) {
    let mut w = Worker::new(settings);
    let mut out: Vec<Emitted> = Vec::with_capacity(1024);
    let mut clock = Clock::default();
    let before = allocs();
    for (link, ts, wire, bytes) in fr {
        if clock.due(*ts) {
            w.tick(*ts, &mut out);
        }
        w.frame(
            &tapwatch::capture::RawFrame {
                ts: *ts,
                wire_len: *wire,
                link: *link,
                bytes,
            },
            &mut out,
        );
        out.clear();
    }
    let n = allocs() - before;
    (
        n,
        w.decoder.counters.packets,
        w.flows.counters.created,
        w.app_events,
    )
}

#[test]
fn no_allocation_per_packet() {
    for rel in [
        "lab/benign.pcap",
        "lab/attack.pcap",
        "scan/ndpi_nmap_syn_scan_1000_ports.pcap",
        "benign/ndpi_alexa_app_phone.pcapng",
        "mqtt/nfstream_mqtt_port17501_highrate_coap.pcap",
    ] {
        let fr = frames(rel);
        let (a, pkts, flows, app) = count(&fr);
        // Every packet twice (as a SPAN of two segments shows routed traffic): twice the
        // packets, the same flows and application events (duplicates are dropped by reassembly).
        let doubled: Vec<_> = fr.iter().flat_map(|f| [f.clone(), f.clone()]).collect();
        let (a2, pkts2, flows2, app2) = count(&doubled);
        eprintln!(
            "{rel}: {a} allocations for {pkts} packets, {flows} flows, {app} app events; doubled: {a2} for {pkts2} packets"
        );
        assert_eq!((pkts2, flows2, app2), (2 * pkts, flows, app), "{rel}");
        assert!(
            a2 <= a + 64,
            "{rel}: {pkts} more packets cost {} more allocations",
            a2 as i64 - a as i64
        );
        // What there is comes with flows (table entry, analyzers) and events (their strings).
        let budget = 24 * flows + 40 * app + 64;
        assert!(a <= budget, "{rel}: {a} allocations > budget {budget}");
    }
    // A flow that never carries a byte (each of a SYN scan's 1,994) allocates nothing of its
    // own: protocol detection starts with the first byte. What is left is the table's growth.
    let scan = frames("scan/ndpi_nmap_syn_scan_1000_ports.pcap");
    let (a, _, flows, _) = count(&scan);
    assert!(
        flows >= 1_900 && a <= 64,
        "{a} allocations for {flows} flows"
    );
    // The same into a table of 100 flows: every new flow evicts one, and the packet's events
    // (the evicted flow's activity and record, the new flow's start) are put in flow order
    // in place.
    let mut small = Settings::default();
    small.flow.max_flows = 100;
    let (a, _, flows, _) = count_with(&scan, &small);
    assert!(
        flows >= 1_900 && a <= 64,
        "{a} allocations for {flows} flows in a table of 100"
    );
}
