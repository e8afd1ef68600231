//! Device stage: the inventory of devices and their per-window activity.
//!
//! Owns: device profiles (identity, addresses, services, MQTT client ids and topics, TLS SNIs),
//! bounded, least-recently-seen eviction; the open activity windows. Hands on: [`DeviceOutput`]
//! — a device seen for the first time, and at each window's close one [`WindowVector`] per device
//! active in it (the features of [`FEATURES`]).
//!
//! A device is identified by its MAC address where the sensor sees layer 2, and by its IP
//! address where it does not, or when one MAC carries many source IPs (a router: the devices
//! behind it are told apart by IP). Only addresses of the home networks are devices; the rest
//! are peers.

pub mod baseline;

use crate::app::Emitted;
use crate::decode::{fmt_mac, Mac, MacText, Net};
use crate::fast::{Generations, HashMap, HashSet, SmallSet};
use crate::flow::{Direction, FlowMeta};
use crate::proto::{AppProto, ProtoEvent};
use crate::settings::{DeviceConfig, Settings};
use crate::time::Timestamp;
use serde::Serialize;
use std::collections::BTreeSet;
use std::net::IpAddr;

/// Version of the window feature list. Bump it when [`FEATURES`] changes: models record it
/// and refuse to load under another.
pub const FEATURE_SCHEMA: &str = "device-window-v1";

/// The window features, in vector order. Counts are per window.
pub const FEATURES: [&str; 14] = [
    "packets_out",
    "packets_in",
    "bytes_out",
    "bytes_in",
    "flows_out",
    "flows_in",
    "mqtt_publishes",
    "peers",
    "new_peers",
    "dst_ports",
    "failed_connections",
    "mqtt_sessions",
    "http_sessions",
    "tls_sessions",
];

pub const N_FEATURES: usize = FEATURES.len();

/// Index of a feature by name.
pub fn feature_index(name: &str) -> Option<usize> {
    FEATURES.iter().position(|f| *f == name)
}

/// How a device is identified.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum DeviceId {
    Mac(Mac),
    Ip(IpAddr),
}

/// Hashed as one or two machine words (the derived `Hash` writes the variant, a length and each
/// byte on their own; the device stage hashes an id several times per event).
impl std::hash::Hash for DeviceId {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        match self {
            DeviceId::Mac(m) => {
                let [a, b, c, d, e, f] = *m;
                h.write_u64(u64::from_le_bytes([a, b, c, d, e, f, 0, 1]));
            }
            DeviceId::Ip(IpAddr::V4(v4)) => h.write_u64(u64::from(u32::from(*v4)) | 2 << 56),
            DeviceId::Ip(IpAddr::V6(v6)) => {
                let x = u128::from(*v6);
                h.write_u64(x as u64);
                h.write_u64((x >> 64) as u64);
            }
        }
    }
}

impl std::fmt::Display for DeviceId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceId::Mac(m) => write!(f, "{}", MacText(*m)),
            DeviceId::Ip(ip) => write!(f, "{}", crate::decode::IpText(*ip)),
        }
    }
}

impl DeviceId {
    /// Parses the `Display` form back.
    pub fn parse(s: &str) -> Option<DeviceId> {
        if let Ok(ip) = s.parse() {
            return Some(DeviceId::Ip(ip));
        }
        let mut m = [0u8; 6];
        let parts: Vec<&str> = s.split(':').collect();
        if parts.len() != 6 {
            return None;
        }
        for (i, p) in parts.iter().enumerate() {
            m[i] = u8::from_str_radix(p, 16).ok()?;
        }
        Some(DeviceId::Mac(m))
    }
}

/// A bounded set that counts what it could not hold.
#[derive(Clone, Debug, Serialize)]
pub struct BoundedSet<T: Ord> {
    pub items: BTreeSet<T>,
    /// Insertions refused because the set was full.
    pub overflow: u64,
}

impl<T: Ord> Default for BoundedSet<T> {
    fn default() -> Self {
        BoundedSet {
            items: BTreeSet::new(),
            overflow: 0,
        }
    }
}

