//! Validated settings: the optional TOML config file merged with command-line values.
//!
//! Every field of the config file is optional; its default and unit are documented here and in
//! `tapwatch.example.toml` (see README). Errors name the file, the line and the reason.

use crate::flow::{FlowConfig, ReassemblyLimits};
use ipnet::IpNet;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;
use toml::Spanned;

/// A configuration problem, located.
#[derive(Debug, thiserror::Error)]
#[error("{file}:{line}: {reason}")]
pub struct ConfigError {
    pub file: String,
    pub line: usize,
    pub reason: String,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawConfig {
    network: RawNetwork,
    /// Zone name -> CIDRs.
    zones: BTreeMap<String, Vec<Spanned<String>>>,
    flow: RawFlow,
    reassembly: RawReassembly,
    alert: RawAlert,
    output: RawOutput,
    device: RawDevice,
    /// Zone segmentation policy: `[[segmentation]]` entries.
    segmentation: Vec<RawSegmentation>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSegmentation {
    from: Spanned<String>,
    to: Spanned<String>,
    #[serde(default)]
    allow: Vec<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawDevice {
    window_secs: Option<u64>,
    max_devices: Option<usize>,
    max_peers: Option<usize>,
    max_router_ips: Option<usize>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawNetwork {
    home_net: Option<Vec<Spanned<String>>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawFlow {
    max_flows: Option<usize>,
    tcp_idle_timeout_secs: Option<u64>,
    tcp_half_open_timeout_secs: Option<u64>,
    tcp_closed_timeout_secs: Option<u64>,
    udp_idle_timeout_secs: Option<u64>,
    other_idle_timeout_secs: Option<u64>,
    active_timeout_secs: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawReassembly {
    depth_bytes: Option<u64>,
    max_ooo_bytes: Option<usize>,
    max_ooo_segments: Option<usize>,
    memcap_bytes: Option<usize>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawAlert {
    default_suppress_secs: Option<u64>,
    reveal_secrets: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawOutput {
    stats_interval_secs: Option<u64>,
}

/// Default home networks: RFC 1918, the benchmarking range, unique-local and link-local IPv6.
pub const DEFAULT_HOME_NET: &[&str] = &[
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "198.18.0.0/15",
    "169.254.0.0/16",
    "fc00::/7",
    "fe80::/10",
];

/// Service names usable in `[[segmentation]] allow` lists: name -> (IP protocol, ports).
pub const SERVICE_NAMES: &[(&str, u8, &[u16])] = &[
    ("ssh", 6, &[22]),
    ("telnet", 6, &[23, 2323]),
    ("smb", 6, &[445, 139]),
    ("rdp", 6, &[3389]),
    ("winrm", 6, &[5985, 5986]),
    ("vnc", 6, &[5900, 5901, 5902, 5903]),
    ("dcerpc", 6, &[135]),
    ("http", 6, &[80, 8080]),
    ("https", 6, &[443, 8443]),
    ("dns", 17, &[53]),
    ("dns", 6, &[53]),
    ("ntp", 17, &[123]),
    ("mqtt", 6, &[1883]),
    ("mqtts", 6, &[8883]),
    ("modbus", 6, &[502]),
    ("s7", 6, &[102]),
    ("dnp3", 6, &[20000]),
    ("bacnet", 17, &[47808]),
    ("opcua", 6, &[4840]),
    ("coap", 17, &[5683]),
    ("snmp", 17, &[161]),
    ("syslog", 17, &[514]),
    ("dhcp", 17, &[67]),
    ("ftp", 6, &[21]),
    ("rtsp", 6, &[554]),
];

/// One allowed service of a segmentation entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AllowedService {
    Any,
    Icmp,
    /// IP protocol and inclusive port range.
    Ports {
        proto: u8,
        lo: u16,
        hi: u16,
    },
}

impl AllowedService {
    fn parse(s: &str) -> Result<Vec<AllowedService>, String> {
        let t = s.trim().to_ascii_lowercase();
        match t.as_str() {
            "any" | "*" => return Ok(vec![AllowedService::Any]),
            "icmp" => return Ok(vec![AllowedService::Icmp]),
            _ => {}
        }
        if let Some((proto, ports)) = t.split_once('/') {
            let proto = match proto {
                "tcp" => 6,
                "udp" => 17,
                _ => return Err(format!("unknown protocol in {s:?} (tcp or udp)")),
            };
            let port = |x: &str| {
                x.trim()
                    .parse::<u16>()
                    .map_err(|_| format!("bad port in {s:?} (0..65535)"))
            };
            let (lo, hi) = match ports.split_once('-') {
                Some((a, b)) => (port(a)?, port(b)?),
                None => (port(ports)?, port(ports)?),
            };
            if lo > hi {
                return Err(format!("empty port range in {s:?}"));
            }
            return Ok(vec![AllowedService::Ports { proto, lo, hi }]);
        }
        let v: Vec<AllowedService> = SERVICE_NAMES
            .iter()
            .filter(|(n, _, _)| *n == t)
            .flat_map(|(_, proto, ports)| {
                ports.iter().map(|p| AllowedService::Ports {
                    proto: *proto,
                    lo: *p,
                    hi: *p,
                })
            })
            .collect();
        if v.is_empty() {
            return Err(format!(
                "unknown service {s:?} (tcp/PORT, udp/PORT, tcp/LO-HI, icmp, any, or one of: {})",
                SERVICE_NAMES
                    .iter()
                    .map(|(n, _, _)| *n)
                    .collect::<std::collections::BTreeSet<_>>()
                    .into_iter()
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        Ok(v)
    }

    fn matches(&self, proto: u8, port: u16) -> bool {
        match *self {
            AllowedService::Any => true,
            AllowedService::Icmp => proto == 1 || proto == 58,
            AllowedService::Ports { proto: p, lo, hi } => p == proto && (lo..=hi).contains(&port),
        }
    }
}

/// One `[[segmentation]]` entry: hosts of zone `from` may open `allow` in zone `to`
/// (`"*"` = any zone).
#[derive(Clone, Debug)]
pub struct SegmentationRule {
    pub from: String,
    pub to: String,
    pub allow: Vec<AllowedService>,
    /// The allow list as written (for alerts).
    pub allow_text: Vec<String>,
    pub line: usize,
}

/// Alert settings.
#[derive(Clone, Debug)]
pub struct AlertConfig {
    /// Suppression window for repeats of the same finding, when its rule sets none
    /// (seconds of packet time). Default 600.
    pub default_suppress_secs: u64,
    /// Write passwords seen on the wire in clear (forensic replay). Default false: masked.
    pub reveal_secrets: bool,
}

/// Device inventory and baseline settings.
#[derive(Clone, Debug)]
pub struct DeviceConfig {
    /// Baseline window (seconds of packet time). Default 60.
    pub window_secs: u64,
    /// Devices tracked (and MACs tracked as routers, or as router candidates; devices counted
    /// in one window; devices given a baseline while learning); when the device table is full,
    /// the eighth of it seen least recently is evicted. Default 10,000.
    pub max_devices: usize,
    /// Peers (and services) remembered per device; also where a device's count of distinct
    /// peers in one window stops. Default 1,024.
    pub max_peers: usize,
    /// A MAC address seen with more source IPv4 addresses than this (or twice as many IPv6
    /// ones) is a router: the devices behind it are told apart by IP. Default 2.
    pub max_router_ips: usize,
}

impl Default for DeviceConfig {
    fn default() -> Self {
        DeviceConfig {
            window_secs: 60,
            max_devices: 10_000,
            max_peers: 1024,
            max_router_ips: 2,
        }
    }
}

/// Everything the pipeline needs, validated.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Networks considered internal. Default [`DEFAULT_HOME_NET`].
    pub home_net: Vec<IpNet>,
    /// Named zones (name, networks), in name order.
    pub zones: Zones,
    pub flow: FlowConfig,
    pub alert: AlertConfig,
    pub device: DeviceConfig,
    /// Interval of `stats` events in live mode (seconds of packet time; 0 = only at the end).
    /// Default 60.
    pub stats_interval_secs: u64,
    /// Zone segmentation policy; empty = no policy. Connections between two different zones
    /// are allowed only when an entry allows them; traffic inside one zone is not checked.
    pub segmentation: Vec<SegmentationRule>,
    /// The segmentation rules (indices of `segmentation`) by (from, to) zone index, `ANY_ZONE`
    /// for `"*"`: a flow between two zones asks four pairs, not every rule.
    segmentation_pairs: crate::fast::HashMap<(usize, usize), Vec<usize>>,
}

/// `"*"` in [`Settings::segmentation_pairs`].
const ANY_ZONE: usize = usize::MAX;

impl Default for Settings {
    fn default() -> Self {
        Settings {
            home_net: DEFAULT_HOME_NET
                .iter()
                .filter_map(|s| s.parse().ok())
                .collect(),
            zones: Zones::default(),
            flow: FlowConfig::default(),
            alert: AlertConfig {
                default_suppress_secs: 600,
                reveal_secrets: false,
            },
            stats_interval_secs: 60,
            device: DeviceConfig::default(),
            segmentation: Vec::new(),
            segmentation_pairs: Default::default(),
        }
    }
}

/// The line (from 1) of byte `offset` of `text`.
pub(crate) fn line_of(text: &str, offset: usize) -> usize {
    Lines::new(text).line_of(offset)
}

/// Lines of the entries of one file, asked in file order: each count goes on from the last
/// one, so a file of thousands of entries is read once, not once per entry.
pub(crate) struct Lines<'a> {
    text: &'a str,
    /// The byte offset counted up to, and its line.
    at: usize,
    line: usize,
}

impl<'a> Lines<'a> {
    pub(crate) fn new(text: &'a str) -> Self {
        Lines {
            text,
            at: 0,
            line: 1,
        }
    }

    /// The line (from 1) of byte `offset`.
    pub(crate) fn line_of(&mut self, offset: usize) -> usize {
        let offset = offset.min(self.text.len());
        if offset < self.at {
            *self = Lines::new(self.text);
        }
        let newlines = (self.text.as_bytes().get(self.at..offset))
            .map_or(0, |t| t.iter().filter(|&&b| b == b'\n').count());
        self.line += newlines;
        self.at = offset;
        self.line
    }
}

/// Parses a comma-separated list of CIDRs (or bare addresses).
pub fn parse_cidrs(s: &str) -> Result<Vec<IpNet>, String> {
    s.split(',')
        .map(str::trim)
        .filter(|x| !x.is_empty())
        .map(parse_cidr)
        .collect()
}

pub fn parse_cidr(s: &str) -> Result<IpNet, String> {
    s.parse::<IpNet>()
        .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| format!("invalid network {s:?} (expected CIDR such as 198.18.0.0/15)"))
}

impl Settings {
    /// Reads a config file on top of the defaults.
    pub fn from_file(path: &Path) -> Result<Settings, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: file.clone(),
            line: 0,
            reason: e.to_string(),
        })?;
        Settings::from_toml(&file, &text)
    }

    pub fn from_toml(file: &str, text: &str) -> Result<Settings, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError {
            file: file.into(),
            line: e.span().map_or(0, |s| line_of(text, s.start)),
            reason: e.message().to_string(),
        })?;
        let nets = |v: &[Spanned<String>]| -> Result<Vec<IpNet>, ConfigError> {
            v.iter()
                .map(|s| {
                    parse_cidr(s.get_ref()).map_err(|reason| ConfigError {
                        file: file.into(),
                        line: line_of(text, s.span().start),
                        reason,
                    })
                })
                .collect()
        };
        let mut st = Settings::default();
        if let Some(h) = &raw.network.home_net {
            st.home_net = nets(h)?;
        }
        for (name, v) in &raw.zones {
            st.zones.push(name.clone(), nets(v)?);
        }
        let mut seg_lines = Lines::new(text);
        for seg in &raw.segmentation {
            let zone_ok = |z: &Spanned<String>| -> Result<String, ConfigError> {
                let name = z.get_ref();
                if name == "*" || st.zones.contains(name) {
                    Ok(name.clone())
                } else {
                    Err(ConfigError {
                        file: file.into(),
                        line: line_of(text, z.span().start),
                        reason: format!(
                            "segmentation: unknown zone {name:?} (define it under [zones], or use \"*\")"
                        ),
                    })
                }
            };
            let from = zone_ok(&seg.from)?;
            let to = zone_ok(&seg.to)?;
            let mut allow = Vec::new();
            for a in &seg.allow {
                allow.extend(
                    AllowedService::parse(a.get_ref()).map_err(|reason| ConfigError {
                        file: file.into(),
                        line: line_of(text, a.span().start),
                        reason: format!("segmentation: {reason}"),
                    })?,
                );
            }
            let zone = |z: &str| st.zones.position(z).unwrap_or(ANY_ZONE);
            let pair = (zone(&from), zone(&to));
            let i = st.segmentation.len();
            st.segmentation_pairs.entry(pair).or_default().push(i);
            st.segmentation.push(SegmentationRule {
                from,
                to,
                allow,
                allow_text: seg.allow.iter().map(|a| a.get_ref().clone()).collect(),
                line: seg_lines.line_of(seg.from.span().start),
            });
        }
        let f = &raw.flow;
        let d = FlowConfig::default();
        st.flow = FlowConfig {
            max_flows: f.max_flows.unwrap_or(d.max_flows),
            tcp_idle_timeout: f.tcp_idle_timeout_secs.unwrap_or(d.tcp_idle_timeout),
            tcp_half_open_timeout: f
                .tcp_half_open_timeout_secs
                .unwrap_or(d.tcp_half_open_timeout),
            tcp_closed_timeout: f.tcp_closed_timeout_secs.unwrap_or(d.tcp_closed_timeout),
            udp_idle_timeout: f.udp_idle_timeout_secs.unwrap_or(d.udp_idle_timeout),
            other_idle_timeout: f.other_idle_timeout_secs.unwrap_or(d.other_idle_timeout),
            active_timeout: f.active_timeout_secs.unwrap_or(d.active_timeout),
            window_secs: raw.device.window_secs.unwrap_or(60),
            reassembly: {
                let r = &raw.reassembly;
                let dr = ReassemblyLimits::default();
                ReassemblyLimits {
                    depth: r.depth_bytes.unwrap_or(dr.depth),
                    max_ooo_bytes: r.max_ooo_bytes.unwrap_or(dr.max_ooo_bytes),
                    max_ooo_segments: r.max_ooo_segments.unwrap_or(dr.max_ooo_segments),
                    memcap: r.memcap_bytes.unwrap_or(dr.memcap),
                }
            },
        };
        if st.flow.max_flows == 0 {
            return Err(ConfigError {
                file: file.into(),
                line: line_of(text, text.find("max_flows").unwrap_or(0)),
                reason: "flow.max_flows must be at least 1".into(),
            });
        }
        if st.flow.reassembly.memcap == 0 {
            return Err(ConfigError {
                file: file.into(),
                line: line_of(text, text.find("memcap_bytes").unwrap_or(0)),
                reason: "reassembly.memcap_bytes must be at least 1".into(),
            });
        }
        let dd = DeviceConfig::default();
        st.device = DeviceConfig {
            window_secs: raw.device.window_secs.unwrap_or(dd.window_secs),
            max_devices: raw.device.max_devices.unwrap_or(dd.max_devices),
            max_peers: raw.device.max_peers.unwrap_or(dd.max_peers),
            max_router_ips: raw.device.max_router_ips.unwrap_or(dd.max_router_ips),
        };
        for (key, v) in [
            ("window_secs", st.device.window_secs),
            ("max_devices", st.device.max_devices as u64),
            ("max_peers", st.device.max_peers as u64),
        ] {
            if v == 0 {
                return Err(ConfigError {
                    file: file.into(),
                    line: line_of(text, text.find(key).unwrap_or(0)),
                    reason: format!("device.{key} must be at least 1"),
                });
            }
        }
        if let Some(s) = raw.alert.default_suppress_secs {
            st.alert.default_suppress_secs = s;
        }
        if let Some(r) = raw.alert.reveal_secrets {
            st.alert.reveal_secrets = r;
        }
        if let Some(s) = raw.output.stats_interval_secs {
            st.stats_interval_secs = s;
        }
        Ok(st)
    }

    /// True when `ip` is inside the home networks.
    pub fn is_home(&self, ip: IpAddr) -> bool {
        in_nets(&self.home_net, ip)
    }

    /// True when the segmentation policy lets zone `from` open `proto`/`port` in zone `to`
    /// (zones by index, [`Zones::index_of`]; always within one zone).
    pub fn zones_allow(&self, from: usize, to: usize, proto: u8, port: u16) -> bool {
        from == to || self.rules_allow(from, to, proto, port)
    }

    /// A rule from zone `from` (or any) to zone `to` (or any) allows `proto`/`port`.
    fn rules_allow(&self, from: usize, to: usize, proto: u8, port: u16) -> bool {
        let keys = [
            (from, to),
            (from, ANY_ZONE),
            (ANY_ZONE, to),
            (ANY_ZONE, ANY_ZONE),
        ];
        keys.iter()
            .filter_map(|k| self.segmentation_pairs.get(k))
            .flatten()
            .filter_map(|&i| self.segmentation.get(i))
            .any(|r| r.allow.iter().any(|a| a.matches(proto, port)))
    }

    /// The allow lists (as written) that apply from zone `from` to zone `to`.
    pub fn segmentation_allowed(&self, from: &str, to: &str) -> Vec<String> {
        self.segmentation
            .iter()
            .filter(|r| (r.from == "*" || r.from == from) && (r.to == "*" || r.to == to))
            .flat_map(|r| r.allow_text.iter().cloned())
            .collect()
    }

    /// Name of the most specific zone holding `ip` (longest prefix), if any.
    pub fn zone_of(&self, ip: IpAddr) -> Option<&str> {
        self.zones.of(ip)
    }
}

/// The named zones, and the zone of each of their networks found by longest prefix (a look
/// per prefix length in use: the policy is asked at every flow start, of both ends).
#[derive(Clone, Debug, Default)]
pub struct Zones {
    /// (name, networks), in the order added (name order from the config file).
    list: Vec<(String, Vec<IpNet>)>,
    /// Each network's zone (an index of `list`): of a network listed twice, the last.
    nets: NetMap<usize>,
}

impl Zones {
    pub fn push(&mut self, name: String, nets: Vec<IpNet>) {
        let i = self.list.len();
        for n in &nets {
            *self.nets.get_or_insert_with(n, || i) = i;
        }
        self.list.push((name, nets));
    }

    pub fn len(&self) -> usize {
        self.list.len()
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    pub fn contains(&self, name: &str) -> bool {
        self.position(name).is_some()
    }

    /// The index of the zone named `name`.
    pub fn position(&self, name: &str) -> Option<usize> {
        self.list.iter().position(|(n, _)| n == name)
    }

    /// The index of the zone with the longest network holding `ip`.
    pub fn index_of(&self, ip: IpAddr) -> Option<usize> {
        self.nets.matches(ip).next().copied()
    }

    /// The name of zone `i`.
    pub fn name(&self, i: usize) -> Option<&str> {
        self.list.get(i).map(|(name, _)| name.as_str())
    }

    /// The name of the zone with the longest network holding `ip`.
    pub fn of(&self, ip: IpAddr) -> Option<&str> {
        self.name(self.index_of(ip)?)
    }
}

/// Values by network, found for an address through one map per prefix length in use: a look
/// per length, however many networks share it, where a list of networks is a test per network.
#[derive(Clone, Debug)]
pub struct NetMap<V> {
    /// Network address cut to its prefix length -> value, by prefix length. IPv4 and IPv6
    /// networks of one length share a map: their keys differ.
    by_len: crate::fast::ByLength<IpAddr, V>,
}

impl<V> Default for NetMap<V> {
    fn default() -> Self {
        NetMap {
            by_len: Default::default(),
        }
    }
}

impl<V> NetMap<V> {
    /// The value of network `net`, made by `make` if it has none yet.
    pub fn get_or_insert_with(&mut self, net: &IpNet, make: impl FnOnce() -> V) -> &mut V {
        let len = net.prefix_len();
        (self.by_len).get_or_insert_with(len.into(), cut(net.addr(), len), make)
    }

    /// The values of the networks holding `ip`, longest prefix first.
    pub fn matches(&self, ip: IpAddr) -> impl Iterator<Item = &V> {
        let len = |l: usize| u8::try_from(l).unwrap_or(u8::MAX);
        (self.by_len.iter()).filter_map(move |(l, map)| map.get(&cut(ip, len(l))))
    }
}

/// `ip` cut to its first `len` bits: a network's address as its prefix compares it.
fn cut(ip: IpAddr, len: u8) -> IpAddr {
    match ip {
        IpAddr::V4(a) => {
            let mask = u32::MAX
                .checked_shl(32 - u32::from(len.min(32)))
                .unwrap_or(0);
            IpAddr::V4((u32::from(a) & mask).into())
        }
        IpAddr::V6(a) => {
            let mask = u128::MAX
                .checked_shl(128 - u32::from(len.min(128)))
                .unwrap_or(0);
            IpAddr::V6((u128::from(a) & mask).into())
        }
    }
}

/// An address that can be a device: unicast (not multicast, broadcast, unspecified, nor an
/// IPv4 address ending in .255) and in one of the home networks `home`.
pub fn device_address(home: &[IpNet], ip: IpAddr) -> bool {
    let unicast = match ip {
        IpAddr::V4(v4) => {
            !(v4.is_multicast()
                || v4.is_broadcast()
                || v4.is_unspecified()
                || v4.octets()[3] == 255)
        }
        IpAddr::V6(v6) => !(v6.is_multicast() || v6.is_unspecified()),
    };
    unicast && in_nets(home, ip)
}

/// True when `ip` is inside one of `nets` (as `IpNet::contains`, with the prefix compared in
/// place: every flow start asks it of both ends, and most addresses of a flood are outside
/// every home network, so each asks all of them).
pub fn in_nets(nets: &[IpNet], ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => {
            let a = u32::from(a);
            nets.iter().any(|n| match n {
                IpNet::V4(n) => {
                    let mask = u32::MAX.checked_shl(32 - u32::from(n.prefix_len()));
                    (a ^ u32::from(n.addr())) & mask.unwrap_or(0) == 0
                }
                IpNet::V6(_) => false,
            })
        }
        IpAddr::V6(a) => {
            let a = u128::from(a);
            nets.iter().any(|n| match n {
                IpNet::V6(n) => {
                    let mask = u128::MAX.checked_shl(128 - u32::from(n.prefix_len()));
                    (a ^ u128::from(n.addr())) & mask.unwrap_or(0) == 0
                }
                IpNet::V4(_) => false,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `in_nets` answers as `IpNet::contains` does, at every prefix length of both families,
    /// for addresses inside, at the edges of and just outside each network.
    #[test]
    fn in_nets_agrees_with_ipnet_contains() {
        let addrs: Vec<IpAddr> = [
            "0.0.0.0",
            "255.255.255.255",
            "198.18.0.0",
            "198.19.255.255",
            "198.20.0.0",
            "198.17.255.255",
            "10.1.2.3",
            "::",
            "fd00::1",
            "fe80::1",
            "febf:ffff::1",
            "fec0::",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
            "::ffff:198.18.0.1",
        ]
        .iter()
        .map(|a| a.parse().unwrap())
        .collect();
        let mut nets = Vec::new();
        for p in 0..=32u8 {
            nets.push(IpNet::V4(
                ipnet::Ipv4Net::new("198.18.7.9".parse().unwrap(), p).unwrap(),
            ));
        }
        for p in 0..=128u8 {
            nets.push(IpNet::V6(
                ipnet::Ipv6Net::new("fe80::7".parse().unwrap(), p).unwrap(),
            ));
        }
        for n in &nets {
            for ip in &addrs {
                let near = |d: i8| -> IpAddr {
                    match *ip {
                        IpAddr::V4(a) => {
                            IpAddr::V4(u32::from(a).wrapping_add_signed(d.into()).into())
                        }
                        IpAddr::V6(a) => {
                            IpAddr::V6(u128::from(a).wrapping_add_signed(d.into()).into())
                        }
                    }
                };
                for ip in [*ip, near(-1), near(1), n.network(), n.broadcast()] {
                    assert_eq!(
                        in_nets(std::slice::from_ref(n), ip),
                        n.contains(&ip),
                        "{n} {ip}"
                    );
                }
            }
        }
        let home: Vec<IpNet> = DEFAULT_HOME_NET
            .iter()
            .map(|n| n.parse().unwrap())
            .collect();
        assert!(in_nets(&home, "169.254.3.4".parse().unwrap()));
        assert!(!in_nets(&home, "203.0.113.7".parse().unwrap()));
        assert!(!in_nets(&[], "10.0.0.1".parse().unwrap()));
    }

    /// Lines counted on from the last offset asked, in any order, are the lines counted from
    /// the top.
    #[test]
    fn lines_counted_on_are_lines_counted_from_the_top() {
        let text = "a = 1\n\n[[x]]\nb = \"é\"\n[[x]]\nc = 3";
        let from_top = |o: usize| {
            text.as_bytes()[..o.min(text.len())]
                .iter()
                .filter(|&&b| b == b'\n')
                .count()
                + 1
        };
        let mut lines = Lines::new(text);
        for o in [0, 5, 6, 7, 14, 14, 30, 3, 22, 100, 0] {
            assert_eq!(lines.line_of(o), from_top(o), "offset {o}");
            assert_eq!(line_of(text, o), from_top(o), "offset {o}");
        }
    }

    /// The segmentation policy, asked through its (from, to) pairs, answers as the test of
    /// every rule in turn did: any rule from the zone (or `*`) to the zone (or `*`) that allows
    /// the service; always within one zone.
    #[test]
    fn segmentation_pairs_answer_as_every_rule_in_turn() {
        let mut rng = crate::proto::testutil::XorShift::new(0x5DEE_CE66_D1CE_4E5B);
        let mut next = |n: u64| rng.below(n);
        for round in 0..100 {
            let nz = 1 + next(6);
            let mut cfg = String::from("[zones]\n");
            for z in 0..nz {
                cfg.push_str(&format!("z{z} = [\"198.18.{z}.0/24\"]\n"));
            }
            let name = |n: u64| {
                if n == 0 {
                    "*".to_string()
                } else {
                    format!("z{}", (n - 1) % nz)
                }
            };
            for _ in 0..next(12) {
                let allow = [
                    "\"tcp/22\"",
                    "\"udp/53\"",
                    "\"tcp/8000-8100\"",
                    "\"icmp\"",
                    "\"any\"",
                ];
                cfg.push_str(&format!(
                    "[[segmentation]]\nfrom = \"{}\"\nto = \"{}\"\nallow = [{}]\n",
                    name(next(nz + 1)),
                    name(next(nz + 1)),
                    allow[next(5) as usize]
                ));
            }
            let st = Settings::from_toml("t.toml", &cfg).unwrap();
            let names: Vec<String> = (0..nz).map(|z| format!("z{z}")).collect();
            let zone = |n: &str| st.zones.position(n).unwrap();
            for from in &names {
                for to in &names {
                    for (proto, port) in [(6, 22), (17, 53), (6, 8050), (1, 0), (6, 443)] {
                        let every_rule = from == to
                            || st.segmentation.iter().any(|r| {
                                (r.from == "*" || r.from == *from)
                                    && (r.to == "*" || r.to == *to)
                                    && r.allow.iter().any(|a| a.matches(proto, port))
                            });
                        let got = st.zones_allow(zone(from), zone(to), proto, port);
                        assert_eq!(
                            got, every_rule,
                            "round {round}: {from} -> {to} {proto}/{port}\n{cfg}"
                        );
                    }
                }
            }
        }
    }

    /// A zone is found through one map per prefix length, as the scan of every zone's networks
    /// for the longest one holding the address finds it (of a network in two zones, the later).
    #[test]
    fn zones_resolve_as_a_longest_prefix_scan_does() {
        let mut rng = crate::proto::testutil::XorShift::new(0x2545_F491_4F6C_DD1D);
        let mut next = |n: u64| rng.below(n);
        for round in 0..200 {
            let mut zones = Zones::default();
            let mut list: Vec<(String, Vec<IpNet>)> = Vec::new();
            for z in 0..(1 + next(12)) {
                let nets: Vec<IpNet> = (0..(1 + next(3)))
                    .map(|_| {
                        let len = [8, 15, 16, 24, 25, 30, 32][next(7) as usize];
                        if next(4) == 0 {
                            format!("fd00::{:x}/{}", next(16), 112 + next(17))
                        } else {
                            format!("198.{}.{}.{}/{len}", 18 + next(2), next(4), next(64))
                        }
                        .parse()
                        .unwrap()
                    })
                    .collect();
                zones.push(format!("z{z}"), nets.clone());
                list.push((format!("z{z}"), nets));
            }
            for _ in 0..100 {
                let ip: IpAddr = if next(4) == 0 {
                    format!("fd00::{:x}", next(16)).parse().unwrap()
                } else {
                    format!("198.{}.{}.{}", 18 + next(2), next(4), next(64))
                        .parse()
                        .unwrap()
                };
                let scan = list
                    .iter()
                    .flat_map(|(name, nets)| nets.iter().map(move |n| (name, n)))
                    .filter(|(_, n)| n.contains(&ip))
                    .max_by_key(|(_, n)| n.prefix_len())
                    .map(|(name, _)| name.as_str());
                assert_eq!(zones.of(ip), scan, "round {round}: {ip} in {list:?}");
            }
        }
    }

    #[test]
    fn example_config_parses_and_zones_resolve() {
        let st = Settings::from_toml(
            "t.toml",
            "[network]\nhome_net = [\"198.18.0.0/15\"]\n[zones]\niot = [\"198.18.1.0/24\"]\nsite = [\"198.18.0.0/15\"]\n[flow]\nmax_flows = 10\n",
        )
        .unwrap();
        assert_eq!(st.flow.max_flows, 10);
        assert_eq!(st.zone_of("198.18.1.7".parse().unwrap()), Some("iot"));
        assert_eq!(st.zone_of("198.18.2.7".parse().unwrap()), Some("site"));
        assert!(st.is_home("198.19.0.1".parse().unwrap()));
        assert!(!st.is_home("192.0.2.1".parse().unwrap()));
        let dev = |ip: &str| device_address(&st.home_net, ip.parse().unwrap());
        assert!(dev("198.18.1.7"));
        // Home, but no single host: broadcast, .255, multicast, unspecified; and not home.
        for ip in [
            "198.19.255.255",
            "198.18.1.255",
            "224.0.0.251",
            "0.0.0.0",
            "192.0.2.1",
        ] {
            assert!(!dev(ip), "{ip}");
        }
    }

    #[test]
    fn errors_name_the_line() {
        let e = Settings::from_toml(
            "t.toml",
            "[network]\nhome_net = [\n \"198.18.0.0/15\",\n \"nope\"]\n",
        )
        .unwrap_err();
        assert_eq!((e.file.as_str(), e.line), ("t.toml", 4));
        let e = Settings::from_toml("t.toml", "[flow]\nmax_flowz = 3\n").unwrap_err();
        assert_eq!(e.line, 2);
        assert!(e.reason.contains("max_flowz"));
        let e = Settings::from_toml("t.toml", "[flow]\nmax_flows = 0\n").unwrap_err();
        assert_eq!(e.line, 2);
        let e = Settings::from_toml("t.toml", "[reassembly]\n\nmemcap_bytes = 0\n").unwrap_err();
        assert_eq!(e.line, 3);
        assert!(
            e.reason
                .contains("reassembly.memcap_bytes must be at least 1"),
            "{e}"
        );
        let s = Settings::from_toml("t.toml", "[reassembly]\nmemcap_bytes = 1048576\n").unwrap();
        assert_eq!(s.flow.reassembly.memcap, 1 << 20);
        // A cap of 0 would be no cap at all for the device tables.
        for key in ["window_secs", "max_devices", "max_peers"] {
            let text = format!("# caps\n[device]\n{key} = 0\n");
            let e = Settings::from_toml("t.toml", &text).unwrap_err();
            assert!(
                e.reason
                    .contains(&format!("device.{key} must be at least 1")),
                "{e}"
            );
            assert_eq!(e.line, 3, "{key}");
        }
    }
}
