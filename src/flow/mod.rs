//! Flow stage: a bidirectional flow table per worker, driven by packet time.
//!
//! Owns: flow records keyed by a canonical 5-tuple (plus VLAN and VNI), TCP state, per-direction
//! reassembly, and one stream handler per TCP flow (the protocol analyzers plug in here through
//! [`StreamHandler`]). Hands on: [`FlowEvent`]s — a flow started, an application event from its
//! handler, a flow record at its end.
//!
//! Bounds: at most `max_flows` flows; when full, the least recently seen flow of the cheapest
//! class is evicted (half-open TCP first, then closed TCP, then other, UDP, and established TCP
//! last), and the eviction is counted. Flows expire on idle timeouts per class (exact, because
//! each class keeps its own least-recently-seen list) and are sliced by an active timeout. At the
//! end of input, [`FlowTable::drain`] ends every flow. The stream buffers of all flows (the
//! out-of-order buffers and the handlers' own, [`StreamHandler::held`]) are held to the
//! memcap: when a flow's buffers grow past it, flows of the largest size class held are shed
//! ([`StreamHandler::shed`]) until the total is under it again, and counted; flows that pin
//! the cap with large buffers go before those that need a little once it is full.

pub mod key;
pub mod reassembly;
pub mod record;
pub mod tcp;

pub use key::{Direction, Endpoint, FlowId, FlowKey};
pub use reassembly::{ReassemblyCounters, ReassemblyLimits};
pub use record::{DirStats, FlowEnd, FlowMeta, FlowRecord};
pub use tcp::TcpState;

use crate::decode::{PacketSummary, Transport};
use crate::time::Timestamp;
use reassembly::Stream;
use std::hash::BuildHasher;

/// Receives a TCP flow's reassembled bytes (implemented by the protocol stage).
pub trait StreamHandler: Sized {
    type Event;
    /// Creates the handler of a new TCP flow, or `None` to skip payload inspection.
    fn for_flow(meta: &FlowMeta) -> Option<Self>;
    /// In-order bytes of one direction, each byte once.
    fn on_data(&mut self, dir: Direction, data: &[u8], out: &mut Vec<Self::Event>);
    /// `len` bytes of this direction will never be seen.
    fn on_gap(&mut self, dir: Direction, len: u64);
    /// The flow ended.
    fn on_close(&mut self, out: &mut Vec<Self::Event>);
    /// Name of the application protocol, for flow records.
    fn app_name(&self) -> &'static str;
    /// True when the handler needs every byte of the stream, beyond the reassembly depth.
    fn wants_whole_stream(&self) -> bool {
        false
    }
    /// True when the content showed that the initiator guessed for a flow picked up mid-stream
    /// is really the server: events and the record are then written with the roles swapped.
    fn roles_swapped(&self) -> bool {
        false
    }
    /// Bytes allocated to the handler's buffers, counted against the worker's stream memcap.
    fn held(&self) -> usize {
        0
    }
    /// The worker's stream buffers passed their memcap and this flow holds among the most: hand
    /// on what is pending (as at the flow's end), release every buffer and inspect nothing more.
    fn shed(&mut self, out: &mut Vec<Self::Event>) {
        self.on_close(out);
    }
}

/// A handler that inspects nothing (for pipelines without protocol analysis).
pub struct NoPayload;

impl StreamHandler for NoPayload {
    type Event = ();
    fn for_flow(_: &FlowMeta) -> Option<Self> {
        None
    }
    fn on_data(&mut self, _: Direction, _: &[u8], _: &mut Vec<()>) {}
    fn on_gap(&mut self, _: Direction, _: u64) {}
    fn on_close(&mut self, _: &mut Vec<()>) {}
    fn app_name(&self) -> &'static str {
        "unknown"
    }
}

/// What the flow stage hands on.
#[derive(Debug)]
pub enum FlowEvent<E> {
    Started(FlowMeta),
    /// An event of the flow's stream handler, at packet time `ts`.
    App {
        meta: FlowMeta,
        ts: Timestamp,
        dir: Direction,
        event: E,
    },
    /// Packets and bytes of a flow in one activity window (written when the window closes, and
    /// before the flow's record when it ends), so per-device windows can be built from flows.
    Activity {
        meta: FlowMeta,
        /// Start of the window.
        window: Timestamp,
        /// (packets, bytes) initiator to responder, and back.
        fwd: (u64, u64),
        rev: (u64, u64),
    },
    /// The flow's record: it ended (or an active-timeout slice of it).
    Flow(FlowRecord),
    /// A packet that belongs to no flow (ARP) or whose details flow records do not keep (ICMP
    /// types): put on the same stream by the worker, never by the flow table.
    Packet(PacketSummary),
}

/// Flow table settings (all times in seconds of packet time).
#[derive(Clone, Copy, Debug)]
pub struct FlowConfig {
    /// Maximum number of flows held, over all workers (each of N holds 1/N). Default 1,000,000.
    pub max_flows: usize,
    /// Idle timeout of established TCP flows. Default 600 s.
    pub tcp_idle_timeout: u64,
    /// Idle timeout of TCP flows with no completed handshake. Default 30 s.
    pub tcp_half_open_timeout: u64,
    /// Time a closed (FIN both ways, or RST) TCP flow lingers for late packets. Default 5 s.
    pub tcp_closed_timeout: u64,
    /// Idle timeout of UDP flows. Default 120 s.
    pub udp_idle_timeout: u64,
    /// Idle timeout of other IP flows (ICMP...). Default 60 s.
    pub other_idle_timeout: u64,
    /// A flow older than this is written out and continues under the same id. Default 1800 s.
    pub active_timeout: u64,
    /// Length of the activity windows reported per flow (seconds of packet time, aligned to
    /// multiples of it since the epoch). Default 60; 0 turns activity reports off.
    pub window_secs: u64,
    pub reassembly: ReassemblyLimits,
}

impl Default for FlowConfig {
    fn default() -> Self {
        FlowConfig {
            max_flows: 1_000_000,
            tcp_idle_timeout: 600,
            tcp_half_open_timeout: 30,
            tcp_closed_timeout: 5,
            udp_idle_timeout: 120,
            other_idle_timeout: 60,
            active_timeout: 1800,
            window_secs: 60,
            reassembly: ReassemblyLimits::default(),
        }
    }
}