impl<T: Ord> BoundedSet<T> {
    /// Adds `v` (made by `own` only if the set takes it) unless the set is full, which is
    /// counted; true when the set holds `v` afterwards.
    fn hold<Q>(&mut self, v: &Q, cap: usize, own: impl FnOnce(&Q) -> T) -> bool
    where
        T: std::borrow::Borrow<Q>,
        Q: Ord + ?Sized,
    {
        if self.items.contains(v) {
            return true;
        }
        if self.items.len() >= cap {
            self.overflow += 1;
            return false;
        }
        self.items.insert(own(v))
    }
    /// Adds `v` unless the set is full, which is counted; true when the set holds `v`
    /// afterwards.
    pub fn insert(&mut self, v: T, cap: usize) -> bool
    where
        T: Copy,
    {
        self.hold(&v, cap, |v| *v)
    }
    pub fn contains(&self, v: &T) -> bool {
        self.items.contains(v)
    }
    pub fn len(&self) -> usize {
        self.items.len()
    }
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

impl BoundedSet<String> {
    /// [`BoundedSet::insert`] of a borrowed string, cut to [`crate::proto::MAX_KEPT`] bytes:
    /// allocates only for a value the set takes.
    pub fn insert_str(&mut self, v: &str, cap: usize) -> bool {
        self.hold(crate::proto::clip_str(v), cap, str::to_string)
    }
}

/// What the inventory knows of a device.
#[derive(Clone, Debug, Serialize)]
pub struct DeviceProfile {
    #[serde(serialize_with = "ser_display")]
    pub id: DeviceId,
    pub mac: Option<String>,
    pub ips: BoundedSet<IpAddr>,
    #[serde(serialize_with = "ser_ts")]
    pub first_seen: Timestamp,
    #[serde(serialize_with = "ser_ts")]
    pub last_seen: Timestamp,
    /// Application protocols spoken (as client or server).
    pub protocols: BoundedSet<String>,
    /// Services offered: "tcp/1883 mqtt".
    pub services_offered: BoundedSet<String>,
    /// Services used on other hosts: "tcp/443".
    pub services_used: BoundedSet<String>,
    pub mqtt_client_ids: BoundedSet<String>,
    pub mqtt_topics: BoundedSet<String>,
    pub tls_sni: BoundedSet<String>,
    /// Peers talked to (bounded by `device.max_peers`).
    #[serde(skip)]
    pub peers: BoundedSet<IpAddr>,
    pub packets: u64,
    pub bytes: u64,
    /// The address the device was last seen with: an event from it skips the `ips` set.
    #[serde(skip)]
    last_ip: Option<IpAddr>,
    /// The smallest of `ips` (the address its window vectors carry), kept as addresses are
    /// added (none is ever taken out): closing a window then reads it here, not from the
    /// set's B-tree node, a miss in the cache for each device of each window.
    #[serde(skip)]
    first_ip: Option<IpAddr>,
    /// The topic of the device's last MQTT publish (the analyzer shares one string per repeated
    /// topic): a publish to it again skips the `mqtt_topics` set.
    #[serde(skip)]
    last_topic: Option<std::sync::Arc<str>>,
    /// [`Noted`] codes of what `services_used`, `services_offered` and `protocols` hold.
    #[serde(skip)]
    noted: [Noted; 3],
}

impl DeviceProfile {
    /// Adds `ip` to the device's addresses (at most 16; the 17th and on are counted), keeping
    /// `first_ip`; true when the set holds it.
    fn hold_ip(&mut self, ip: IpAddr) -> bool {
        let held = self.ips.insert(ip, 16);
        if held && self.first_ip.is_none_or(|f| ip < f) {
            self.first_ip = Some(ip);
        }
        held
    }
}

/// The codes ([`service_code`]) of the first strings one of a profile's small string sets
/// took, held in the profile itself: services and protocols are noted at every flow start,
/// and the common case, one the set holds already, is then a look at a few words the profile
/// lookup brought into cache, instead of string comparisons down the B-tree's nodes.
#[derive(Clone, Copy, Debug, Default)]
struct Noted {
    n: u8,
    codes: [u32; NOTED],
}

/// Codes a [`Noted`] holds; a set's later strings are looked up in the set itself.
const NOTED: usize = 7;

/// Which of [`DeviceProfile::noted`].
const USED: usize = 0;
const OFFERED: usize = 1;
const PROTOCOLS: usize = 2;

impl Noted {
    /// Adds the string `write` makes (into `scratch`) to `set` unless `code` is one it holds:
    /// the set's own insert (and its count of what it refused) runs for any other.
    fn note(
        &mut self,
        code: u32,
        set: &mut BoundedSet<String>,
        scratch: &mut String,
        write: impl FnOnce(&mut String),
    ) {
        let n = usize::from(self.n);
        if self.codes[..n].contains(&code) {
            return;
        }
        scratch.clear();
        write(scratch);
        if set.insert_str(scratch, SMALL_CAP) && n < NOTED && set.len() == n + 1 {
            self.codes[n] = code;
            self.n += 1;
        }
    }
}

/// A service's code for [`Noted`]: the port, the transport and the application (0 for none).
fn service_code(udp: bool, port: u16, app: Option<AppProto>) -> u32 {
    u32::from(port) | u32::from(udp) << 16 | app.map_or(0, |a| a as u32 + 1) << 17
}

fn ser_display<S: serde::Serializer>(v: &DeviceId, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}
fn ser_ts<S: serde::Serializer>(v: &Timestamp, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&v.rfc3339())
}

const SMALL_CAP: usize = 32;

/// Activity of one device in one window.
#[derive(Clone, Debug, Default)]
struct WindowStats {
    v: [f64; N_FEATURES],
    peers: SmallSet<IpAddr, PEERS_IN_PLACE>,
    /// Peers this device opened flows to.
    out_peers: SmallSet<IpAddr, PEERS_IN_PLACE>,
    ports: SmallSet<u16, 8>,
    /// Each flow's part (flow id, device is the initiator), when the flow log is on.
    flows: HashMap<(u64, bool), FlowWindow>,
}

/// Writes `proto/port` (`tcp/1883`) into `key`, replacing what it held, without the
/// formatting machinery (a service is noted at every flow start).
fn service_key(key: &mut String, proto: &str, port: u16) {
    key.clear();
    key.push_str(proto);
    key.push('/');
    key.push_str(itoa::Buffer::new().format(port));
}

/// Adds `app` to the protocols `p` speaks.
fn note_protocol(p: &mut DeviceProfile, app: AppProto, scratch: &mut String) {
    p.noted[PROTOCOLS].note(app as u32, &mut p.protocols, scratch, |k| {
        k.push_str(app.as_str())
    });
}

/// Adds `ip` to a window's set of distinct peers unless it holds `cap` already: a device's count
/// of distinct peers in one window stops at `max_peers` (a scanner's would grow with every
/// address it tries).
fn add_peer(set: &mut SmallSet<IpAddr, PEERS_IN_PLACE>, ip: IpAddr, cap: usize) {
    if set.len() < cap {
        set.insert(ip);
    }
}

/// Peers a window's stats hold in place (see [`SmallSet`]); more go to a hash set.
const PEERS_IN_PLACE: usize = 4;

/// Entries of the home-network membership cache.
const HOME_CACHE: usize = 256;

/// Rows of the flow log held per device and window (those of flows still open: an ended flow's
/// rows go out at once); beyond it rows are counted, not kept.
pub const MAX_FLOW_LOG_ROWS: usize = 65_536;

/// One flow's part in one device's window, exactly as the window features counted it: the rows
/// of the flow log (`flow_window` events under `--flows`). Per device and window, the sums of
/// the additive features, the distinct `peer_ip` of started rows (up to `max_peers`), the
/// distinct `dest_port` of started TCP/UDP rows where the device is the initiator, and the
/// first window of each (device, peer) give back [`WindowVector::values`] (see `analytics`).
#[derive(Clone, Debug, PartialEq)]
pub struct FlowWindow {
    /// Start of the window.
    pub window: Timestamp,
    pub device: DeviceId,
    pub flow_id: u64,
    /// The device opened the flow (else it answered it).
    pub initiator: bool,
    pub device_ip: IpAddr,
    pub peer_ip: IpAddr,
    /// The peer, when it is a device too.
    pub peer_device: Option<DeviceId>,
    /// IP protocol number.
    pub proto: u8,
    /// The responder's port.
    pub dest_port: u16,
    /// The flow started in this window (counted in flows, peers and ports).
    pub started: bool,
    /// Application protocol detected on the flow in this window.
    pub app: Option<AppProto>,
    /// The additive features (indices of [`FEATURES`]); the set features are 0.
    pub v: [f64; N_FEATURES],
}

