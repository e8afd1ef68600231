//! Decode stage: turns a borrowed [`RawFrame`] into an owned [`PacketSummary`], or a counted
//! [`SkipReason`].
//!
//! Owns: decode counters. Hands on: `PacketSummary` (`Copy`, no heap). Link layers are walked here
//! (Ethernet with stacked 802.1Q/802.1ad tags, Linux SLL and SLL2, BSD NULL/LOOP, NFLOG, raw IP);
//! IP, its extension headers and the transport are sliced with etherparse's lax slicer, which
//! tolerates frames cut short by the snap length. VXLAN (UDP 4789) is decapsulated once. Nothing
//! here allocates or panics, whatever the bytes.

pub mod summary;

pub use summary::*;

use crate::capture::{linktype, RawFrame};
use etherparse::{LaxIpSlice, TransportSlice};
use std::net::{IpAddr, Ipv4Addr};

/// UDP port of VXLAN (RFC 7348).
pub const VXLAN_PORT: u16 = 4789;

/// Counters of the decode stage.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DecodeCounters {
    pub packets: u64,
    pub bytes: u64,
    pub ipv4: u64,
    pub ipv6: u64,
    pub tcp: u64,
    pub udp: u64,
    pub icmp: u64,
    pub arp: u64,
    pub other_ip_proto: u64,
    pub vlan: u64,
    pub vxlan: u64,
    /// Frames captured shorter than on the wire (snap length).
    pub snapped: u64,
    /// First fragments of fragmented IP packets (decoded; later fragments are skipped).
    pub first_fragments: u64,
    /// Frames skipped, by [`SkipReason::index`].
    pub skipped: [u64; SkipReason::ALL.len()],
    /// Skipped frames per unsupported link type (first 8 distinct types).
    pub unsupported_links: [(u32, u64); 8],
}

impl DecodeCounters {
    pub fn skipped_total(&self) -> u64 {
        self.skipped.iter().sum()
    }
    fn skip(&mut self, r: SkipReason) -> Decoded {
        if let Some(c) = self.skipped.get_mut(r.index()) {
            *c += 1;
        }
        Decoded::Skip(r)
    }
    fn unsupported_link(&mut self, link: u32) -> Decoded {
        for slot in self.unsupported_links.iter_mut() {
            if slot.0 == link && slot.1 > 0 || slot.1 == 0 {
                slot.0 = link;
                slot.1 += 1;
                break;
            }
        }
        self.skip(SkipReason::UnsupportedLinkType)
    }
    /// Adds another counter set (from another worker).
    pub fn merge(&mut self, o: &DecodeCounters) {
        self.packets += o.packets;
        self.bytes += o.bytes;
        self.ipv4 += o.ipv4;
        self.ipv6 += o.ipv6;
        self.tcp += o.tcp;
        self.udp += o.udp;
        self.icmp += o.icmp;
        self.arp += o.arp;
        self.other_ip_proto += o.other_ip_proto;
        self.vlan += o.vlan;
        self.vxlan += o.vxlan;
        self.snapped += o.snapped;
        self.first_fragments += o.first_fragments;
        for (a, b) in self.skipped.iter_mut().zip(o.skipped.iter()) {
            *a += b;
        }
        for &(l, n) in o.unsupported_links.iter().filter(|s| s.1 > 0) {
            for slot in self.unsupported_links.iter_mut() {
                if slot.0 == l && slot.1 > 0 || slot.1 == 0 {
                    slot.0 = l;
                    slot.1 += n;
                    break;
                }
            }
        }
    }
}

/// Result of decoding one frame.
#[derive(Clone, Copy, Debug)]
pub enum Decoded {
    Packet(PacketSummary),
    Skip(SkipReason),
}

/// The decoder: stateless apart from its counters.
#[derive(Debug, Default)]
pub struct Decoder {
    pub counters: DecodeCounters,
}

