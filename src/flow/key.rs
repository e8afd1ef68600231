//! Flow identity: endpoints, the canonical bidirectional key, direction and flow id.

use std::hash::{BuildHasher, Hash};
use std::net::IpAddr;

use crate::decode::Vlans;

/// One side of a flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Endpoint {
    pub ip: IpAddr,
    pub port: u16,
}

/// Canonical bidirectional flow key: both directions of a conversation map to the same key
/// (`lo <= hi`). VLAN ids and the VXLAN VNI keep overlapping address spaces apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowKey {
    pub lo: Endpoint,
    pub hi: Endpoint,
    pub proto: u8,
    pub vlan: Vlans,
    pub vni: u32,
}

/// Direction of a packet relative to the flow's initiator.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Initiator to responder (EVE: to server).
    Forward,
    /// Responder to initiator (EVE: to client).
    Reverse,
}

impl Direction {
    pub fn index(self) -> usize {
        match self {
            Direction::Forward => 0,
            Direction::Reverse => 1,
        }
    }
    pub fn flip(self) -> Direction {
        match self {
            Direction::Forward => Direction::Reverse,
            Direction::Reverse => Direction::Forward,
        }
    }
}

/// Flow identifier as written in `flow_id`: stable for a given key and start time, whatever the
/// worker count, and below 2^51 so JSON consumers that use doubles keep it exact.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowId(pub u64);

/// A fixed-seed hasher for values that must be the same on every run (flow ids, sharding).
fn stable_hash<T: Hash>(v: &T) -> u64 {
    foldhash::fast::FixedState::with_seed(0x7461_7077_6174_6368).hash_one(v)
}

impl FlowKey {
    /// Builds the canonical key of a packet; `true` when the packet goes from `lo` to `hi`.
    pub fn new(
        src: Endpoint,
        dst: Endpoint,
        proto: u8,
        vlan: Vlans,
        vni: Option<u32>,
    ) -> (FlowKey, bool) {
        let fwd = src <= dst;
        let (lo, hi) = if fwd { (src, dst) } else { (dst, src) };
        (
            FlowKey {
                lo,
                hi,
                proto,
                vlan,
                vni: vni.unwrap_or(0),
            },
            fwd,
        )
    }

    /// Symmetric hash used to shard flows over workers.
    pub fn shard_hash(&self) -> u64 {
        stable_hash(self)
    }

    pub fn flow_id(&self, first_ns: u64) -> FlowId {
        FlowId(stable_hash(&(self, first_ns)) & ((1 << 51) - 1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_directions_share_a_key() {
        let a = Endpoint {
            ip: "198.18.1.10".parse().unwrap(),
            port: 40000,
        };
        let b = Endpoint {
            ip: "198.18.1.2".parse().unwrap(),
            port: 1883,
        };
        let (k1, f1) = FlowKey::new(a, b, 6, Vlans::default(), None);
        let (k2, f2) = FlowKey::new(b, a, 6, Vlans::default(), None);
        assert_eq!(k1, k2);
        assert_ne!(f1, f2);
        assert_eq!(k1.shard_hash(), k2.shard_hash());
        assert!(k1.flow_id(5).0 < (1 << 51));
        assert_eq!(k1.flow_id(5), k2.flow_id(5));
        assert_ne!(k1.flow_id(5), k1.flow_id(6));
    }
}