/// Indices of [`FEATURES`] that are sums over flows (the rest are counts of distinct values).
pub const ADDITIVE: [usize; 11] = [0, 1, 2, 3, 4, 5, 6, 10, 11, 12, 13];

/// The features of one device in one window.
#[derive(Clone, Debug, PartialEq)]
pub struct WindowVector {
    pub device: DeviceId,
    /// Start of the window.
    pub window: Timestamp,
    pub values: [f64; N_FEATURES],
    /// Peers of the window that the device had never talked to before (bounded).
    pub new_peers: Vec<IpAddr>,
    /// A representative IP of the device.
    pub ip: Option<IpAddr>,
    /// The window is only partly covered by the input (the first window after the start, the
    /// last one at the end): neither learned from nor judged.
    pub partial: bool,
}

/// Output of the device stage.
#[derive(Clone, Debug)]
pub enum DeviceOutput {
    New(Box<DeviceProfile>),
    Window(WindowVector),
    /// A row of the flow log (only when [`Devices::log_flows`] is on), before its window.
    FlowWindow(Box<FlowWindow>),
}

/// Counters of the device stage.
#[derive(Clone, Copy, Debug, Default)]
pub struct DeviceCounters {
    pub devices: u64,
    pub evicted: u64,
    pub routers: u64,
    /// Routers forgotten because the router table was full (`max_devices` MACs).
    pub routers_evicted: u64,
    pub windows: u64,
    /// Updates of a device's window not kept (one per device and event): the window already
    /// held `max_devices` devices.
    pub window_overflow: u64,
    /// Flow log rows not kept (over [`MAX_FLOW_LOG_ROWS`] in a device's window).
    pub flow_log_overflow: u64,
    /// Profiles made again for devices already announced (evicted from the full table, then
    /// seen again): not announced again.
    pub returned: u64,
}

/// The device table and window aggregator.
pub struct Devices {
    cfg: DeviceConfig,
    home: Vec<ipnet::IpNet>,
    profiles: HashMap<DeviceId, DeviceProfile>,
    /// Source IPs seen per MAC, to spot routers (up to `max_devices` MACs).
    mac_ips: HashMap<Mac, HashSet<IpAddr>>,
    /// MACs that carry many source addresses (up to `max_devices`).
    routers: HashSet<Mac>,
    /// Open windows: start -> per device stats.
    windows: std::collections::BTreeMap<Timestamp, HashMap<DeviceId, WindowStats>>,
    /// The first complete window: the one after the window of the first event.
    first_window: Timestamp,
    /// The table of the last window closed, emptied, for the next window to open: it keeps
    /// its room for as many devices (at most `max_devices`), where a new table grew by
    /// doublings, moving every entry (hundreds of bytes each) again at each.
    spare_window: Option<HashMap<DeviceId, WindowStats>>,
    /// Keep each flow's part of the windows, for the flow log. Default off.
    pub log_flows: bool,
    /// Recent answers of "is this address in the home networks" (direct-mapped by address).
    home_cache: Box<[(Option<IpAddr>, bool); HOME_CACHE]>,
    /// Reused buffer for service names.
    scratch: String,
    /// Where the activity of a device beyond a full window goes (see [`Devices::stats`]).
    spill: WindowStats,
    /// Devices already announced (a `device` event written), in two generations of at most
    /// `ANNOUNCED_PER_DEVICE` × `max_devices` ids each. A device evicted from the full table
    /// and seen again gets a new profile, but is not announced again while it is remembered:
    /// under a flood of spoofed home sources, each source was announced again at each return
    /// (546,607 `device` events for 117,315 sources in 300,000 packets). An id takes some 30
    /// bytes here, a profile hundreds.
    announced: Generations<HashSet<DeviceId>>,
    pub counters: DeviceCounters,
}

/// Generations of announced devices, each of at most this many times `max_devices` ids.
const ANNOUNCED_PER_DEVICE: usize = 16;

impl Devices {
    pub fn new(settings: &Settings) -> Self {
        Devices {
            cfg: settings.device.clone(),
            home: settings.home_net.clone(),
            profiles: HashMap::default(),
            mac_ips: HashMap::default(),
            routers: HashSet::default(),
            windows: Default::default(),
            first_window: Timestamp::ZERO,
            spare_window: None,
            log_flows: false,
            home_cache: Box::new([(None, false); HOME_CACHE]),
            scratch: String::new(),
            spill: WindowStats::default(),
            announced: Generations::default(),
            counters: DeviceCounters::default(),
        }
    }

    pub fn window_secs(&self) -> u64 {
        self.cfg.window_secs
    }

    fn window_of(&self, ts: Timestamp) -> Timestamp {
        let w = self.cfg.window_secs.max(1);
        Timestamp::from_secs(ts.secs() / w * w)
    }

    /// The device an endpoint belongs to, if it is one (a unicast home address).
    fn id_of(&mut self, ip: IpAddr, mac: Option<Mac>) -> Option<DeviceId> {
        self.is_device_address(ip).then(|| self.identify(ip, mac))
    }

    /// The device of one end of a flow, if it is one (its worker marked the ends that can be).
    fn end_of(&self, m: &FlowMeta, initiator: bool) -> Option<DeviceId> {
        let (ip, mac, bit) = if initiator {
            (m.initiator.ip, m.initiator_mac, FlowMeta::LOCAL_INITIATOR)
        } else {
            (m.responder.ip, m.responder_mac, FlowMeta::LOCAL_RESPONDER)
        };
        (m.local & bit != 0).then(|| self.identify(ip, mac))
    }

    /// How a device address is identified: by its MAC, unless the MAC is a router's.
    fn identify(&self, ip: IpAddr, mac: Option<Mac>) -> DeviceId {
        match mac {
            Some(m) if m[0] & 1 == 0 && !self.routers.contains(&m) => DeviceId::Mac(m),
            _ => DeviceId::Ip(ip),
        }
    }