const ETH_IPV4: u16 = 0x0800;
const ETH_IPV6: u16 = 0x86dd;
const ETH_ARP: u16 = 0x0806;
const ETH_VLAN: u16 = 0x8100;
const ETH_QINQ: u16 = 0x88a8;
const ETH_QINQ_OLD: u16 = 0x9100;
const MAX_VLAN_TAGS: usize = 8;

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

fn mac_at(b: &[u8], at: usize) -> Option<Mac> {
    b.get(at..at + 6)?.try_into().ok()
}

/// Where a link layer leads.
struct Link<'a> {
    ether_type: u16,
    payload: &'a [u8],
    src_mac: Option<Mac>,
    dst_mac: Option<Mac>,
    vlan: Vlans,
}

impl Decoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Decodes one frame.
    pub fn decode(&mut self, frame: &RawFrame<'_>) -> Decoded {
        self.counters.packets += 1;
        self.counters.bytes += u64::from(frame.wire_len);
        if (frame.bytes.len() as u64) < u64::from(frame.wire_len) {
            self.counters.snapped += 1;
        }
        let link = match self.link(frame.link, frame.bytes) {
            Ok(l) => l,
            Err(d) => return d,
        };
        if link.vlan.count > 0 {
            self.counters.vlan += 1;
        }
        let mut d = self.l3(frame, link, 0);
        if let Decoded::Packet(p) = &mut d {
            // Count transports once, on the (possibly inner) packet that is handed on.
            match p.net {
                Net::Ip { src, l4, .. } => {
                    if src.is_ipv4() {
                        self.counters.ipv4 += 1;
                    } else {
                        self.counters.ipv6 += 1;
                    }
                    match l4 {
                        Transport::Tcp { .. } => self.counters.tcp += 1,
                        Transport::Udp { .. } => self.counters.udp += 1,
                        Transport::Icmp { .. } => self.counters.icmp += 1,
                        Transport::Other(_) => self.counters.other_ip_proto += 1,
                    }
                }
                Net::Arp(_) => self.counters.arp += 1,
            }
        }
        d
    }

    fn link<'a>(&mut self, link: u32, b: &'a [u8]) -> Result<Link<'a>, Decoded> {
        let plain = |ether_type, payload| Link {
            ether_type,
            payload,
            src_mac: None,
            dst_mac: None,
            vlan: Vlans::default(),
        };
        match link {
            linktype::ETHERNET => self.ethernet(b),
            linktype::LINUX_SLL => {
                // packet type(2) hatype(2) halen(2) addr(8) protocol(2)
                let (Some(proto), Some(payload)) = (be16(b, 14), b.get(16..)) else {
                    return Err(self.counters.skip(SkipReason::TruncatedLink));
                };
                let halen = be16(b, 4).unwrap_or(0);
                let mut l = self.after_ethertype(proto, payload)?;
                if halen == 6 {
                    l.src_mac = mac_at(b, 6);
                }
                Ok(l)
            }
            linktype::LINUX_SLL2 => {
                // protocol(2) reserved(2) ifindex(4) hatype(2) pkttype(1) halen(1) addr(8)
                let (Some(proto), Some(payload)) = (be16(b, 0), b.get(20..)) else {
                    return Err(self.counters.skip(SkipReason::TruncatedLink));
                };
                let halen = b.get(11).copied().unwrap_or(0);
                let mut l = self.after_ethertype(proto, payload)?;
                if halen == 6 {
                    l.src_mac = mac_at(b, 12);
                }
                Ok(l)
            }
            linktype::NULL | linktype::LOOP => {
                let Some(hdr) = b.get(..4) else {
                    return Err(self.counters.skip(SkipReason::TruncatedLink));
                };
                // The address family is in the capturing host's byte order (NULL) or network
                // order (LOOP): accept both.
                let le = u32::from_le_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]);
                let be = u32::from_be_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]);
                let af = if le < 256 { le } else { be };
                let et = match af {
                    2 => ETH_IPV4,
                    10 | 24 | 28 | 30 => ETH_IPV6,
                    _ => return Err(self.counters.skip(SkipReason::UnsupportedEtherType)),
                };
                Ok(plain(et, &b[4..]))
            }
            linktype::RAW
            | linktype::RAW_OLD
            | linktype::RAW_OLD2
            | linktype::IPV4
            | linktype::IPV6 => match b.first().map(|v| v >> 4) {
                Some(4) => Ok(plain(ETH_IPV4, b)),
                Some(6) => Ok(plain(ETH_IPV6, b)),
                Some(_) => Err(self.counters.skip(SkipReason::BadIpHeader)),
                None => Err(self.counters.skip(SkipReason::TruncatedIp)),
            },
            linktype::NFLOG => {
                // family(1) version(1) resource id(2), then TLVs: length(2, host order) type(2).
                let Some(&family) = b.first() else {
                    return Err(self.counters.skip(SkipReason::TruncatedLink));
                };
                let mut at = 4;
                while let Some(hdr) = b.get(at..at + 4) {
                    let len = usize::from(u16::from_le_bytes([hdr[0], hdr[1]]));
                    let ty = u16::from_le_bytes([hdr[2], hdr[3]]);
                    if len < 4 {
                        break;
                    }
                    if ty == 9 {
                        // NFULA_PAYLOAD
                        let Some(payload) = b.get(at + 4..(at + len).min(b.len())) else {
                            break;
                        };
                        let et = if family == 10 { ETH_IPV6 } else { ETH_IPV4 };
                        return Ok(plain(et, payload));
                    }
                    at += len.div_ceil(4) * 4;
                }
                Err(self.counters.skip(SkipReason::TruncatedLink))
            }
            other => Err(self.counters.unsupported_link(other)),
        }
    }

    fn ethernet<'a>(&mut self, b: &'a [u8]) -> Result<Link<'a>, Decoded> {
        let (Some(dst), Some(src), Some(et)) = (mac_at(b, 0), mac_at(b, 6), be16(b, 12)) else {
            return Err(self.counters.skip(SkipReason::TruncatedLink));
        };
        let mut l = self.after_ethertype(et, b.get(14..).unwrap_or(&[]))?;
        l.src_mac = Some(src);
        l.dst_mac = Some(dst);
        Ok(l)
    }

    /// Walks VLAN tags after an EtherType.
    fn after_ethertype<'a>(&mut self, mut et: u16, mut p: &'a [u8]) -> Result<Link<'a>, Decoded> {
        let mut vlan = Vlans::default();
        let mut tags = 0;
        while matches!(et, ETH_VLAN | ETH_QINQ | ETH_QINQ_OLD) {
            let (Some(tci), Some(next)) = (be16(p, 0), be16(p, 2)) else {
                return Err(self.counters.skip(SkipReason::TruncatedLink));
            };
            tags += 1;
            if tags > MAX_VLAN_TAGS {
                return Err(self.counters.skip(SkipReason::UnsupportedEtherType));
            }
            vlan.push(tci & 0x0fff);
            et = next;
            p = &p[4..];
        }
        Ok(Link {
            ether_type: et,
            payload: p,
            src_mac: None,
            dst_mac: None,
            vlan,
        })
    }

    fn l3(&mut self, frame: &RawFrame<'_>, link: Link<'_>, depth: u8) -> Decoded {
        match link.ether_type {
            ETH_ARP => self.arp(frame, &link),
            ETH_IPV4 | ETH_IPV6 => self.ip(frame, &link, depth),
            _ => self.counters.skip(SkipReason::UnsupportedEtherType),
        }
    }

    /// The summary of a frame whose link layer is `link`, with its network part: built once,
    /// where it is returned.
    fn summary(frame: &RawFrame<'_>, link: &Link<'_>, net: Net) -> PacketSummary {
        PacketSummary {
            ts: frame.ts,
            wire_len: frame.wire_len,
            src_mac: link.src_mac,
            dst_mac: link.dst_mac,
            vlan: link.vlan,
            vni: None,
            net,
            payload_off: 0,
            payload_len: 0,
            payload_wire_len: 0,
        }
    }

    fn arp(&mut self, frame: &RawFrame<'_>, link: &Link<'_>) -> Decoded {
        let b = link.payload;
        // htype(2) ptype(2) hlen(1) plen(1) op(2) sha(6) spa(4) tha(6) tpa(4)
        let Some(h) = b.get(..28) else {
            return self.counters.skip(SkipReason::TruncatedArp);
        };
        if be16(h, 0) != Some(1) || be16(h, 2) != Some(ETH_IPV4) || h[4] != 6 || h[5] != 4 {
            return self.counters.skip(SkipReason::UnsupportedArp);
        }
        let ip = |at: usize| Ipv4Addr::new(h[at], h[at + 1], h[at + 2], h[at + 3]);
        let net = Net::Arp(ArpInfo {
            op: be16(h, 6).unwrap_or(0),
            sender_mac: mac_at(h, 8).unwrap_or([0; 6]),
            sender_ip: ip(14),
            target_mac: mac_at(h, 18).unwrap_or([0; 6]),
            target_ip: ip(24),
        });
        Decoded::Packet(Self::summary(frame, link, net))
    }

    fn ip(&mut self, frame: &RawFrame<'_>, link: &Link<'_>, depth: u8) -> Decoded {
        let b = link.payload;
        // The IP layer, then the transport header as etherparse's lax slicer reads it (nothing
        // after an extension-header error or in a fragment), without building the whole sliced
        // packet for every frame.
        let (ip, ext_err) = match LaxIpSlice::from_slice(b) {
            Ok(ip) => ip,
            Err(e) => {
                use etherparse::err::ip::LaxHeaderSliceError as E;
                return match e {
                    E::Len(_) => self.counters.skip(SkipReason::TruncatedIp),
                    E::Content(_) => self.counters.skip(SkipReason::BadIpHeader),
                };
            }
        };
        let (src, dst, ttl, payload) = match &ip {
            LaxIpSlice::Ipv4(v4) => {
                let h = v4.header();
                (
                    IpAddr::V4(h.source_addr()),
                    IpAddr::V4(h.destination_addr()),
                    h.ttl(),
                    v4.payload(),
                )
            }
            LaxIpSlice::Ipv6(v6) => {
                let h = v6.header();
                (
                    IpAddr::V6(h.source_addr()),
                    IpAddr::V6(h.destination_addr()),
                    h.hop_limit(),
                    v6.payload(),
                )
            }
        };
        let ip_payload_wire_len = if payload.incomplete {
            // Length from the IP header where it is known.
            match &ip {
                LaxIpSlice::Ipv4(v4) => {
                    let h = v4.header();
                    u32::from(h.total_len()).saturating_sub(u32::from(h.ihl()) * 4)
                }
                LaxIpSlice::Ipv6(v6) => {
                    let ext_len = v6.extensions().slice().len() as u32;
                    u32::from(v6.header().payload_length()).saturating_sub(ext_len)
                }
            }
        } else {
            payload.payload.len() as u32
        };
        let proto = payload.ip_number.0;
        let mut transport = if ext_err.is_some() || payload.fragmented {
            None
        } else {
            slice_transport(proto, payload.payload, true)
        };
        if payload.fragmented {
            let first = match &ip {
                LaxIpSlice::Ipv4(v4) => v4.header().fragments_offset().value() == 0,
                LaxIpSlice::Ipv6(v6) => {
                    ipv6_first_fragment(v6.header().next_header().0, v6.extensions().slice())
                }
            };
            if !first {
                return self.counters.skip(SkipReason::NonFirstFragment);
            }
            self.counters.first_fragments += 1;
            // The slicer stops at fragmented payloads: read the first fragment's L4 header.
            transport = slice_transport(proto, payload.payload, false);
        }
        let frame_start = frame.bytes.as_ptr() as usize;
        let off_of = |s: &[u8]| (s.as_ptr() as usize).saturating_sub(frame_start) as u32;
        let (l4, pl, hdr_len) = match &transport {
            Some(TransportSlice::Tcp(t)) => (
                Transport::Tcp {
                    sport: t.source_port(),
                    dport: t.destination_port(),
                    flags: TcpFlags(t.header_slice().get(13).copied().unwrap_or(0)),
                    seq: t.sequence_number(),
                    ack: t.acknowledgment_number(),
                    win: t.window_size(),
                },
                t.payload(),
                t.header_len() as u32,
            ),
            Some(TransportSlice::Udp(u)) => (
                Transport::Udp {
                    sport: u.source_port(),
                    dport: u.destination_port(),
                },
                u.payload(),
                8,
            ),
            Some(TransportSlice::Icmpv4(i)) => (
                Transport::Icmp {
                    v6: false,
                    ty: i.type_u8(),
                    code: i.code_u8(),
                },
                i.payload(),
                8,
            ),
            Some(TransportSlice::Icmpv6(i)) => (
                Transport::Icmp {
                    v6: true,
                    ty: i.type_u8(),
                    code: i.code_u8(),
                },
                i.payload(),
                8,
            ),
            None if proto == 6 && payload.payload.len() >= 20 => {
                // TCP options cut by the snap length: the fixed header is still usable.
                let h = payload.payload;
                (
                    Transport::Tcp {
                        sport: be16(h, 0).unwrap_or(0),
                        dport: be16(h, 2).unwrap_or(0),
                        flags: TcpFlags(h[13]),
                        seq: be32(h, 4).unwrap_or(0),
                        ack: be32(h, 8).unwrap_or(0),
                        win: be16(h, 14).unwrap_or(0),
                    },
                    &h[h.len()..],
                    u32::from(h[12] >> 4) * 4,
                )
            }
            _ => {
                if matches!(proto, 6 | 17 | 1 | 58) && !payload.fragmented {
                    return self.counters.skip(SkipReason::TruncatedTransport);
                }
                if matches!(proto, 6 | 17) {
                    // First fragment too short for its transport header.
                    return self.counters.skip(SkipReason::TruncatedTransport);
                }
                (Transport::Other(proto), payload.payload, 0)
            }
        };
        // VXLAN: decode the inner Ethernet frame instead.
        if let Transport::Udp {
            dport: VXLAN_PORT, ..
        } = l4
        {
            if pl.len() >= 8 + 14 && pl[0] & 0x08 != 0 {
                if depth >= 1 {
                    return self.counters.skip(SkipReason::TunnelTooDeep);
                }
                let vni = u32::from_be_bytes([0, pl[4], pl[5], pl[6]]);
                self.counters.vxlan += 1;
                let inner = match self.ethernet(&pl[8..]) {
                    Ok(l) => l,
                    Err(d) => return d,
                };
                let mut d = self.l3(frame, inner, depth + 1);
                if let Decoded::Packet(ip) = &mut d {
                    ip.vni = Some(vni);
                }
                return d;
            }
        }
        Decoded::Packet(PacketSummary {
            payload_off: off_of(pl),
            payload_len: pl.len() as u32,
            payload_wire_len: ip_payload_wire_len
                .saturating_sub(hdr_len)
                .max(pl.len() as u32),
            ..Self::summary(frame, link, Net::Ip { src, dst, ttl, l4 })
        })
    }
}

