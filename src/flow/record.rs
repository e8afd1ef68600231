//! What the flow stage hands on: flow metadata, per-direction counters and the final record.

use super::key::{Direction, Endpoint, FlowId};
use super::tcp::TcpState;
use crate::decode::{Mac, Vlans};
use crate::time::Timestamp;

/// Immutable facts about a flow, fixed when it starts. `Copy`, so every event can carry it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowMeta {
    pub id: FlowId,
    /// The side that sent the first packet (for TCP: the SYN, when it was seen).
    pub initiator: Endpoint,
    pub responder: Endpoint,
    pub proto: u8,
    pub vlan: Vlans,
    pub vni: Option<u32>,
    pub first: Timestamp,
    /// MAC addresses of the initiator and responder as seen in the first packet.
    pub initiator_mac: Option<Mac>,
    pub responder_mac: Option<Mac>,
    /// Which ends can be devices ([`crate::settings::device_address`] of the flow table's home
    /// networks): [`FlowMeta::LOCAL_INITIATOR`], [`FlowMeta::LOCAL_RESPONDER`]. Worked out once
    /// per flow by its worker, so the device stage need not ask for every event.
    pub local: u8,
}

impl FlowMeta {
    pub const LOCAL_INITIATOR: u8 = 1;
    pub const LOCAL_RESPONDER: u8 = 2;

    /// [`FlowMeta::local`] of a flow whose initiator and responder can be devices or not.
    pub fn local_bits(initiator: bool, responder: bool) -> u8 {
        (if initiator { Self::LOCAL_INITIATOR } else { 0 })
            | (if responder { Self::LOCAL_RESPONDER } else { 0 })
    }

    /// The same flow with initiator and responder exchanged.
    pub fn swapped(&self) -> FlowMeta {
        FlowMeta {
            initiator: self.responder,
            responder: self.initiator,
            initiator_mac: self.responder_mac,
            responder_mac: self.initiator_mac,
            local: Self::local_bits(
                self.local & Self::LOCAL_RESPONDER != 0,
                self.local & Self::LOCAL_INITIATOR != 0,
            ),
            ..*self
        }
    }

    /// Source and destination of a packet going in `dir`.
    pub fn endpoints(&self, dir: Direction) -> (Endpoint, Endpoint) {
        match dir {
            Direction::Forward => (self.initiator, self.responder),
            Direction::Reverse => (self.responder, self.initiator),
        }
    }
}

/// Counters of one direction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DirStats {
    pub packets: u64,
    /// Bytes on the wire (frame length).
    pub bytes: u64,
    /// L4 payload bytes (from the IP header, so snapped frames count in full).
    pub payload_bytes: u64,
    /// OR of the TCP flags seen.
    pub tcp_flags: u8,
    pub syns: u32,
    pub rsts: u32,
}

/// Why a flow record was written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlowEnd {
    /// Both sides closed with FIN.
    Fin,
    /// Reset.
    Rst,
    /// No packet for the idle timeout.
    IdleTimeout,
    /// The flow lasted longer than the active timeout: this record covers a slice of it and the
    /// flow goes on under the same id.
    ActiveTimeout,
    /// The table was full and this flow was the eviction victim.
    Evicted,
    /// End of input (or shutdown).
    Shutdown,
}

impl FlowEnd {
    /// EVE's `flow.reason`.
    pub fn as_str(self) -> &'static str {
        match self {
            FlowEnd::Fin | FlowEnd::Rst => "closed",
            FlowEnd::IdleTimeout => "timeout",
            FlowEnd::ActiveTimeout => "active_timeout",
            FlowEnd::Evicted => "evicted",
            FlowEnd::Shutdown => "shutdown",
        }
    }
}

/// A flow's record at its end (or at an active-timeout slice).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowRecord {
    pub meta: FlowMeta,
    /// Start of this record (the flow's first packet, or the previous active-timeout slice).
    pub start: Timestamp,
    pub last: Timestamp,
    pub fwd: DirStats,
    pub rev: DirStats,
    pub tcp: TcpState,
    pub end: FlowEnd,
    /// Application protocol named by the stream handler (`"unknown"` if none).
    pub app: &'static str,
    /// Reassembly gaps (bytes never seen) in each direction.
    pub gaps: [u64; 2],
    /// The responder answered the initiator's SYN.
    pub synack_seen: bool,
    /// Inspection of the flow's stream stopped at the stream memcap (its buffers were shed).
    pub memcap_shed: bool,
}

impl FlowRecord {
    pub fn dir(&self, d: Direction) -> &DirStats {
        match d {
            Direction::Forward => &self.fwd,
            Direction::Reverse => &self.rev,
        }
    }
    /// A TCP connection attempt that never got an answer or was refused: the initiator's SYN
    /// got no SYN-ACK, or the responder reset it.
    pub fn failed_attempt(&self) -> bool {
        self.meta.proto == 6 && self.fwd.syns > 0 && !self.synack_seen
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn swapping_ends_swaps_which_can_be_devices() {
        let e = |ip: &str, port| Endpoint {
            ip: ip.parse().unwrap(),
            port,
        };
        let m = FlowMeta {
            id: FlowId(1),
            initiator: e("198.18.1.7", 40000),
            responder: e("203.0.113.5", 443),
            proto: 6,
            vlan: Vlans::default(),
            vni: None,
            first: Timestamp::ZERO,
            initiator_mac: Some([2, 0, 0, 0, 0, 1]),
            responder_mac: None,
            local: FlowMeta::local_bits(true, false),
        };
        let s = m.swapped();
        assert_eq!(s.local, FlowMeta::LOCAL_RESPONDER);
        assert_eq!(s.responder_mac, m.initiator_mac);
        assert_eq!(s.swapped(), m);
    }
}