    /// The address can be a device (cached: ARP asks for every packet).
    fn is_device_address(&mut self, ip: IpAddr) -> bool {
        let h = match ip {
            IpAddr::V4(v4) => u32::from(v4).wrapping_mul(0x9E37_79B1) >> 24,
            IpAddr::V6(v6) => {
                let x = u128::from(v6);
                ((x as u32) ^ ((x >> 32) as u32) ^ ((x >> 64) as u32) ^ ((x >> 96) as u32))
                    .wrapping_mul(0x9E37_79B1)
                    >> 24
            }
        } as usize;
        let slot = &mut self.home_cache[h % HOME_CACHE];
        if slot.0 == Some(ip) {
            return slot.1;
        }
        let home = crate::settings::device_address(&self.home, ip);
        *slot = (Some(ip), home);
        home
    }

    /// Learns which MACs are routers from the source addresses they carry.
    fn note_mac(&mut self, mac: Option<Mac>, ip: IpAddr) {
        let Some(m) = mac else { return };
        if self.routers.contains(&m) || m[0] & 1 != 0 {
            return;
        }
        if self.mac_ips.len() >= self.cfg.max_devices && !self.mac_ips.contains_key(&m) {
            return;
        }
        let set = self.mac_ips.entry(m).or_default();
        if !set.insert(ip) {
            // A known address: the counts below are those already found too few.
            return;
        }
        let v4 = set.iter().filter(|a| a.is_ipv4()).count();
        let v6 = set.len() - v4;
        // A host has one IPv4 address and a few IPv6 ones; a router carries many.
        if v4 > self.cfg.max_router_ips || v6 > 2 * self.cfg.max_router_ips {
            if self.routers.len() >= self.cfg.max_devices {
                // A flood of MACs that each carry many sources: the router table starts again
                // (its routers are learned anew from their next addresses).
                self.counters.routers_evicted += self.routers.len() as u64;
                self.routers.clear();
            }
            self.routers.insert(m);
            self.mac_ips.remove(&m);
            self.counters.routers += 1;
            // The profile keyed by this MAC was the router's view of many hosts: drop it.
            self.profiles.remove(&DeviceId::Mac(m));
        }
    }

    fn profile(
        &mut self,
        id: DeviceId,
        ip: IpAddr,
        mac: Option<Mac>,
        ts: Timestamp,
        out: &mut Vec<DeviceOutput>,
    ) -> Option<&mut DeviceProfile> {
        if self.profiles.len() >= self.cfg.max_devices && !self.profiles.contains_key(&id) {
            self.evict_devices();
        }
        // One lookup on the common path (a known device).
        let p = match self.profiles.entry(id) {
            hashbrown::hash_map::Entry::Occupied(o) => o.into_mut(),
            hashbrown::hash_map::Entry::Vacant(v) => {
                let mut p = DeviceProfile {
                    id,
                    mac: mac
                        .filter(|_| matches!(id, DeviceId::Mac(_)))
                        .map(|m| fmt_mac(&m)),
                    ips: BoundedSet::default(),
                    first_seen: ts,
                    last_seen: ts,
                    protocols: BoundedSet::default(),
                    services_offered: BoundedSet::default(),
                    services_used: BoundedSet::default(),
                    mqtt_client_ids: BoundedSet::default(),
                    mqtt_topics: BoundedSet::default(),
                    tls_sni: BoundedSet::default(),
                    peers: BoundedSet::default(),
                    packets: 0,
                    bytes: 0,
                    last_ip: Some(ip),
                    first_ip: None,
                    last_topic: None,
                    noted: Default::default(),
                };
                self.counters.devices += 1;
                p.hold_ip(ip);
                let max = self.cfg.max_devices.saturating_mul(ANNOUNCED_PER_DEVICE);
                // Ids forgotten to make room are not counted: they are only announced again.
                if self.announced.learn(id, max.max(1), &mut 0) {
                    self.counters.returned += 1;
                } else {
                    out.push(DeviceOutput::New(Box::new(p.clone())));
                }
                v.insert(p)
            }
        };
        // Most devices have one address: skip the set when it is the last one seen (and held:
        // an address the full set refused is counted each time, as before).
        if p.last_ip != Some(ip) {
            p.last_ip = p.hold_ip(ip).then_some(ip);
        }
        if ts > p.last_seen {
            p.last_seen = ts;
        }
        Some(p)
    }

    /// The device table is full: drops the eighth of its devices seen the least recently
    /// (ties by id, so replays drop the same ones). One look at the table makes room for many
    /// new devices: a stream of new devices (spoofed home sources) costs a constant time each,
    /// not a look at every device each.
    fn evict_devices(&mut self) {
        let seen: Vec<(Timestamp, DeviceId)> = self
            .profiles
            .iter()
            .map(|(id, p)| (p.last_seen, *id))
            .collect();
        let n = (seen.len() / 8).max(1);
        for (_, id) in crate::fast::smallest(seen, n) {
            if self.profiles.remove(&id).is_some() {
                self.counters.evicted += 1;
            }
        }
    }

    /// The activity of device `id` in `window`. A window holds at most `max_devices` devices;
    /// beyond, the update is counted (`window_overflow`) and goes to a scratch entry that no
    /// window keeps.
    fn stats(&mut self, window: Timestamp, id: DeviceId) -> &mut WindowStats {
        self.slot(window, id, true)
    }

    /// [`Devices::stats`], counting a refused update only when `count` (the flow log's look at
    /// the same entry is not another update).
    fn slot(&mut self, window: Timestamp, id: DeviceId, count: bool) -> &mut WindowStats {
        if self.first_window == Timestamp::ZERO {
            self.first_window = window.plus_secs(self.cfg.window_secs);
        }
        let spare = &mut self.spare_window;
        let devices =
            (self.windows.entry(window)).or_insert_with(|| spare.take().unwrap_or_default());
        match crate::fast::entry_within(devices, id, self.cfg.max_devices, WindowStats::default) {
            Some(s) => s,
            None => {
                self.counters.window_overflow += u64::from(count);
                self.spill = WindowStats::default();
                &mut self.spill
            }
        }
    }