/// The transport header at the start of an IP payload of protocol `proto`, as etherparse's lax
/// slicer reads it (TCP, UDP read laxly, and with `icmp` ICMP and ICMPv6); IGMP and the rest are
/// not read (`Transport::Other`).
fn slice_transport(proto: u8, b: &[u8], icmp: bool) -> Option<TransportSlice<'_>> {
    match proto {
        6 => etherparse::TcpSlice::from_slice(b)
            .ok()
            .map(TransportSlice::Tcp),
        17 => etherparse::UdpSlice::from_slice_lax(b)
            .ok()
            .map(TransportSlice::Udp),
        1 if icmp => etherparse::Icmpv4Slice::from_slice(b)
            .ok()
            .map(TransportSlice::Icmpv4),
        58 if icmp => etherparse::Icmpv6Slice::from_slice(b)
            .ok()
            .map(TransportSlice::Icmpv6),
        _ => None,
    }
}

/// False when the IPv6 extension headers hold a fragment header with a non-zero offset. Walks
/// the raw bytes with bounds checks: etherparse's extension iterator trusts the slice a lax
/// parse returns and reads past its end when the chain is cut (found by the `capture_pcap`
/// fuzz target: a heap-buffer-overflow read in `Ipv6RawExtHeaderSlice::from_slice_unchecked`).
fn ipv6_first_fragment(first_next: u8, mut ext: &[u8]) -> bool {
    let mut next = first_next;
    loop {
        let len = match next {
            // Hop-by-hop, routing, destination options: 8-byte units after the first 8.
            0 | 43 | 60 => match ext.get(1) {
                Some(&l) => (usize::from(l) + 1) * 8,
                None => return true,
            },
            // Fragment: fixed 8 bytes, offset in the upper 13 bits of bytes 2..4.
            44 => {
                let Some(&[_, _, hi, lo]) = ext.get(..4).and_then(|b| <&[u8; 4]>::try_from(b).ok())
                else {
                    return true;
                };
                if u16::from_be_bytes([hi, lo]) >> 3 != 0 {
                    return false;
                }
                8
            }
            // Authentication header: 4-byte units after the first 8.
            51 => match ext.get(1) {
                Some(&l) => (usize::from(l) + 2) * 4,
                None => return true,
            },
            _ => return true,
        };
        let Some(&nh) = ext.first() else {
            return true;
        };
        let Some(rest) = ext.get(len..) else {
            return true;
        };
        next = nh;
        ext = rest;
    }
}

