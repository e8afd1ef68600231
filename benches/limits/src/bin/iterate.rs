//! The floor: walk the memory-mapped capture's records and count packets and bytes.
//! No parsing of the frames; only the 16-byte record headers are read.
//! Usage: iterate FILE.pcap

use std::time::Instant;
use tapwatch_limits::{report, Capture};

fn main() {
    let t0 = Instant::now();
    let cap = Capture::open_from_args("iterate");
    let mut bytes = 0u64;
    let packets = cap.for_each(|frame, _wire| bytes += frame.len() as u64);
    report(packets, std::hint::black_box(bytes), t0);
}