    /// The flow log row of `m` in the window of `id` (None when the log is off or full).
    fn row(
        &mut self,
        window: Timestamp,
        id: DeviceId,
        m: &FlowMeta,
        initiator: bool,
    ) -> Option<&mut FlowWindow> {
        if !self.log_flows {
            return None;
        }
        let (me, peer) = if initiator {
            (m.initiator.ip, m.responder.ip)
        } else {
            (m.responder.ip, m.initiator.ip)
        };
        let peer_device = self.end_of(m, !initiator);
        let key = (m.id.0, initiator);
        let flows = &self.slot(window, id, false).flows;
        if !flows.contains_key(&key) && flows.len() >= MAX_FLOW_LOG_ROWS {
            self.counters.flow_log_overflow += 1;
            return None;
        }
        // Looked up again: the borrow above cannot outlive the early return.
        let flows = &mut self.slot(window, id, false).flows;
        Some(flows.entry(key).or_insert_with(|| FlowWindow {
            window,
            device: id,
            flow_id: m.id.0,
            initiator,
            device_ip: me,
            peer_ip: peer,
            peer_device,
            proto: m.proto,
            dest_port: m.responder.port,
            started: false,
            app: None,
            v: [0.0; N_FEATURES],
        }))
    }

    /// Adds `v` to the features from `at` on of device `id` in `window`, and to the flow's row.
    fn add(
        &mut self,
        window: Timestamp,
        id: DeviceId,
        m: &FlowMeta,
        initiator: bool,
        at: usize,
        v: &[f64],
    ) {
        let s = self.stats(window, id);
        for (a, n) in s.v.iter_mut().skip(at).zip(v) {
            *a += n;
        }
        if let Some(r) = self.row(window, id, m, initiator) {
            for (a, n) in r.v.iter_mut().skip(at).zip(v) {
                *a += n;
            }
        }
    }

    /// A flow starts in `window`: one more flow out (initiator) or in for `id`, and its row is
    /// marked started; returns the device's window activity (for its sets of peers and ports).
    fn start(
        &mut self,
        window: Timestamp,
        id: DeviceId,
        m: &FlowMeta,
        initiator: bool,
    ) -> &mut WindowStats {
        let at = if initiator { 4 } else { 5 };
        if let Some(r) = self.row(window, id, m, initiator) {
            r.v[at] += 1.0;
            r.started = true;
        }
        let s = self.stats(window, id);
        s.v[at] += 1.0;
        s
    }

    /// Both ends of a flow as devices (initiator, responder).
    fn ends(&self, m: &FlowMeta) -> (Option<DeviceId>, Option<DeviceId>) {
        (self.end_of(m, true), self.end_of(m, false))
    }

    /// One event from the workers.
    pub fn on_event(&mut self, ev: &Emitted, out: &mut Vec<DeviceOutput>) {
        match ev {
            Emitted::Started(m) => {
                self.note_mac(m.initiator_mac, m.initiator.ip);
                self.note_mac(m.responder_mac, m.responder.ip);
                self.close_before(self.window_of(m.first), out);
                let w = self.window_of(m.first);
                let (a, b) = self.ends(m);
                let proto = if m.proto == 6 {
                    "tcp"
                } else if m.proto == 17 {
                    "udp"
                } else {
                    "ip"
                };
                if let Some(a) = a {
                    let mut key = std::mem::take(&mut self.scratch);
                    if let Some(p) = self.profile(a, m.initiator.ip, m.initiator_mac, m.first, out)
                    {
                        if m.proto == 6 || m.proto == 17 {
                            let port = m.responder.port;
                            let code = service_code(m.proto == 17, port, None);
                            p.noted[USED].note(code, &mut p.services_used, &mut key, |k| {
                                service_key(k, proto, port)
                            });
                        }
                    }
                    self.scratch = key;
                    let cap = self.cfg.max_peers;
                    let s = self.start(w, a, m, true);
                    if m.proto == 6 || m.proto == 17 {
                        s.ports.insert(m.responder.port);
                    }
                    add_peer(&mut s.peers, m.responder.ip, cap);
                    add_peer(&mut s.out_peers, m.responder.ip, cap);
                }
                // A responder is a device only once it answers (a scan's targets that do not
                // exist are not devices); flows towards a known device count as its flows_in.
                if let Some(b) = b.filter(|b| self.profiles.contains_key(b)) {
                    let cap = self.cfg.max_peers;
                    let s = self.start(w, b, m, false);
                    add_peer(&mut s.peers, m.initiator.ip, cap);
                }
            }
            Emitted::Activity {
                meta,
                window,
                fwd,
                rev,
            } => {
                self.close_before(*window, out);
                let (a, b) = self.ends(meta);
                for (id, ip, mac, out_pb, in_pb, initiator) in [
                    (a, meta.initiator.ip, meta.initiator_mac, *fwd, *rev, true),
                    (b, meta.responder.ip, meta.responder_mac, *rev, *fwd, false),
                ] {
                    let Some(id) = id else { continue };
                    if out_pb.0 == 0 && !self.profiles.contains_key(&id) {
                        continue;
                    }
                    // The report does not say when in the window the device sent: a device
                    // first seen here (a responder's answer) is dated no earlier than its flow's
                    // first packet, not at the window's start, which can be before the flow.
                    let seen = (*window).max(meta.first);
                    if let Some(p) = self.profile(id, ip, mac, seen, out) {
                        p.packets += out_pb.0 + in_pb.0;
                        p.bytes += out_pb.1 + in_pb.1;
                    }
                    // Features 0..4: packets out, in, bytes out, in.
                    let v = [out_pb.0, in_pb.0, out_pb.1, in_pb.1].map(|n| n as f64);
                    self.add(*window, id, meta, initiator, 0, &v);
                }
            }
            Emitted::App {
                meta,
                ts,
                event,
                dir,
            } => {
                let w = self.window_of(*ts);
                let (a, b) = self.ends(meta);
                let (Some(a), server) = (a, b) else {
                    // Server-side facts only.
                    if let (Some(b), ProtoEvent::Detected { app }) = (b, event) {
                        self.offered(b, meta, *app, *ts, out);
                    }
                    return;
                };
                match event {
                    ProtoEvent::Detected { app } => {
                        let idx = match app {
                            AppProto::Mqtt | AppProto::MqttWs => Some(11),
                            AppProto::Http => Some(12),
                            AppProto::Tls => Some(13),
                            _ => None,
                        };
                        if let Some(i) = idx {
                            self.add(w, a, meta, true, i, &[1.0]);
                        }
                        if let Some(r) = self.row(w, a, meta, true) {
                            r.app = Some(*app);
                        }
                        let mut key = std::mem::take(&mut self.scratch);
                        if let Some(p) =
                            self.profile(a, meta.initiator.ip, meta.initiator_mac, *ts, out)
                        {
                            note_protocol(p, *app, &mut key);
                        }
                        self.scratch = key;
                        if let Some(b) = server {
                            self.offered(b, meta, *app, *ts, out);
                        }
                    }
                    ProtoEvent::MqttPublish { topic, .. } if *dir == Direction::Forward => {
                        self.add(w, a, meta, true, 6, &[1.0]);
                        if let Some(p) =
                            self.profile(a, meta.initiator.ip, meta.initiator_mac, *ts, out)
                        {
                            let again = p
                                .last_topic
                                .as_ref()
                                .is_some_and(|t| std::sync::Arc::ptr_eq(t, topic));
                            if !again {
                                // Only a topic the set holds (a refused one is counted again).
                                p.last_topic = p
                                    .mqtt_topics
                                    .insert_str(topic, SMALL_CAP)
                                    .then(|| std::sync::Arc::clone(topic));
                            }
                        }
                    }
                    ProtoEvent::MqttConnect { client_id, .. } => {
                        if let Some(p) =
                            self.profile(a, meta.initiator.ip, meta.initiator_mac, *ts, out)
                        {
                            p.mqtt_client_ids.insert_str(client_id, 8);
                        }
                    }
                    ProtoEvent::TlsClientHello { sni: Some(sni), .. } => {
                        if let Some(p) =
                            self.profile(a, meta.initiator.ip, meta.initiator_mac, *ts, out)
                        {
                            p.tls_sni.insert_str(sni, SMALL_CAP);
                        }
                    }
                    _ => {}
                }
            }
            Emitted::Flow(r) => {
                if r.failed_attempt() {
                    let w = self.window_of(r.last);
                    if let Some(a) = self.end_of(&r.meta, true) {
                        self.add(w, a, &r.meta, true, 10, &[1.0]);
                    }
                }
                // A slice cut by the active timeout is not the flow's end: it goes on (same
                // flow id), and its rows with it.
                if self.log_flows && r.end != crate::flow::FlowEnd::ActiveTimeout {
                    self.flow_rows_done(&r.meta, out);
                }
            }
            Emitted::Packet(p) => {
                if let Net::Arp(arp) = p.net {
                    let ip = IpAddr::V4(arp.sender_ip);
                    if !arp.sender_ip.is_unspecified() {
                        if let Some(id) = self.id_of(ip, Some(arp.sender_mac)) {
                            self.profile(id, ip, Some(arp.sender_mac), p.ts, out);
                        }
                    }
                }
            }
        }
    }

