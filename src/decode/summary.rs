//! The owned output of the decode stage: a fixed-size, `Copy` summary of one packet.

use crate::time::Timestamp;
use std::net::{IpAddr, Ipv4Addr};

pub type Mac = [u8; 6];

/// Formats a MAC address as `aa:bb:cc:dd:ee:ff`.
pub fn fmt_mac(m: &Mac) -> String {
    MacText(*m).to_string()
}

/// A byte as two lower-case hex digits.
pub fn hex_byte(v: u8) -> [u8; 2] {
    const D: &[u8; 16] = b"0123456789abcdef";
    [D[usize::from(v >> 4)], D[usize::from(v & 15)]]
}

/// Display adapter writing a MAC address as `aa:bb:cc:dd:ee:ff` without allocating.
pub struct MacText(pub Mac);

impl std::fmt::Display for MacText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut b = *b"00:00:00:00:00:00";
        for (i, v) in self.0.iter().enumerate() {
            b[3 * i..3 * i + 2].copy_from_slice(&hex_byte(*v));
        }
        f.write_str(std::str::from_utf8(&b).map_err(|_| std::fmt::Error)?)
    }
}

/// An IPv4 address as dotted decimal, written by hand into `buf` (std's `Display` for addresses
/// is slow, and the flow log writes several per line).
pub fn ipv4_text(a: std::net::Ipv4Addr, buf: &mut [u8; 15]) -> &str {
    let mut n = 0;
    for (i, o) in a.octets().into_iter().enumerate() {
        if i > 0 {
            buf[n] = b'.';
            n += 1;
        }
        if o >= 100 {
            buf[n] = b'0' + o / 100;
            n += 1;
        }
        if o >= 10 {
            buf[n] = b'0' + o / 10 % 10;
            n += 1;
        }
        buf[n] = b'0' + o % 10;
        n += 1;
    }
    std::str::from_utf8(&buf[..n]).unwrap_or_default()
}

/// Display adapter writing an IP address: IPv4 by hand ([`ipv4_text`]), IPv6 in std's
/// canonical form (RFC 5952).
pub struct IpText(pub std::net::IpAddr);

impl std::fmt::Display for IpText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            std::net::IpAddr::V4(a) => f.write_str(ipv4_text(a, &mut [0; 15])),
            std::net::IpAddr::V6(a) => std::fmt::Display::fmt(&a, f),
        }
    }
}

/// As a JSON string: IPv4 straight into the output, without the formatting machinery.
impl serde::Serialize for IpText {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            std::net::IpAddr::V4(a) => s.serialize_str(ipv4_text(a, &mut [0; 15])),
            std::net::IpAddr::V6(a) => s.collect_str(&a),
        }
    }
}

/// Up to two VLAN ids (outermost first), as EVE's `vlan` array.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Vlans {
    pub ids: [u16; 2],
    pub count: u8,
}

impl Vlans {
    pub fn push(&mut self, id: u16) {
        if let Some(slot) = self.ids.get_mut(usize::from(self.count)) {
            *slot = id;
            self.count += 1;
        }
    }
    pub fn as_slice(&self) -> &[u16] {
        &self.ids[..usize::from(self.count.min(2))]
    }
}

/// TCP flags as on the wire (FIN=0x01 ... CWR=0x80).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct TcpFlags(pub u8);

impl TcpFlags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
    pub const URG: u8 = 0x20;
    pub const ECE: u8 = 0x40;
    pub const CWR: u8 = 0x80;
    pub fn has(self, f: u8) -> bool {
        self.0 & f != 0
    }
    pub fn syn(self) -> bool {
        self.has(Self::SYN)
    }
    pub fn ack(self) -> bool {
        self.has(Self::ACK)
    }
    pub fn fin(self) -> bool {
        self.has(Self::FIN)
    }
    pub fn rst(self) -> bool {
        self.has(Self::RST)
    }
}

/// Layer 4 of a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Tcp {
        sport: u16,
        dport: u16,
        flags: TcpFlags,
        seq: u32,
        ack: u32,
        win: u16,
    },
    Udp {
        sport: u16,
        dport: u16,
    },
    Icmp {
        v6: bool,
        ty: u8,
        code: u8,
    },
    /// Another IP protocol (its number), or a transport whose header was not parsed.
    Other(u8),
}

impl Transport {
    pub fn ports(&self) -> (u16, u16) {
        match *self {
            Transport::Tcp { sport, dport, .. } | Transport::Udp { sport, dport } => (sport, dport),
            _ => (0, 0),
        }
    }
    /// IP protocol number.
    pub fn proto(&self) -> u8 {
        match *self {
            Transport::Tcp { .. } => 6,
            Transport::Udp { .. } => 17,
            Transport::Icmp { v6: false, .. } => 1,
            Transport::Icmp { v6: true, .. } => 58,
            Transport::Other(p) => p,
        }
    }
}

