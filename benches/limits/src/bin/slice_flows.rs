//! The decode + flow-table limit: every frame sliced by etherparse (LaxSlicedPacket, as
//! tapwatch's decoder) and counted into a hashbrown map (foldhash, as tapwatch's flow table)
//! keyed by the canonical 5-tuple, with per-flow packet and byte counters. No timeouts, no
//! eviction, no TCP state, no payload work.
//! Usage: slice_flows FILE.pcap

use etherparse::{LaxNetSlice, LaxSlicedPacket, TransportSlice};
use std::time::Instant;
use tapwatch_limits::{report, Capture};

/// Canonical 5-tuple: the lower (address, port) end first. IPv4 addresses are stored
/// IPv4-mapped in 16 bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    a: [u8; 16],
    b: [u8; 16],
    pa: u16,
    pb: u16,
    proto: u8,
}

#[derive(Default, Clone, Copy)]
struct Counters {
    packets: u64,
    bytes: u64,
}

fn v4(a: [u8; 4]) -> [u8; 16] {
    std::net::Ipv4Addr::from(a).to_ipv6_mapped().octets()
}

#[inline(always)]
fn key_of(frame: &[u8]) -> Option<Key> {
    let p = LaxSlicedPacket::from_ethernet(frame).ok()?;
    let (src, dst, proto) = match p.net.as_ref()? {
        LaxNetSlice::Ipv4(ip) => {
            let h = ip.header();
            (
                v4(h.source()),
                v4(h.destination()),
                ip.payload_ip_number().0,
            )
        }
        LaxNetSlice::Ipv6(ip) => {
            let h = ip.header();
            (h.source(), h.destination(), ip.payload().ip_number.0)
        }
        LaxNetSlice::Arp(_) => return None,
    };
    let (sp, dp) = match &p.transport {
        Some(TransportSlice::Tcp(t)) => (t.source_port(), t.destination_port()),
        Some(TransportSlice::Udp(u)) => (u.source_port(), u.destination_port()),
        _ => (0, 0),
    };
    Some(if (src, sp) <= (dst, dp) {
        Key {
            a: src,
            b: dst,
            pa: sp,
            pb: dp,
            proto,
        }
    } else {
        Key {
            a: dst,
            b: src,
            pa: dp,
            pb: sp,
            proto,
        }
    })
}

fn main() {
    let t0 = Instant::now();
    let cap = Capture::open_from_args("slice_flows");
    if cap.link_type != 1 {
        eprintln!(
            "slice_flows: link type {} (only Ethernet, 1)",
            cap.link_type
        );
        std::process::exit(2);
    }
    let mut table: hashbrown::HashMap<Key, Counters, foldhash::fast::RandomState> =
        hashbrown::HashMap::with_hasher(foldhash::fast::RandomState::default());
    let mut bytes = 0u64;
    let mut not_ip = 0u64;
    let packets = cap.for_each(|frame, wire| {
        bytes += frame.len() as u64;
        match key_of(frame) {
            Some(k) => {
                let c = table.entry(k).or_default();
                c.packets += 1;
                c.bytes += wire as u64;
            }
            None => not_ip += 1,
        }
    });
    report(packets, bytes, t0);
    let entry = std::mem::size_of::<(Key, Counters)>();
    // hashbrown: one control byte per bucket (+ a group of trailing ones), buckets = capacity * 8/7.
    let buckets = (table.capacity() * 8 / 7).next_power_of_two();
    println!("flows        {}", table.len());
    println!("not IP       {not_ip}");
    println!(
        "flow table   ~{:.1} MiB ({} buckets x ({} B entry + 1 B control))",
        (buckets * (entry + 1)) as f64 / (1u64 << 20) as f64,
        buckets,
        entry
    );
}