/// Counters of the flow stage.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowCounters {
    pub created: u64,
    pub tcp: u64,
    pub udp: u64,
    pub other: u64,
    pub ended: u64,
    pub evicted: u64,
    pub idle_timeouts: u64,
    pub active_timeouts: u64,
    /// Largest number of flows held at once.
    pub peak_active: u64,
    pub reassembly: ReassemblyCounters,
}

impl FlowCounters {
    pub fn merge(&mut self, o: &FlowCounters) {
        self.created += o.created;
        self.tcp += o.tcp;
        self.udp += o.udp;
        self.other += o.other;
        self.ended += o.ended;
        self.evicted += o.evicted;
        self.idle_timeouts += o.idle_timeouts;
        self.active_timeouts += o.active_timeouts;
        self.peak_active += o.peak_active;
        self.reassembly.merge(&o.reassembly);
    }
}

/// Expiry classes, in eviction order (cheapest to lose first).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Class {
    HalfOpen = 0,
    Closed = 1,
    Other = 2,
    Udp = 3,
    Established = 4,
}
const CLASSES: usize = 5;
const NIL: u32 = u32::MAX;
/// Flows shed at most for one segment at the memcap.
const MAX_SHED_PER_SEGMENT: usize = 8;
/// Size classes of the flows holding stream buffers: class c holds 2^(c-1) to 2^c - 1 bytes.
const SIZE_CLASSES: usize = 33;

/// The size class of `held` bytes (1 to 32 for a flow that holds some).
fn size_class(held: u32) -> usize {
    32 - held.leading_zeros() as usize
}

struct Entry<H> {
    rec: FlowRecord,
    /// (packets, bytes) of each direction already reported in activity windows.
    reported: [(u64, u64); 2],
    fins: [bool; 2],
    synack: bool,
    class: Class,
    /// The initiator is the key's `lo` end.
    init_is_lo: bool,
    handler: Option<H>,
    streams: [Stream; 2],
    live: bool,
    /// Bytes the flow's stream buffers held after its last segment (counted in
    /// `FlowTable::held`).
    held: u32,
    /// Position in `FlowTable::holders[size_class]` while `held` > 0 (NIL otherwise).
    holder: u32,
    size_class: u8,
}

/// The flow table's key: a [`FlowKey`] hashed as five machine words (the derived `Hash` of
/// the key, which flow ids are made from, writes each field and address byte on its own).
#[derive(Clone, Copy, PartialEq, Eq)]
struct TableKey(FlowKey);

impl<H: StreamHandler> Entry<H> {
    /// Bytes the flow's stream buffers hold now: the out-of-order buffers and the handler's.
    fn buffered(&self) -> usize {
        self.streams[0].held() + self.streams[1].held() + self.handler.as_ref().map_or(0, H::held)
    }
}

impl<H> Entry<H> {
    /// The flow's canonical key, read back from its record (its `lo` end is the initiator or
    /// the responder): the index does not store keys.
    fn key(&self) -> FlowKey {
        let m = &self.rec.meta;
        let (lo, hi) = if self.init_is_lo {
            (m.initiator, m.responder)
        } else {
            (m.responder, m.initiator)
        };
        FlowKey {
            lo,
            hi,
            proto: m.proto,
            vlan: m.vlan,
            vni: m.vni.unwrap_or(0),
        }
    }
}

/// A flow's metadata as its handler's events carry it: the ends exchanged when the handler
/// found that the initiator guessed for a flow picked up mid-stream is the server.
fn event_meta(meta: &FlowMeta, swapped: bool) -> FlowMeta {
    if swapped {
        meta.swapped()
    } else {
        *meta
    }
}

/// Hands on the handler events written to `scratch` from `before` on, as the flow's
/// (`meta`) application events at `ts` in direction `dir`.
fn hand_on<E>(
    scratch: &mut Vec<E>,
    before: usize,
    meta: FlowMeta,
    ts: Timestamp,
    dir: Direction,
    out: &mut Vec<FlowEvent<E>>,
) {
    out.extend(scratch.drain(before..).map(|event| FlowEvent::App {
        meta,
        ts,
        dir,
        event,
    }));
}

/// The index's hash of a flow key.
fn index_hash(hasher: &foldhash::fast::RandomState, key: FlowKey) -> u64 {
    hasher.hash_one(TableKey(key))
}

impl std::hash::Hash for TableKey {
    fn hash<S: std::hash::Hasher>(&self, h: &mut S) {
        fn words(e: &Endpoint) -> (u64, u64) {
            match e.ip {
                std::net::IpAddr::V4(a) => (u64::from(u32::from(a)) << 16 | u64::from(e.port), 0),
                std::net::IpAddr::V6(a) => {
                    let x = u128::from(a);
                    ((x as u64) ^ u64::from(e.port), (x >> 64) as u64 | 1)
                }
            }
        }
        let k = &self.0;
        let (a, b) = words(&k.lo);
        let (c, d) = words(&k.hi);
        h.write_u64(a);
        h.write_u64(b);
        h.write_u64(c);
        h.write_u64(d);
        h.write_u64(
            u64::from(k.proto)
                | u64::from(k.vlan.ids[0]) << 8
                | u64::from(k.vlan.ids[1]) << 24
                | u64::from(k.vni) << 40
                | u64::from(k.vlan.count) << 62,
        );
    }
}

/// An entry's neighbours in its class list, kept apart from the (large) entries so that moving
/// a flow to the head touches a few bytes of its neighbours, not their records.
#[derive(Clone, Copy)]
struct Link {
    prev: u32,
    next: u32,
}

const UNLINKED: Link = Link {
    prev: NIL,
    next: NIL,
};

#[derive(Clone, Copy)]
struct List {
    head: u32,
    tail: u32,
}

/// What a tick does to a flow.
const TICK_REPORT: u8 = 1;
const TICK_EXPIRE: u8 = 2;

/// The classes in list order (index = `Class as usize`).
const CLASS_ORDER: [Class; CLASSES] = [
    Class::HalfOpen,
    Class::Closed,
    Class::Other,
    Class::Udp,
    Class::Established,
];