/// ARP (Ethernet/IPv4) fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArpInfo {
    pub op: u16,
    pub sender_mac: Mac,
    pub sender_ip: Ipv4Addr,
    pub target_mac: Mac,
    pub target_ip: Ipv4Addr,
}

/// Layer 3 of a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Net {
    Ip {
        src: IpAddr,
        dst: IpAddr,
        ttl: u8,
        l4: Transport,
    },
    Arp(ArpInfo),
}

/// One decoded packet. `Copy`, no heap: payload bytes stay in the frame and are located by
/// `payload_off`/`payload_len`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PacketSummary {
    pub ts: Timestamp,
    /// Frame length on the wire (bytes).
    pub wire_len: u32,
    pub src_mac: Option<Mac>,
    pub dst_mac: Option<Mac>,
    pub vlan: Vlans,
    /// VXLAN network identifier when the packet was decapsulated from VXLAN.
    pub vni: Option<u32>,
    pub net: Net,
    /// Offset of the L4 payload in the frame bytes.
    pub payload_off: u32,
    /// Captured L4 payload bytes.
    pub payload_len: u32,
    /// L4 payload length according to the IP header (>= `payload_len` when the frame was snapped).
    pub payload_wire_len: u32,
}

impl PacketSummary {
    pub fn ips(&self) -> Option<(IpAddr, IpAddr)> {
        match self.net {
            Net::Ip { src, dst, .. } => Some((src, dst)),
            Net::Arp(_) => None,
        }
    }
    pub fn transport(&self) -> Option<Transport> {
        match self.net {
            Net::Ip { l4, .. } => Some(l4),
            Net::Arp(_) => None,
        }
    }
}

/// Why a frame produced no summary. Each reason has a stable snake_case name used in `stats`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SkipReason {
    UnsupportedLinkType,
    TruncatedLink,
    UnsupportedEtherType,
    TruncatedIp,
    BadIpHeader,
    TruncatedTransport,
    NonFirstFragment,
    TruncatedArp,
    UnsupportedArp,
    TunnelTooDeep,
}

impl SkipReason {
    pub const ALL: [SkipReason; 10] = [
        SkipReason::UnsupportedLinkType,
        SkipReason::TruncatedLink,
        SkipReason::UnsupportedEtherType,
        SkipReason::TruncatedIp,
        SkipReason::BadIpHeader,
        SkipReason::TruncatedTransport,
        SkipReason::NonFirstFragment,
        SkipReason::TruncatedArp,
        SkipReason::UnsupportedArp,
        SkipReason::TunnelTooDeep,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::UnsupportedLinkType => "unsupported_link_type",
            SkipReason::TruncatedLink => "truncated_link_header",
            SkipReason::UnsupportedEtherType => "unsupported_ether_type",
            SkipReason::TruncatedIp => "truncated_ip_header",
            SkipReason::BadIpHeader => "bad_ip_header",
            SkipReason::TruncatedTransport => "truncated_transport_header",
            SkipReason::NonFirstFragment => "non_first_fragment",
            SkipReason::TruncatedArp => "truncated_arp",
            SkipReason::UnsupportedArp => "unsupported_arp",
            SkipReason::TunnelTooDeep => "tunnel_too_deep",
        }
    }
    pub fn index(self) -> usize {
        self as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_print_as_lower_case_hex_pairs() {
        assert_eq!(
            fmt_mac(&[0x00, 0x1b, 0xa0, 0xff, 0x0a, 0xf0]),
            "00:1b:a0:ff:0a:f0"
        );
        assert_eq!(MacText([0xff; 6]).to_string(), "ff:ff:ff:ff:ff:ff");
        assert_eq!(hex_byte(0x0f), *b"0f");
    }

    #[test]
    fn addresses_are_written_as_std_writes_them() {
        use std::net::{IpAddr, Ipv4Addr};
        // Every octet value in every position, and the edges.
        for v in 0..=255u8 {
            for a in [
                Ipv4Addr::new(v, 0, 9, 255),
                Ipv4Addr::new(198, v, 10, 100),
                Ipv4Addr::new(1, 99, v, 0),
                Ipv4Addr::new(255, 255, 255, v),
            ] {
                assert_eq!(ipv4_text(a, &mut [0; 15]), a.to_string());
                assert_eq!(IpText(IpAddr::V4(a)).to_string(), a.to_string());
            }
        }
        for s in [
            "fd00::1:ff",
            "::",
            "::ffff:198.18.0.1",
            "2001:db8::8a2e:370:7334",
        ] {
            let ip: IpAddr = s.parse().unwrap();
            assert_eq!(IpText(ip).to_string(), ip.to_string());
        }
    }
}