    fn offered(
        &mut self,
        b: DeviceId,
        meta: &FlowMeta,
        app: AppProto,
        ts: Timestamp,
        out: &mut Vec<DeviceOutput>,
    ) {
        let proto = if meta.proto == 6 { "tcp" } else { "udp" };
        let mut key = std::mem::take(&mut self.scratch);
        if let Some(p) = self.profile(b, meta.responder.ip, meta.responder_mac, ts, out) {
            let port = meta.responder.port;
            let code = service_code(meta.proto != 6, port, Some(app));
            p.noted[OFFERED].note(code, &mut p.services_offered, &mut key, |k| {
                service_key(k, proto, port);
                k.push(' ');
                k.push_str(app.as_str());
            });
            note_protocol(p, app, &mut key);
        }
        self.scratch = key;
    }

    /// A flow's rows are complete once it has ended (its final record is its last event): they go
    /// out now, oldest window first, instead of when their windows close. The rows held are
    /// then those of flows still open, which the flow table's cap bounds, not every flow of
    /// the window.
    fn flow_rows_done(&mut self, m: &FlowMeta, out: &mut Vec<DeviceOutput>) {
        let (a, b) = self.ends(m);
        for devices in self.windows.values_mut() {
            for (id, initiator) in [(a, true), (b, false)] {
                let Some(s) = id.and_then(|id| devices.get_mut(&id)) else {
                    continue;
                };
                if let Some(r) = s.flows.remove(&(m.id.0, initiator)) {
                    out.push(DeviceOutput::FlowWindow(Box::new(r)));
                }
            }
        }
    }

    /// Closes every window that ended more than one window before `window` (late events of the
    /// previous window are still taken).
    fn close_before(&mut self, window: Timestamp, out: &mut Vec<DeviceOutput>) {
        let w = self.cfg.window_secs.max(1);
        let limit = Timestamp(window.0.saturating_sub(w * 1_000_000_000));
        while let Some((&start, _)) = self.windows.iter().next() {
            if start >= limit {
                break;
            }
            if let Some(map) = self.windows.remove(&start) {
                self.emit_window(start, map, false, out);
            }
        }
    }

    fn emit_window(
        &mut self,
        start: Timestamp,
        mut map: HashMap<DeviceId, WindowStats>,
        final_close: bool,
        out: &mut Vec<DeviceOutput>,
    ) {
        // In device id order; the window stats (hundreds of bytes each) stay where they are.
        let mut ids: Vec<DeviceId> = map.keys().copied().collect();
        ids.sort_unstable();
        let cap = self.cfg.max_peers;
        for id in ids {
            let Some(s) = map.get_mut(&id) else { continue };
            let mut new_peers = Vec::new();
            let mut ip = None;
            if let Some(p) = self.profiles.get_mut(&id) {
                ip = p.first_ip;
                let mut peers: Vec<_> = s.out_peers.iter().copied().collect();
                peers.sort();
                for peer in peers {
                    if !p.peers.contains(&peer) {
                        if new_peers.len() < 64 {
                            new_peers.push(peer);
                        }
                        p.peers.insert(peer, cap);
                    }
                }
            }
            if !s.flows.is_empty() {
                let mut rows: Vec<_> = s.flows.drain().map(|(_, r)| r).collect();
                rows.sort_by_key(|r| (r.flow_id, !r.initiator));
                out.extend(
                    rows.into_iter()
                        .map(|r| DeviceOutput::FlowWindow(Box::new(r))),
                );
            }
            s.v[7] = s.peers.len() as f64;
            s.v[8] = new_peers.len() as f64;
            s.v[9] = s.ports.len() as f64;
            self.counters.windows += 1;
            out.push(DeviceOutput::Window(WindowVector {
                device: id,
                window: start,
                values: s.v,
                new_peers,
                ip,
                partial: start < self.first_window || final_close,
            }));
        }
        map.clear();
        self.spare_window = Some(map);
    }