/// The flow table of one worker.
pub struct FlowTable<H: StreamHandler> {
    cfg: FlowConfig,
    /// The flows' slab indexes, found by key: the index holds 4 bytes a flow (the key is read
    /// back from the slab entry, which a packet's lookup reads next anyway), so its buckets stay
    /// in the cache where a map holding the keys would not.
    index: hashbrown::HashTable<u32>,
    hasher: foldhash::fast::RandomState,
    slab: Vec<Entry<H>>,
    /// `links[i]`: the list neighbours of `slab[i]`.
    links: Vec<Link>,
    free: Vec<u32>,
    lists: [List; CLASSES],
    /// Latest packet time seen (packets may arrive slightly out of order).
    now: Timestamp,
    /// Start of the current activity window.
    window: Timestamp,
    scratch: Vec<H::Event>,
    /// Flows still to end at the end of input (slab indexes, last = next).
    draining: Vec<u32>,
    /// Work of the current tick still to do: (flow id, slab index, TICK_* flags), last = next.
    ticking: Vec<(FlowId, u32, u8)>,
    /// The window whose activity the current tick reports.
    tick_window: Timestamp,
    /// Home networks, to mark the ends of a new flow that can be devices (`FlowMeta::local`).
    home: Vec<ipnet::IpNet>,
    /// Bytes held by the stream buffers (out-of-order and parsers) of all flows, held to
    /// `cfg.reassembly.memcap`.
    held: usize,
    /// The flows whose buffers hold something (slab indexes), by size class: the memcap sheds
    /// from the largest class.
    holders: [Vec<u32>; SIZE_CLASSES],
    pub counters: FlowCounters,
}

impl<H: StreamHandler> FlowTable<H> {
    pub fn new(cfg: FlowConfig) -> Self {
        FlowTable {
            cfg,
            index: hashbrown::HashTable::new(),
            hasher: foldhash::fast::RandomState::default(),
            slab: Vec::new(),
            links: Vec::new(),
            free: Vec::new(),
            lists: [List {
                head: NIL,
                tail: NIL,
            }; CLASSES],
            now: Timestamp::ZERO,
            window: Timestamp::ZERO,
            scratch: Vec::new(),
            draining: Vec::new(),
            ticking: Vec::new(),
            tick_window: Timestamp::ZERO,
            home: Vec::new(),
            held: 0,
            holders: std::array::from_fn(|_| Vec::new()),
            counters: FlowCounters::default(),
        }
    }

    /// A table whose flows mark the ends that can be devices of the home networks `home`
    /// (with [`FlowTable::new`], no end is marked).
    pub fn with_home(cfg: FlowConfig, home: Vec<ipnet::IpNet>) -> Self {
        FlowTable {
            home,
            ..FlowTable::new(cfg)
        }
    }