/// The payload bytes of a decoded packet inside its frame.
pub fn payload<'a>(frame: &RawFrame<'a>, p: &PacketSummary) -> &'a [u8] {
    let start = p.payload_off as usize;
    frame
        .bytes
        .get(start..start.saturating_add(p.payload_len as usize))
        .unwrap_or(&[])
}

/// A cheap, symmetric hash of a frame's flow (addresses, ports, protocol, read at fixed offsets
/// without a full decode), so a reader can shard frames over workers: both directions of a flow
/// get the same value. Frames it cannot read this way (ARP, unknown link types) hash to 0.
pub fn shard_hash(link: u32, b: &[u8]) -> u64 {
    let ip = match link {
        linktype::ETHERNET => {
            let (Some(mut et), mut at) = (be16(b, 12), 14) else {
                return 0;
            };
            let mut tags = 0;
            while matches!(et, ETH_VLAN | ETH_QINQ | ETH_QINQ_OLD) && tags < MAX_VLAN_TAGS {
                let Some(next) = be16(b, at + 2) else {
                    return 0;
                };
                et = next;
                at += 4;
                tags += 1;
            }
            if !matches!(et, ETH_IPV4 | ETH_IPV6) {
                return 0;
            }
            b.get(at..)
        }
        linktype::LINUX_SLL => b.get(16..),
        linktype::LINUX_SLL2 => b.get(20..),
        linktype::NULL | linktype::LOOP => b.get(4..),
        linktype::RAW
        | linktype::RAW_OLD
        | linktype::RAW_OLD2
        | linktype::IPV4
        | linktype::IPV6 => Some(b),
        _ => None,
    };
    let Some(ip) = ip else { return 0 };
    // Each end as one integer (address, then port), read with whole-word loads; the two ends
    // are put in order, so both directions give the same pair.
    let (a, z, proto) = match ip.first().copied() {
        Some(v) if v >> 4 == 4 => {
            let (Some(s), Some(d), Some(&p)) = (be32(ip, 12), be32(ip, 16), ip.get(9)) else {
                return 0;
            };
            let ihl = usize::from(v & 0x0f) * 4;
            // Non-first fragments carry no ports.
            let first = be16(ip, 6).unwrap_or(0) & 0x1fff == 0;
            let ports = match p {
                6 | 17 if first => be32(ip, ihl).unwrap_or(0),
                _ => 0,
            };
            (
                u64::from(s) << 16 | u64::from(ports >> 16),
                u64::from(d) << 16 | u64::from(ports & 0xffff),
                p,
            )
        }
        Some(v) if v >> 4 == 6 => {
            let (Some(s), Some(d), Some(&p)) = (be128(ip, 8), be128(ip, 24), ip.get(6)) else {
                return 0;
            };
            let ports = match p {
                6 | 17 => be32(ip, 40).unwrap_or(0),
                _ => 0,
            };
            // 128 bits folded to 64 (a hash needs no more), the port in the low bits.
            let fold = |x: u128, port: u32| (x as u64 ^ mix64((x >> 64) as u64)) ^ u64::from(port);
            (fold(s, ports >> 16), fold(d, ports & 0xffff), p)
        }
        _ => return 0,
    };
    let (lo, hi) = if a <= z { (a, z) } else { (z, a) };
    mix64(lo.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ hi ^ u64::from(proto) << 56) | 1
}