    /// End of input: closes every open window.
    pub fn finish(&mut self, out: &mut Vec<DeviceOutput>) {
        while let Some((&start, _)) = self.windows.iter().next() {
            if let Some(map) = self.windows.remove(&start) {
                // Only the last window is cut by the end of input.
                let last = self.windows.is_empty();
                self.emit_window(start, map, last, out);
            }
        }
    }

    /// The inventory, ordered by first appearance.
    pub fn inventory(&self) -> Vec<&DeviceProfile> {
        let mut v: Vec<_> = self.profiles.values().collect();
        v.sort_by_key(|p| (p.first_seen, p.id));
        v
    }

    pub fn get(&self, id: &DeviceId) -> Option<&DeviceProfile> {
        self.profiles.get(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::FlowId;

    /// A TCP flow from home address 198.18.0.`n` (no MACs: the device is its address) to a
    /// server outside the home networks, starting at second `t`.
    fn started(n: u32, t: u64) -> Emitted {
        let ts = Timestamp::from_secs(1_800_000_000 + t);
        Emitted::Started(FlowMeta {
            id: FlowId(u64::from(n)),
            initiator: crate::flow::Endpoint {
                ip: IpAddr::V4(std::net::Ipv4Addr::from(0xc612_0000 + n)),
                port: 40_000,
            },
            responder: crate::flow::Endpoint {
                ip: "203.0.113.7".parse().unwrap(),
                port: 443,
            },
            proto: 6,
            vlan: crate::decode::Vlans::default(),
            vni: None,
            first: ts,
            initiator_mac: None,
            responder_mac: None,
            local: FlowMeta::LOCAL_INITIATOR,
        })
    }

    /// A device stage with the default settings but for `set`'s changes to `[device]`.
    fn devices(set: impl FnOnce(&mut crate::settings::DeviceConfig)) -> Devices {
        let mut settings = Settings::default();
        set(&mut settings.device);
        Devices::new(&settings)
    }

    fn ip_id(n: u32) -> DeviceId {
        DeviceId::Ip(IpAddr::V4(std::net::Ipv4Addr::from(0xc612_0000 + n)))
    }

    /// Services noted through the profile's codes give the set (and the count of refusals) a
    /// plain bounded set gives: one device's flows to 45 ports in turn, 7 of them held in the
    /// profile itself, 32 in the set, the rest refused each time they come again.
    #[test]
    fn services_noted_by_code_match_a_plain_bounded_set() {
        let mut d = devices(|_| {});
        let mut plain = BoundedSet::<String>::default();
        let mut out = Vec::new();
        for round in 0..3u64 {
            for port in (1000..1045u16).rev() {
                let Emitted::Started(mut m) = started(1, round * 100 + u64::from(port % 50)) else {
                    unreachable!()
                };
                m.responder.port = port;
                d.on_event(&Emitted::Started(m), &mut out);
                plain.insert_str(&format!("tcp/{port}"), SMALL_CAP);
            }
        }
        let p = d.get(&ip_id(1)).expect("the device");
        assert_eq!(p.services_used.items, plain.items);
        assert_eq!(p.services_used.len(), SMALL_CAP);
        assert_eq!(p.services_used.overflow, plain.overflow);
        assert_eq!(plain.overflow, 3 * 13);
        assert_eq!(usize::from(p.noted[USED].n), NOTED);
    }

    /// A closed window's table opens the next window emptied, with its room kept: each
    /// window's vectors hold its own devices and counts only.
    #[test]
    fn a_reused_window_table_starts_empty() {
        let mut d = devices(|_| {});
        let mut out = Vec::new();
        // Window 0: devices 1-20, one flow each and device 1 a second; window 3: device 21
        // alone (its flow start closes window 0), then the end of input.
        for n in 1..=20 {
            d.on_event(&started(n, 5), &mut out);
        }
        d.on_event(&started(1, 8), &mut out);
        d.on_event(&started(21, 185), &mut out);
        let open: Vec<_> = d.windows.values().collect();
        assert_eq!(open.len(), 1);
        assert_eq!(open[0].len(), 1);
        assert!(open[0].capacity() >= 20, "window 0's room is kept");
        d.finish(&mut out);
        let vectors: Vec<(Timestamp, DeviceId, f64)> = out
            .iter()
            .filter_map(|o| match o {
                DeviceOutput::Window(w) => Some((w.window, w.device, w.values[4])),
                _ => None,
            })
            .collect();
        let w0 = Timestamp::from_secs((1_800_000_000 + 5) / 60 * 60);
        let mut want: Vec<_> = (1..=20)
            .map(|n| (w0, ip_id(n), if n == 1 { 2.0 } else { 1.0 }))
            .collect();
        want.sort_by_key(|v| v.1);
        want.push((w0.plus_secs(180), ip_id(21), 1.0));
        assert_eq!(vectors, want);
    }

    /// A profile's `first_ip` is the smallest address its `ips` set holds, whatever the order
    /// addresses come in, IPv4 and IPv6, and once the set is full (16) and refuses the rest.
    #[test]
    fn a_profiles_first_ip_is_the_smallest_it_holds() {
        let mut rng = crate::proto::testutil::XorShift::new(7);
        for round in 0..200 {
            let mut d = devices(|_| {});
            let mut out = Vec::new();
            let id = ip_id(1);
            let ts = Timestamp::from_secs(1_800_000_000);
            for _ in 0..rng.below(40) + 1 {
                let ip = match rng.below(3) {
                    0 => IpAddr::from([198, 18, 0, rng.below(256) as u8]),
                    1 => IpAddr::from([198, 19, rng.below(4) as u8, rng.below(256) as u8]),
                    _ => IpAddr::from([0xfd00, 0, 0, 0, 0, 0, 0, rng.below(65_536) as u16]),
                };
                d.profile(id, ip, None, ts, &mut out);
            }
            let p = d.get(&id).expect("the device");
            assert_eq!(p.first_ip, p.ips.items.first().copied(), "round {round}");
        }
    }

    #[test]
    fn a_profile_keeps_names_cut_to_max_kept() {
        let mut set = BoundedSet::<String>::default();
        // 'a' then two-byte characters: byte 256 falls inside one.
        let long = format!("a{}", "é".repeat(40_000));
        assert!(set.insert_str(&long, 4));
        assert!(set.insert_str(&long, 4), "the same name again is held");
        assert!(set.insert_str("site/cam1/temp", 4));
        let kept: Vec<&str> = set.items.iter().map(String::as_str).collect();
        assert_eq!(kept, [&long[..255], "site/cam1/temp"]);
    }

    #[test]
    fn a_window_holds_at_most_max_devices_devices() {
        let mut d = devices(|c| c.max_devices = 80);
        let mut out = Vec::new();
        // 200 devices in one window (10 s), then one event three windows later closes it.
        for n in 0..200 {
            d.on_event(&started(n, u64::from(n) / 20), &mut out);
        }
        assert_eq!(d.windows.values().map(|w| w.len()).sum::<usize>(), 80);
        d.on_event(&started(0, 200), &mut out);
        let first = Timestamp::from_secs(1_800_000_000 / 60 * 60);
        let vectors = out
            .iter()
            .filter(|o| matches!(o, DeviceOutput::Window(w) if w.window == first))
            .count();
        assert_eq!(vectors, 80);
        // The other 120 devices' flow starts were not counted in the window.
        assert_eq!(d.counters.window_overflow, 120);
    }

    #[test]
    fn a_devices_distinct_peers_in_a_window_stop_at_max_peers() {
        let mut d = devices(|c| c.max_peers = 10);
        let mut out = Vec::new();
        // Device 1 opens flows to 50 hosts in one window.
        for n in 0..50u8 {
            let mut e = started(1, 1);
            if let Emitted::Started(m) = &mut e {
                m.responder.ip = IpAddr::from([203, 0, 113, n]);
            }
            d.on_event(&e, &mut out);
        }
        d.on_event(&started(1, 200), &mut out);
        let w = out
            .iter()
            .find_map(|o| match o {
                DeviceOutput::Window(w) if w.device == ip_id(1) => Some(w),
                _ => None,
            })
            .unwrap();
        assert_eq!(w.values[4], 50.0, "flows out");
        assert_eq!(w.values[7], 10.0, "distinct peers");
    }

    #[test]
    fn the_router_table_is_capped_too() {
        let mut d = devices(|c| c.max_devices = 4);
        let mut out = Vec::new();
        // 10 MACs, each carrying 3 source addresses (more than max_router_ips = 2): routers.
        for mac in 0..10u8 {
            for host in 0..3u32 {
                let mut e = started(u32::from(mac) * 8 + host, 0);
                if let Emitted::Started(m) = &mut e {
                    m.initiator_mac = Some([2, 0, 0, 0, 0, mac]);
                }
                d.on_event(&e, &mut out);
            }
            assert!(d.routers.len() <= 4);
        }
        assert_eq!(d.counters.routers, 10);
        assert_eq!(d.counters.routers_evicted, 8);
        // The last two were learned after the second restart; their hosts are told apart by IP.
        assert!(d.routers.contains(&[2, 0, 0, 0, 0, 9]));
        assert!(d.routers.contains(&[2, 0, 0, 0, 0, 8]));
        assert!(d.get(&ip_id(9 * 8 + 2)).is_some());
    }

    #[test]
    fn a_full_device_table_drops_the_devices_seen_least_recently() {
        let mut d = devices(|c| c.max_devices = 80);
        let mut out = Vec::new();
        // 200 devices, one a second; device 0 is seen again every second, so it stays.
        for n in 0..200 {
            d.on_event(&started(n, u64::from(n)), &mut out);
            d.on_event(&started(0, u64::from(n)), &mut out);
            assert!(d.profiles.len() <= 80);
            if n == 80 {
                // The 81st device found the table full: ten went at once to make room.
                assert_eq!(d.profiles.len(), 71);
                assert_eq!(d.counters.evicted, 10);
            }
        }
        let created = out
            .iter()
            .filter(|o| matches!(o, DeviceOutput::New(_)))
            .count() as u64;
        assert_eq!(created, d.counters.devices);
        assert_eq!(d.counters.evicted, created - d.profiles.len() as u64);
        assert!(d.get(&ip_id(0)).is_some(), "the busy device is kept");
        // Room is made ten devices at a time: the newest 70 are all there, and what was
        // dropped is older than anything kept (device 0 aside, which is recent).
        for n in 130..200 {
            assert!(d.get(&ip_id(n)).is_some(), "device {n}");
        }
        let oldest_kept = (1..200).find(|&n| d.get(&ip_id(n)).is_some()).unwrap();
        assert!((oldest_kept..200).all(|n| d.get(&ip_id(n)).is_some()));
        assert!(d.counters.evicted >= 119);
    }

    /// A device evicted from the full table and seen again gets a new profile, but is not
    /// announced again while it is remembered (`ANNOUNCED_PER_DEVICE` × `max_devices` ids a
    /// generation); once pushed out of both generations it is announced anew.
    #[test]
    fn a_returning_device_is_not_announced_again() {
        let mut d = devices(|c| c.max_devices = 8);
        let mut out = Vec::new();
        let announced = |out: &[DeviceOutput]| {
            out.iter()
                .filter(|o| matches!(o, DeviceOutput::New(_)))
                .count()
        };
        // 40 devices, twice over: the table of 8 keeps evicting, so each device's second flow
        // makes it a new profile.
        for round in 0..2u64 {
            for n in 0..40 {
                d.on_event(&started(n, round * 100 + u64::from(n)), &mut out);
            }
        }
        assert_eq!(announced(&out), 40);
        assert_eq!((d.counters.devices, d.counters.returned), (80, 40));
        // A generation holds 16 × 8 = 128 ids: 300 new devices push the first 40 out of both.
        out.clear();
        for n in 100..400 {
            d.on_event(&started(n, 1_000 + u64::from(n)), &mut out);
        }
        for n in 0..40 {
            d.on_event(&started(n, 2_000 + u64::from(n)), &mut out);
        }
        assert_eq!(announced(&out), 340);
        assert_eq!(d.counters.returned, 40);
    }

    #[test]
    fn service_keys_are_written_by_hand_as_proto_slash_port() {
        let mut key = String::from("left over");
        for (proto, port, want) in [
            ("tcp", 1883, "tcp/1883"),
            ("udp", 0, "udp/0"),
            ("udp", 7, "udp/7"),
            ("tcp", 65535, "tcp/65535"),
        ] {
            service_key(&mut key, proto, port);
            assert_eq!(key, want);
            assert_eq!(key, format!("{proto}/{port}"));
        }
    }
}