    /// Number of flows held.
    pub fn len(&self) -> usize {
        self.index.len()
    }
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }
    pub fn now(&self) -> Timestamp {
        self.now
    }

    fn timeout(&self, c: Class) -> u64 {
        match c {
            Class::HalfOpen => self.cfg.tcp_half_open_timeout,
            Class::Closed => self.cfg.tcp_closed_timeout,
            Class::Established => self.cfg.tcp_idle_timeout,
            Class::Udp => self.cfg.udp_idle_timeout,
            Class::Other => self.cfg.other_idle_timeout,
        }
    }

    fn unlink(&mut self, i: u32) {
        let Link { prev, next } = self.links[i as usize];
        let c = self.slab[i as usize].class as usize;
        if prev != NIL {
            self.links[prev as usize].next = next;
        } else {
            self.lists[c].head = next;
        }
        if next != NIL {
            self.links[next as usize].prev = prev;
        } else {
            self.lists[c].tail = prev;
        }
    }

    /// Puts `i` at the head (most recently seen) of its class list.
    fn push_front(&mut self, i: u32) {
        let c = self.slab[i as usize].class as usize;
        let head = self.lists[c].head;
        self.links[i as usize] = Link {
            prev: NIL,
            next: head,
        };
        if head != NIL {
            self.links[head as usize].prev = i;
        } else {
            self.lists[c].tail = i;
        }
        self.lists[c].head = i;
    }

    /// Advances packet time to `now`: closes the activity window when `now` enters a new one and
    /// ends the flows whose idle timeout has passed. The caller ticks once per second of packet
    /// time, from a clock that sees every packet (all workers get the same ticks, so flows end at
    /// the same moments whatever the sharding).
    pub fn tick(&mut self, now: Timestamp, out: &mut Vec<FlowEvent<H::Event>>) {
        while self.tick_some(now, out, usize::MAX) {}
    }

    /// [`FlowTable::tick`] in pieces: handles up to `max` flows (in flow id order, the order
    /// the workers' events are merged in) and returns true while some remain, so that a window
    /// report or an expiry of many flows is handed on in bounded pieces. Call it again (with no
    /// packet in between) until it returns false.
    pub fn tick_some(
        &mut self,
        now: Timestamp,
        out: &mut Vec<FlowEvent<H::Event>>,
        max: usize,
    ) -> bool {
        if self.ticking.is_empty() {
            self.plan_tick(now);
        }
        for _ in 0..max {
            let Some((_, i, what)) = self.ticking.pop() else {
                break;
            };
            if what & TICK_REPORT != 0 {
                self.report_entry_in(i, self.tick_window, out);
            }
            if what & TICK_EXPIRE != 0 && self.slab[i as usize].live {
                let end = match self.slab[i as usize].rec.tcp {
                    TcpState::Closed => FlowEnd::Fin,
                    TcpState::Reset => FlowEnd::Rst,
                    _ => {
                        self.counters.idle_timeouts += 1;
                        FlowEnd::IdleTimeout
                    }
                };
                self.end(i, end, out);
            }
        }
        !self.ticking.is_empty()
    }

    /// Lists what a tick at `now` does: the flows active in a window that just closed (their
    /// activity is reported) and the flows idle past their timeout (they end), by flow id.
    fn plan_tick(&mut self, now: Timestamp) {
        if now > self.now {
            self.now = now;
        }
        let mut plan = std::mem::take(&mut self.ticking);
        plan.clear();
        if self.cfg.window_secs > 0 {
            let w = self.cfg.window_secs;
            let start = Timestamp::from_secs(self.now.secs() / w * w);
            if start > self.window {
                if self.window > Timestamp::ZERO {
                    // Every flow seen in the closing window: the class lists are ordered by
                    // last packet, so only those are visited.
                    let closing = self.window;
                    for c in 0..CLASSES {
                        let mut i = self.lists[c].head;
                        while i != NIL {
                            let e = &self.slab[i as usize];
                            if e.rec.last < closing {
                                break;
                            }
                            plan.push((e.rec.meta.id, i, TICK_REPORT));
                            i = self.links[i as usize].next;
                        }
                    }
                    self.tick_window = closing;
                }
                self.window = start;
            }
        }
        for (c, class) in CLASS_ORDER.iter().enumerate() {
            let timeout = self.timeout(*class);
            let mut i = self.lists[c].tail;
            while i != NIL {
                let e = &self.slab[i as usize];
                if self.now.secs_since(e.rec.last) < timeout {
                    break;
                }
                plan.push((e.rec.meta.id, i, TICK_EXPIRE));
                i = self.links[i as usize].prev;
            }
        }
        // By flow id, highest first (popped from the back); a flow both reported and expired
        // becomes one entry.
        plan.sort_unstable_by_key(|&(id, i, _)| std::cmp::Reverse((id, i)));
        plan.dedup_by(|later, kept| {
            if later.1 == kept.1 {
                kept.2 |= later.2;
                true
            } else {
                false
            }
        });
        self.ticking = plan;
    }

    /// Processes one packet. `payload` is its captured L4 payload.
    pub fn observe(
        &mut self,
        p: &PacketSummary,
        payload: &[u8],
        out: &mut Vec<FlowEvent<H::Event>>,
    ) {
        let Some((sip, dip)) = p.ips() else {
            return;
        };
        let Some(l4) = p.transport() else {
            return;
        };
        if p.ts > self.now {
            self.now = p.ts;
        }
        let (sport, dport) = l4.ports();
        let src = Endpoint {
            ip: sip,
            port: sport,
        };
        let dst = Endpoint {
            ip: dip,
            port: dport,
        };
        let proto = l4.proto();
        let (key, src_is_lo) = FlowKey::new(src, dst, proto, p.vlan, p.vni);
        let hash = index_hash(&self.hasher, key);
        let slab = &self.slab;
        let found = self.index.find(hash, |&i| {
            slab.get(i as usize).is_some_and(|e| e.key() == key)
        });
        let idx = match found {
            Some(&i) => i,
            None => self.create(key, hash, (src, dst), p, l4, out),
        };
        let i = idx as usize;
        // Direction relative to the initiator.
        let dir = {
            let e = &self.slab[i];
            if e.init_is_lo == src_is_lo {
                Direction::Forward
            } else {
                Direction::Reverse
            }
        };
        // Active timeout: write a slice and go on.
        if self.now.secs_since(self.slab[i].rec.start) >= self.cfg.active_timeout {
            self.report_entry(idx, out);
            let e = &mut self.slab[i];
            e.reported = [(0, 0); 2];
            let mut slice = e.rec;
            slice.end = FlowEnd::ActiveTimeout;
            slice.app = e.handler.as_ref().map_or("unknown", |h| h.app_name());
            e.rec.start = p.ts;
            e.rec.fwd = DirStats::default();
            e.rec.rev = DirStats::default();
            self.counters.active_timeouts += 1;
            out.push(FlowEvent::Flow(slice));
        }
        let e = &mut self.slab[i];
        e.rec.last = e.rec.last.max(p.ts);
        let ds = match dir {
            Direction::Forward => &mut e.rec.fwd,
            Direction::Reverse => &mut e.rec.rev,
        };
        ds.packets += 1;
        ds.bytes += u64::from(p.wire_len);
        ds.payload_bytes += u64::from(p.payload_wire_len);
        let mut new_class = e.class;
        if let Transport::Tcp { flags, seq, .. } = l4 {
            ds.tcp_flags |= flags.0;
            if flags.syn() {
                ds.syns += 1;
            }
            if flags.rst() {
                ds.rsts += 1;
            }
            if flags.syn() && flags.ack() && dir == Direction::Reverse {
                e.synack = true;
            }
            e.rec.tcp = e.rec.tcp.next(flags, dir, &mut e.fins);
            if flags.syn() {
                e.streams[dir.index()].on_syn(seq);
            }
            if let Some(h) = e.handler.as_mut() {
                let data_seq = if flags.syn() {
                    seq.wrapping_add(1)
                } else {
                    seq
                };
                let before = self.scratch.len();
                e.streams[dir.index()].on_segment(
                    dir,
                    data_seq,
                    payload,
                    p.payload_wire_len,
                    h,
                    &mut self.scratch,
                    &self.cfg.reassembly,
                    &mut self.counters.reassembly,
                );
                if flags.fin() || flags.rst() {
                    e.streams[dir.index()].flush(
                        dir,
                        h,
                        &mut self.scratch,
                        &self.cfg.reassembly,
                        &mut self.counters.reassembly,
                    );
                }
                // Most segments give no event: the metadata is copied only for those that do.
                if self.scratch.len() > before {
                    let swapped = h.roles_swapped();
                    let dir = if swapped { dir.flip() } else { dir };
                    let meta = event_meta(&e.rec.meta, swapped);
                    hand_on(&mut self.scratch, before, meta, p.ts, dir, out);
                }
            }
            // Buffers grow only with data: the memcap is checked on segments that carry some.
            if p.payload_wire_len > 0 && e.handler.is_some() && !e.rec.memcap_shed {
                let held = e.buffered();
                self.set_held(idx, held, true);
                if self.held > self.cfg.reassembly.memcap {
                    self.relieve(idx, p.ts, out);
                }
                self.counters.reassembly.held_peak =
                    self.counters.reassembly.held_peak.max(self.held as u64);
            }
            let e = &mut self.slab[i];
            new_class = match e.rec.tcp {
                TcpState::Closed | TcpState::Reset => Class::Closed,
                TcpState::Established | TcpState::Closing => Class::Established,
                TcpState::None if e.rec.fwd.packets > 0 && e.rec.rev.packets > 0 => {
                    Class::Established
                }
                _ => Class::HalfOpen,
            };
            if e.synack && new_class == Class::HalfOpen {
                new_class = Class::Established;
            }
        }
        // Already the most recent of its class (a burst of one flow): nothing to move.
        if new_class == self.slab[i].class && self.lists[new_class as usize].head == idx {
            return;
        }
        self.unlink(idx);
        self.slab[i].class = new_class;
        self.push_front(idx);
    }

    /// Starts the flow of `key` (`hash`: its index hash) with the packet `p` from `src` to `dst`.
    fn create(
        &mut self,
        key: FlowKey,
        hash: u64,
        (src, dst): (Endpoint, Endpoint),
        p: &PacketSummary,
        l4: Transport,
        out: &mut Vec<FlowEvent<H::Event>>,
    ) -> u32 {
        if self.index.len() >= self.cfg.max_flows.max(1) {
            self.evict_one(out);
        }
        // Who started the connection. A SYN-ACK as first packet means the SYN was missed: the
        // receiver is the initiator. Picked up mid-stream (no SYN at all), the side with the
        // lower port is taken as the server, as ephemeral client ports are high.
        let reversed = match l4 {
            Transport::Tcp {
                flags,
                sport,
                dport,
                ..
            } => (flags.syn() && flags.ack()) || (!flags.syn() && sport < dport),
            _ => false,
        };
        let (initiator, responder, imac, rmac) = if reversed {
            (dst, src, p.dst_mac, p.src_mac)
        } else {
            (src, dst, p.src_mac, p.dst_mac)
        };
        let meta = FlowMeta {
            id: key.flow_id(p.ts.0),
            initiator,
            responder,
            proto: key.proto,
            vlan: p.vlan,
            vni: p.vni,
            first: p.ts,
            initiator_mac: imac,
            responder_mac: rmac,
            local: FlowMeta::local_bits(
                crate::settings::device_address(&self.home, initiator.ip),
                crate::settings::device_address(&self.home, responder.ip),
            ),
        };
        let class = match l4 {
            Transport::Tcp { .. } => {
                self.counters.tcp += 1;
                Class::HalfOpen
            }
            Transport::Udp { .. } => {
                self.counters.udp += 1;
                Class::Udp
            }
            _ => {
                self.counters.other += 1;
                Class::Other
            }
        };
        self.counters.created += 1;
        let handler = if key.proto == 6 {
            H::for_flow(&meta)
        } else {
            None
        };
        let entry = Entry {
            reported: [(0, 0); 2],
            rec: FlowRecord {
                meta,
                start: p.ts,
                last: p.ts,
                fwd: DirStats::default(),
                rev: DirStats::default(),
                tcp: TcpState::None,
                end: FlowEnd::Shutdown,
                app: "unknown",
                gaps: [0; 2],
                synack_seen: false,
                memcap_shed: false,
            },
            fins: [false; 2],
            synack: false,
            class,
            init_is_lo: initiator == key.lo,
            handler,
            streams: [Stream::default(), Stream::default()],
            live: true,
            held: 0,
            holder: NIL,
            size_class: 0,
        };
        let idx = match self.free.pop() {
            Some(i) => {
                self.slab[i as usize] = entry;
                self.links[i as usize] = UNLINKED;
                i
            }
            None => {
                self.slab.push(entry);
                self.links.push(UNLINKED);
                (self.slab.len() - 1) as u32
            }
        };
        let (slab, hasher) = (&self.slab, &self.hasher);
        self.index.insert_unique(hash, idx, |&i| {
            slab.get(i as usize)
                .map_or(0, |e| index_hash(hasher, e.key()))
        });
        self.counters.peak_active = self.counters.peak_active.max(self.index.len() as u64);
        self.push_front(idx);
        out.push(FlowEvent::Started(meta));
        idx
    }

    /// Reports the activity of flow `idx` since its last report, if any.
    fn report_entry(&mut self, idx: u32, out: &mut Vec<FlowEvent<H::Event>>) {
        self.report_entry_in(idx, self.window, out);
    }

    /// Reports flow `idx`'s packets and bytes since its last report, as activity of `window`.
    fn report_entry_in(&mut self, idx: u32, window: Timestamp, out: &mut Vec<FlowEvent<H::Event>>) {
        if self.cfg.window_secs == 0 {
            return;
        }
        let e = &mut self.slab[idx as usize];
        let cur = [
            (e.rec.fwd.packets, e.rec.fwd.bytes),
            (e.rec.rev.packets, e.rec.rev.bytes),
        ];
        let d = |i: usize| {
            (
                cur[i].0.saturating_sub(e.reported[i].0),
                cur[i].1.saturating_sub(e.reported[i].1),
            )
        };
        let (fwd, rev) = (d(0), d(1));
        if fwd.0 == 0 && rev.0 == 0 {
            return;
        }
        e.reported = cur;
        out.push(FlowEvent::Activity {
            meta: e.rec.meta,
            window,
            fwd,
            rev,
        });
    }

    /// Ends flow `idx` with `end`, writing its record.
    fn end(&mut self, idx: u32, end: FlowEnd, out: &mut Vec<FlowEvent<H::Event>>) {
        if self.slab[idx as usize].live {
            self.report_entry(idx, out);
        }
        self.unlink(idx);
        let e = &mut self.slab[idx as usize];
        if !e.live {
            return;
        }
        e.live = false;
        let ts = e.rec.last;
        let mut swapped = false;
        // The handler is closed where it is (not moved out first: it is large, and every
        // flow of a SYN flood ends with one), then dropped.
        if let Some(h) = e.handler.as_mut() {
            swapped = h.roles_swapped();
            let meta = event_meta(&e.rec.meta, swapped);
            let before = self.scratch.len();
            for d in [Direction::Forward, Direction::Reverse] {
                e.streams[d.index()].flush(
                    d,
                    h,
                    &mut self.scratch,
                    &self.cfg.reassembly,
                    &mut self.counters.reassembly,
                );
            }
            h.on_close(&mut self.scratch);
            e.rec.app = h.app_name();
            hand_on(&mut self.scratch, before, meta, ts, Direction::Forward, out);
            e.handler = None;
        }
        e.rec.end = end;
        e.rec.gaps = [e.streams[0].gap_bytes, e.streams[1].gap_bytes];
        e.rec.synack_seen = e.synack;
        e.streams = [Stream::default(), Stream::default()];
        self.set_held(idx, 0, false);
        let e = &mut self.slab[idx as usize];
        let key = e.key();
        let mut rec = e.rec;
        if swapped {
            rec.meta = rec.meta.swapped();
            std::mem::swap(&mut rec.fwd, &mut rec.rev);
            rec.gaps.swap(0, 1);
        }
        if let Ok(found) = self
            .index
            .find_entry(index_hash(&self.hasher, key), |&i| i == idx)
        {
            found.remove();
        }
        self.free.push(idx);
        self.counters.ended += 1;
        out.push(FlowEvent::Flow(rec));
    }

    /// Counts `held` bytes for flow `idx`'s buffers in place of what they held, and keeps the
    /// lists of flows that hold some and can be shed (`sheddable`), by size class.
    fn set_held(&mut self, idx: u32, held: usize, sheddable: bool) {
        let e = &mut self.slab[idx as usize];
        self.held = (self.held + held).saturating_sub(e.held as usize);
        e.held = u32::try_from(held).unwrap_or(u32::MAX);
        let want = (e.held > 0 && sheddable).then(|| size_class(e.held));
        let have = (e.holder != NIL).then_some(usize::from(e.size_class));
        if want == have {
            return;
        }
        if let Some(c) = have {
            let at = e.holder;
            e.holder = NIL;
            self.holders[c].swap_remove(at as usize);
            if let Some(&moved) = self.holders[c].get(at as usize) {
                self.slab[moved as usize].holder = at;
            }
        }
        if let Some(c) = want {
            let e = &mut self.slab[idx as usize];
            e.holder = self.holders[c].len() as u32;
            e.size_class = c as u8;
            self.holders[c].push(idx);
        }
    }

    /// The buffers are above the memcap after flow `grew`'s grew: sheds a flow of the largest
    /// size class held (`grew` itself if it is one), until the total is back under the cap.
    /// Flows that hold much (those pinning the cap) go first, not whichever flow happens to need
    /// a few bytes once the cap is reached.
    fn relieve(&mut self, grew: u32, ts: Timestamp, out: &mut Vec<FlowEvent<H::Event>>) {
        // Each shed flow releases at least half of the largest class: a few rounds are enough,
        // and the bound keeps one segment's work small whatever the holders.
        for _ in 0..MAX_SHED_PER_SEGMENT {
            if self.held <= self.cfg.reassembly.memcap {
                return;
            }
            let Some(c) = (1..SIZE_CLASSES)
                .rev()
                .find(|&c| !self.holders[c].is_empty())
            else {
                return;
            };
            let g = &self.slab[grew as usize];
            let victim = if g.holder != NIL && usize::from(g.size_class) == c {
                grew
            } else {
                match self.holders[c].last() {
                    Some(&v) => v,
                    None => return,
                }
            };
            self.shed(victim, ts, out);
        }
    }

    /// Sheds flow `idx` at the memcap: its handler hands on what is pending (as at the flow's
    /// end), its buffers are released, and nothing more of it is inspected.
    fn shed(&mut self, idx: u32, ts: Timestamp, out: &mut Vec<FlowEvent<H::Event>>) {
        let e = &mut self.slab[idx as usize];
        let Some(h) = e.handler.as_mut() else {
            // Nothing to shed (a flow holds buffers only with a handler): it leaves the
            // holders, so that the memcap never picks it again.
            let held = e.held as usize;
            self.set_held(idx, held, false);
            return;
        };
        let before = self.scratch.len();
        h.shed(&mut self.scratch);
        e.streams[0].shed();
        e.streams[1].shed();
        let meta = event_meta(&e.rec.meta, h.roles_swapped());
        e.rec.memcap_shed = true;
        let left = e.buffered();
        let released = (e.held as usize).saturating_sub(left);
        self.counters.reassembly.memcap_flows += 1;
        self.counters.reassembly.memcap_bytes += released as u64;
        hand_on(&mut self.scratch, before, meta, ts, Direction::Forward, out);
        // A shed flow buffers nothing more: it leaves the holders whatever it keeps.
        self.set_held(idx, left, false);
    }

    fn evict_one(&mut self, out: &mut Vec<FlowEvent<H::Event>>) {
        for c in 0..CLASSES {
            let t = self.lists[c].tail;
            if t != NIL {
                self.counters.evicted += 1;
                self.end(t, FlowEnd::Evicted, out);
                return;
            }
        }
    }

    /// Ends every flow (end of input), oldest first so the output order is deterministic.
    pub fn drain(&mut self, out: &mut Vec<FlowEvent<H::Event>>) {
        while self.drain_some(out, usize::MAX) {}
    }

    /// Ends up to `max` flows at the end of input, in flow id order (the order the workers'
    /// events are merged in), so that a large table is handed on in bounded pieces. True while
    /// flows remain.
    pub fn drain_some(&mut self, out: &mut Vec<FlowEvent<H::Event>>, max: usize) -> bool {
        if self.draining.is_empty() {
            if self.index.is_empty() {
                return false;
            }
            let mut all: Vec<(FlowId, u32)> = self
                .index
                .iter()
                .map(|&i| (self.slab[i as usize].rec.meta.id, i))
                .collect();
            // Popped from the back: highest id first in the vector.
            all.sort_unstable_by(|a, b| b.cmp(a));
            self.draining = all.into_iter().map(|(_, i)| i).collect();
        }
        for _ in 0..max {
            let Some(i) = self.draining.pop() else { break };
            let end = match self.slab[i as usize].rec.tcp {
                TcpState::Closed => FlowEnd::Fin,
                TcpState::Reset => FlowEnd::Rst,
                _ => FlowEnd::Shutdown,
            };
            self.end(i, end, out);
        }
        !self.draining.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::{Net, Vlans};
    use std::net::{IpAddr, Ipv4Addr};

    /// Numbered client `n` (198.18.x.y) and the server, 198.19.0.1.
    fn client(n: u32) -> IpAddr {
        IpAddr::V4(Ipv4Addr::from(0xc612_0000 | n))
    }
    const SERVER: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 19, 0, 1));

    /// A packet from `src` to `dst` at second `t`, carrying `payload` bytes after its headers.
    fn packet(src: IpAddr, dst: IpAddr, l4: Transport, payload: u32, t: u64) -> PacketSummary {
        PacketSummary {
            ts: Timestamp::from_secs(1_000 + t),
            wire_len: 54 + payload,
            src_mac: None,
            dst_mac: None,
            vlan: Vlans::default(),
            vni: None,
            net: Net::Ip {
                src,
                dst,
                ttl: 64,
                l4,
            },
            payload_off: 54,
            payload_len: payload,
            payload_wire_len: payload,
        }
    }

    /// The flow records among a table's events.
    fn records<E>(out: &[FlowEvent<E>]) -> Vec<&FlowRecord> {
        out.iter()
            .filter_map(|e| match e {
                FlowEvent::Flow(r) => Some(r),
                _ => None,
            })
            .collect()
    }

    /// A UDP packet between a numbered client and the server's port 53, at second `t`.
    fn udp(n: u32, to_server: bool, t: u64, vlan: Vlans, vni: Option<u32>) -> PacketSummary {
        let cport = 40_000 + (n % 1000) as u16;
        let (src, dst, sport, dport) = if to_server {
            (client(n), SERVER, cport, 53)
        } else {
            (SERVER, client(n), 53, cport)
        };
        PacketSummary {
            vlan,
            vni,
            ..packet(src, dst, Transport::Udp { sport, dport }, 0, t)
        }
    }

    /// Feeds three rounds over `clients` flows (query, answer, query) and ends the table;
    /// returns the table and its flow records.
    fn rounds(max_flows: usize, clients: u32) -> (FlowTable<NoPayload>, Vec<FlowRecord>) {
        let mut t = FlowTable::<NoPayload>::new(FlowConfig {
            max_flows,
            ..FlowConfig::default()
        });
        let mut out = Vec::new();
        for (round, to_server) in [true, false, true].into_iter().enumerate() {
            for c in 0..clients {
                let p = udp(c, to_server, round as u64, Vlans::default(), None);
                t.observe(&p, &[], &mut out);
            }
        }
        t.drain(&mut out);
        let recs = records(&out).into_iter().copied().collect();
        (t, recs)
    }

    /// A handler that keeps every byte it is given (in 1 KiB steps), and says when it is shed.
    struct Hoard {
        kept: Vec<u8>,
    }

    impl StreamHandler for Hoard {
        type Event = &'static str;
        fn for_flow(_: &FlowMeta) -> Option<Self> {
            Some(Hoard { kept: Vec::new() })
        }
        fn on_data(&mut self, _: Direction, data: &[u8], _: &mut Vec<&'static str>) {
            self.kept.reserve_exact(data.len().next_multiple_of(1024));
            self.kept.extend_from_slice(data);
        }
        fn on_gap(&mut self, _: Direction, _: u64) {}
        fn on_close(&mut self, _: &mut Vec<&'static str>) {}
        fn app_name(&self) -> &'static str {
            "hoard"
        }
        fn held(&self) -> usize {
            self.kept.capacity()
        }
        fn shed(&mut self, out: &mut Vec<&'static str>) {
            self.kept = Vec::new();
            out.push("shed");
        }
    }

    /// A TCP segment of client `flow`'s connection to the server's port 1883 carrying `data` at
    /// `seq`.
    fn segment(flow: u32, seq: u32, data: &[u8]) -> PacketSummary {
        let l4 = Transport::Tcp {
            sport: 40_000,
            dport: 1883,
            flags: crate::decode::TcpFlags(crate::decode::TcpFlags::ACK),
            seq,
            ack: 1,
            win: 512,
        };
        packet(client(flow), SERVER, l4, data.len() as u32, 0)
    }

    /// The flows whose records say they were shed at the memcap, by client number.
    fn shed_clients<E>(out: &[FlowEvent<E>]) -> Vec<u32> {
        let mut v: Vec<u32> = records(out)
            .iter()
            .filter(|r| r.memcap_shed)
            .filter_map(|r| client_number(r.meta.initiator.ip))
            .collect();
        v.sort_unstable();
        v
    }

    /// The number `n` of address `client(n)`.
    fn client_number(ip: IpAddr) -> Option<u32> {
        match ip {
            IpAddr::V4(a) => Some(u32::from(a) & 0xffff),
            IpAddr::V6(_) => None,
        }
    }

    /// Hands client `f`'s flow `count` segments of `chunk`, back to back from `seq`; the
    /// stream buffers never hold more than the memcap.
    fn hand(
        t: &mut FlowTable<Hoard>,
        f: u32,
        seq: u32,
        chunk: &[u8],
        count: u32,
        out: &mut Vec<FlowEvent<&'static str>>,
    ) {
        for k in 0..count {
            t.observe(&segment(f, seq + chunk.len() as u32 * k, chunk), chunk, out);
            assert!(
                t.held <= t.cfg.reassembly.memcap,
                "flow {f}: {} held",
                t.held
            );
        }
    }

    /// Ends every flow: the stream buffers' bytes all come back, and no flow holds any.
    fn drain_gives_all_back(t: &mut FlowTable<Hoard>, out: &mut Vec<FlowEvent<&'static str>>) {
        t.drain(out);
        assert_eq!(t.held, 0);
        assert!(t.holders.iter().all(Vec::is_empty));
    }

    /// A table of hoarding flows whose stream buffers are held to `memcap` bytes.
    fn hoarding_table(memcap: usize) -> FlowTable<Hoard> {
        let mut cfg = FlowConfig::default();
        cfg.reassembly.memcap = memcap;
        FlowTable::new(cfg)
    }

    #[test]
    fn stream_buffers_are_held_to_the_memcap() {
        let mut t = hoarding_table(64 << 10);
        let mut out = Vec::new();
        let data = [b'x'; 1000];
        // 20 flows, each handed 8 KB in order and 4 KB beyond a one-byte hole: about 13 KiB of
        // buffers each, 260 KiB in all against a cap of 64 KiB.
        for f in 0..20 {
            hand(&mut t, f, 100, &data, 8, &mut out);
            hand(&mut t, f, 8_101, &data, 4, &mut out);
        }
        let r = t.counters.reassembly;
        let shed = out
            .iter()
            .filter(|e| matches!(e, FlowEvent::App { event: "shed", .. }))
            .count();
        // Five flows fit (about 13 KiB each): as each later one grows past the cap, one of
        // the largest is shed (a full one, or itself once as large), says so once, and buffers
        // nothing more.
        assert_eq!(r.memcap_flows, 15, "{r:?}");
        assert_eq!(shed, 15);
        assert!(r.memcap_bytes >= 15 * 8_192, "{r:?}");
        assert!(r.held_peak <= 64 << 10 && r.held_peak >= 48 << 10, "{r:?}");
        // A shed flow takes no more data: its segments still count.
        let delivered = r.delivered_bytes;
        let shed = t.slab.iter().find(|e| e.rec.memcap_shed);
        let shed = shed.and_then(|e| client_number(e.rec.meta.initiator.ip));
        t.observe(
            &segment(shed.expect("a shed flow"), 12_100, &data),
            &data,
            &mut out,
        );
        assert_eq!(t.counters.reassembly.delivered_bytes, delivered);
        drain_gives_all_back(&mut t, &mut out);
        let recs = records(&out);
        assert_eq!(recs.len(), 20);
        assert_eq!(recs.iter().map(|r| r.fwd.packets).sum::<u64>(), 20 * 12 + 1);
        assert_eq!(shed_clients(&out).len(), 15);
    }

    /// The memcap's books: the total is the sum of the flows' bytes, and the size-class lists
    /// hold exactly the flows that hold bytes and were not shed, each where it says it is.
    fn check_holders(t: &FlowTable<Hoard>) {
        let live = || t.index.iter().map(|&i| &t.slab[i as usize]);
        assert_eq!(live().map(|e| e.held as usize).sum::<usize>(), t.held);
        for (c, list) in t.holders.iter().enumerate() {
            for (at, &i) in list.iter().enumerate() {
                let e = &t.slab[i as usize];
                assert_eq!((e.holder as usize, usize::from(e.size_class)), (at, c));
                assert_eq!(size_class(e.held), c);
                assert!(e.live && !e.rec.memcap_shed);
            }
        }
        let listed: usize = t.holders.iter().map(Vec::len).sum();
        let holding = live().filter(|e| e.held > 0 && !e.rec.memcap_shed).count();
        assert_eq!(listed, holding);
    }

    /// Random segments of 40 flows (in order, beyond holes, filling them) against a 48 KiB
    /// memcap: after every segment the books balance and the total is within the cap.
    #[test]
    fn the_memcap_books_balance_whatever_the_segments() {
        let mut t = hoarding_table(48 << 10);
        let mut out = Vec::new();
        let mut next = [100u32; 40];
        let mut x: u64 = 0x2545_F491_4F6C_DD1D;
        let mut draw = |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        let bytes = [b'r'; 4000];
        for _ in 0..5_000 {
            let f = draw(40) as usize;
            let len = 1 + draw(2_000) as usize;
            let seq = match draw(10) {
                0..=5 => next[f],
                6..=8 => next[f] + 1 + draw(4_000) as u32,
                _ => next[f],
            };
            let data = &bytes[..len];
            t.observe(&segment(f as u32, seq, data), data, &mut out);
            if seq == next[f] {
                next[f] += len as u32;
            }
            check_holders(&t);
            assert!(t.held <= 48 << 10, "{} held", t.held);
        }
        assert!(t.counters.reassembly.memcap_flows > 0);
        drain_gives_all_back(&mut t, &mut out);
    }

    /// Flows that fill the memcap and hold on (an attacker's, stalled behind a hole) are shed
    /// to make room, not the flows that need a little buffer once it is full.
    #[test]
    fn flows_pinning_the_memcap_are_shed_before_small_ones() {
        let mut t = hoarding_table(64 << 10);
        let mut out = Vec::new();
        let kb = [b'p'; 1024];
        // Clients 0..5 each hold 12 KiB (in order, hoarded): 60 of the 64 KiB.
        for f in 0..5 {
            hand(&mut t, f, 100, &kb, 12, &mut out);
        }
        assert_eq!(t.counters.reassembly.memcap_flows, 0);
        // Then 10 clients that each buffer 1 KiB beyond a hole, and fill it (and hoard it).
        let (one, small) = ([b'h'; 1], [b's'; 1024]);
        for f in 100..110 {
            t.observe(&segment(f, 100, &one), &one, &mut out);
            t.observe(&segment(f, 1_125, &small), &small, &mut out);
            t.observe(&segment(f, 101, &small), &small, &mut out);
            assert!(t.held <= 64 << 10, "client {f}: {} held", t.held);
        }
        drain_gives_all_back(&mut t, &mut out);
        // Pinning clients went; every small one was inspected whole.
        let shed = shed_clients(&out);
        assert!(!shed.is_empty() && shed.iter().all(|&c| c < 5), "{shed:?}");
        assert_eq!(t.counters.reassembly.ooo_segments, 10);
        assert_eq!(t.counters.reassembly.gaps, 0);
    }

    #[test]
    fn every_flow_is_found_again_as_the_index_grows() {
        let (t, recs) = rounds(1_000_000, 20_000);
        assert_eq!(t.counters.created, 20_000);
        assert_eq!(t.counters.peak_active, 20_000);
        assert_eq!(t.counters.evicted, 0);
        assert!(t.is_empty());
        assert_eq!(recs.len(), 20_000);
        for r in &recs {
            assert_eq!((r.fwd.packets, r.rev.packets), (2, 1), "{r:?}");
            assert_eq!(r.meta.responder.port, 53);
        }
    }

    #[test]
    fn evicted_flows_leave_the_index() {
        // 20,000 flows through a table of 1,000: each round finds its flows evicted (oldest
        // first) and starts them again; a stale index entry would find an ended flow instead.
        let (t, recs) = rounds(1_000, 20_000);
        assert_eq!(t.counters.created, 60_000);
        assert_eq!(t.counters.evicted, 59_000);
        assert_eq!(t.counters.peak_active, 1_000);
        assert_eq!(recs.len(), 60_000);
        assert!(recs.iter().all(|r| r.fwd.packets + r.rev.packets == 1));
    }

    #[test]
    fn vlans_and_vnis_keep_flows_apart() {
        let mut t = FlowTable::<NoPayload>::new(FlowConfig::default());
        let mut out = Vec::new();
        let mut tagged = Vlans::default();
        tagged.push(7);
        for _ in 0..2 {
            for (vlan, vni) in [
                (Vlans::default(), None),
                (tagged, None),
                (Vlans::default(), Some(5)),
            ] {
                t.observe(&udp(1, true, 0, vlan, vni), &[], &mut out);
            }
        }
        assert_eq!(t.counters.created, 3);
        assert_eq!(t.len(), 3);
    }
}