/// Which of `n` workers a [`shard_hash`] goes to: the hash scaled to `0..n` by a multiply (a
/// division costs several times more at a frame's rate), so its high bits choose.
pub fn shard_of(hash: u64, n: usize) -> usize {
    ((u128::from(hash) * n as u128) >> 64) as usize
}

/// A 64-bit finalizer (MurmurHash3's fmix64): every input bit moves every output bit.
fn mix64(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^ x >> 33
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(
        b.get(at..at.checked_add(4)?)?.try_into().ok()?,
    ))
}

fn be128(b: &[u8], at: usize) -> Option<u128> {
    Some(u128::from_be_bytes(
        b.get(at..at.checked_add(16)?)?.try_into().ok()?,
    ))
}

#[cfg(test)]
mod shard_tests {
    use super::*;

    #[test]
    fn both_directions_shard_alike() {
        // Ethernet + IPv4 + TCP 198.18.1.10:40000 -> 198.18.1.2:1883 and back.
        let mut f = vec![0u8; 14 + 20 + 20];
        f[12] = 0x08;
        f[14] = 0x45;
        f[14 + 9] = 6;
        f[14 + 12..14 + 16].copy_from_slice(&[198, 18, 1, 10]);
        f[14 + 16..14 + 20].copy_from_slice(&[198, 18, 1, 2]);
        f[34..36].copy_from_slice(&40000u16.to_be_bytes());
        f[36..38].copy_from_slice(&1883u16.to_be_bytes());
        let mut r = f.clone();
        r[14 + 12..14 + 16].copy_from_slice(&[198, 18, 1, 2]);
        r[14 + 16..14 + 20].copy_from_slice(&[198, 18, 1, 10]);
        r[34..36].copy_from_slice(&1883u16.to_be_bytes());
        r[36..38].copy_from_slice(&40000u16.to_be_bytes());
        let h = shard_hash(linktype::ETHERNET, &f);
        assert_ne!(h, 0);
        assert_eq!(h, shard_hash(linktype::ETHERNET, &r));
        assert_eq!(shard_hash(linktype::ETHERNET, &f[..20]), 0);
    }

    /// An IPv6/UDP frame from `a`:`sp` to `z`:`dp` (Ethernet).
    fn v6_udp(a: u8, sp: u16, z: u8, dp: u16) -> Vec<u8> {
        let mut f = vec![0u8; 14 + 40 + 8];
        f[12..14].copy_from_slice(&[0x86, 0xdd]);
        f[14] = 0x60;
        f[14 + 6] = 17;
        f[14 + 8] = 0xfd;
        f[14 + 23] = a;
        f[14 + 24] = 0xfd;
        f[14 + 39] = z;
        f[54..56].copy_from_slice(&sp.to_be_bytes());
        f[56..58].copy_from_slice(&dp.to_be_bytes());
        f
    }

    #[test]
    fn ipv6_flows_shard_alike_both_ways_and_spread_over_workers() {
        let h = shard_hash(linktype::ETHERNET, &v6_udp(1, 5683, 2, 40000));
        assert_ne!(h, 0);
        assert_eq!(
            h,
            shard_hash(linktype::ETHERNET, &v6_udp(2, 40000, 1, 5683))
        );
        // Another port or host is another flow.
        assert_ne!(
            h,
            shard_hash(linktype::ETHERNET, &v6_udp(1, 5683, 2, 40001))
        );
        assert_ne!(
            h,
            shard_hash(linktype::ETHERNET, &v6_udp(1, 5683, 3, 40000))
        );
        // 4,000 flows that differ only in the client port spread evenly over 2 and 3 workers.
        for n in [2usize, 3] {
            let mut per = vec![0usize; n];
            for p in 0..4000u16 {
                let w = shard_of(
                    shard_hash(linktype::ETHERNET, &v6_udp(1, 30000 + p, 2, 1883)),
                    n,
                );
                per[w] += 1;
            }
            let even = 4000 / n;
            assert!(per.iter().all(|&c| c.abs_diff(even) < even / 10), "{per:?}");
        }
        assert_eq!(shard_of(0, 2), 0);
        assert_eq!(shard_of(u64::MAX, 2), 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_extension_chains_are_read_within_bounds() {
        // Nothing, or a chain cut anywhere: taken as a first fragment, never read past the end.
        assert!(ipv6_first_fragment(44, &[]));
        assert!(ipv6_first_fragment(44, &[6, 0, 0]));
        assert!(ipv6_first_fragment(0, &[44]));
        assert!(ipv6_first_fragment(0, &[44, 255, 0, 0, 0, 0, 0, 0]));
        // Fragment headers: offset 0 is the first fragment, any other offset is not.
        assert!(ipv6_first_fragment(44, &[6, 0, 0x00, 0x01, 0, 0, 0, 1]));
        assert!(!ipv6_first_fragment(44, &[6, 0, 0x00, 0x08, 0, 0, 0, 1]));
        // Behind a hop-by-hop header.
        let mut chain = vec![44, 0, 1, 4, 0, 0, 0, 0];
        chain.extend_from_slice(&[17, 0, 0x05, 0xa8, 0, 0, 0, 9]);
        assert!(!ipv6_first_fragment(0, &chain));
        // Authentication header (4-byte units).
        let mut chain = vec![44, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        chain.extend_from_slice(&[6, 0, 0x00, 0x10, 0, 0, 0, 9]);
        assert!(!ipv6_first_fragment(51, &chain));
    }

    #[test]
    fn fuzz_found_ipv6_frame_with_a_cut_extension_chain() {
        // BSD loopback, AF_INET6 (30), fragment header chain cut short (tests/fuzz/regressions).
        let hex = "1e00000060322d6374722c617263666f75723235365d617263666f75723132382c6165733132382d636263332c640003005829010000000000580000001e00000000fb00ce0bf860e37a03626c6f77666b73a10200041500";
        let bytes: Vec<u8> = (0..hex.len() / 2)
            .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap_or(0))
            .collect();
        let frame = RawFrame {
            ts: crate::time::Timestamp::ZERO,
            wire_len: bytes.len() as u32,
            link: crate::capture::linktype::NULL,
            bytes: &bytes,
        };
        let mut d = Decoder::new();
        let _ = d.decode(&frame);
        assert_eq!(d.counters.packets + d.counters.skipped_total(), 1);
    }
}
