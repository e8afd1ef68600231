//! Scan detection: port scans (one source, many ports of one host) and host scans (one source,
//! one or a few ports across many hosts) over TCP, UDP, ICMP and ARP, odd-flag probes (NULL,
//! FIN, XMAS) and Mirai-style telnet scanning.
//!
//! The decision is a sequential hypothesis test on connection outcomes, threshold random walk
//! (Jung, Paxson, Berger, Balakrishnan, "Fast portscan detection using sequential hypothesis
//! testing", IEEE S&P 2004): each *first contact* of a source (a destination host and port it had
//! not tried in the current window) either succeeds (SYN-ACK, a UDP answer, an echo reply, an
//! ARP reply) or fails (no answer, a reset, an ICMP error). The log-likelihood ratio of
//! "scanner" against "benign" moves by `ln(θ1/θ0)` on a success and `ln((1-θ1)/(1-θ0))` on a
//! failure; crossing `ln(PD/PF)` declares a scanner, crossing `ln((1-PD)/(1-PF))` restarts the
//! test. With the defaults (θ0 = 0.8, θ1 = 0.2, PD = 0.99, PF = 0.01) four failed first contacts
//! in a row are enough. Two shortcuts declare a scanner without the walk: odd-flag TCP probes
//! (no legitimate stack sends them) and ICMP echo sweeps (which succeed as often as the subnet
//! is populated).
//!
//! A declared source is reported once per scan *episode*, when it has been quiet for
//! `idle_secs` by its probes' own times (a flow's last packet, a reply, a probe's timeout: not
//! when the detector got a probe's flow record, which comes later under load), or at the end
//! of input, with the number of targets, ports, attempts, failures and first/last time; an
//! episode that goes on longer than `max_episode_secs` is reported then and again at each such
//! interval with the same identifier, so the alert stage summarises the repeats instead of
//! writing them. A declared episode becomes a port scan or a host scan only
//! when it is big enough (`min_ports` on one host, or `min_targets` hosts).
//!
//! Bounds: at most `max_sources` sources, each remembering at most `max_contacts_per_source`
//! first contacts and as many targets, and at most `max_remembered` first contacts, targets
//! and ports over all sources (so that many sources scanning at once cannot make the product
//! of the two caps: 65,536 × 16,384 contacts would be tens of GB); beyond either, a probe is
//! counted, not remembered (`contacts_not_remembered` in the alert). Pending ARP/ICMP probes
//! are capped too. Evictions are counted.

use super::rules::{RuleError, RuleSet};
use super::{Finding, Kind};
use crate::app::Emitted;
use crate::decode::{Net, PacketSummary, TcpFlags, Transport};
use crate::fast::{HashMap, SmallMap, SmallSet};
use crate::flow::{Endpoint, FlowRecord};
use crate::settings::Settings;
use crate::time::Timestamp;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::net::IpAddr;

#[derive(Deserialize, Clone, Debug)]
#[serde(deny_unknown_fields)]
struct ScanParams {
    /// P(first contact succeeds | benign source).
    #[serde(default = "d_theta0")]
    theta0: f64,
    /// P(first contact succeeds | scanner).
    #[serde(default = "d_theta1")]
    theta1: f64,
    /// Target detection probability (upper threshold `PD/PF`).
    #[serde(default = "d_pd")]
    p_detect: f64,
    /// Target false-positive probability.
    #[serde(default = "d_pf")]
    p_false: f64,
    /// Distinct hosts that make a host scan (TCP/UDP probes).
    #[serde(default = "d_min_targets")]
    min_targets: u32,
    /// Distinct ports on one host that make a port scan.
    #[serde(default = "d_min_ports")]
    min_ports: u32,
    /// Distinct hosts asked for by ARP that make an ARP sweep.
    #[serde(default = "d_arp_targets")]
    arp_min_targets: u32,
    /// Distinct hosts pinged (ICMP echo, timestamp, address mask) that make an ICMP sweep,
    /// whatever the answers.
    #[serde(default = "d_icmp_targets")]
    icmp_min_targets: u32,
    /// Odd-flag TCP probes (NULL, FIN, XMAS...) that declare a scanner.
    #[serde(default = "d_odd")]
    odd_flag_probes: u32,
    /// An ARP request or ICMP echo without an answer after this long has failed (seconds).
    #[serde(default = "d_probe_timeout")]
    probe_timeout_secs: u64,
    /// A source's window (and scan episode) ends after this long without a new probe.
    #[serde(default = "d_idle")]
    idle_secs: u64,
    /// A longer episode is reported at this interval (same identifier).
    #[serde(default = "d_max_episode")]
    max_episode_secs: u64,
    /// Ports of Mirai-style telnet scanning.
    #[serde(default = "d_mirai_ports")]
    mirai_ports: Vec<u16>,
    /// Hosts probed on those ports that make it Mirai-like ...
    #[serde(default = "d_mirai_targets")]
    mirai_min_targets: u32,
    /// ... when they are at least this share of the hosts probed over TCP/UDP.
    #[serde(default = "d_mirai_share")]
    mirai_min_share: f64,
    /// Sources tracked at once.
    #[serde(default = "d_max_sources")]
    max_sources: usize,
    /// First contacts remembered per source (beyond: counted, not remembered).
    #[serde(default = "d_max_contacts")]
    max_contacts_per_source: usize,
    /// First contacts, targets and ports remembered over all sources, entries (about 60 bytes
    /// each at most); beyond, counted, not remembered. Default 2,097,152.
    #[serde(default = "d_max_remembered")]
    max_remembered: usize,
}
fn d_theta0() -> f64 {
    0.8
}
fn d_theta1() -> f64 {
    0.2
}
fn d_pd() -> f64 {
    0.99
}
fn d_pf() -> f64 {
    0.01
}
fn d_min_targets() -> u32 {
    5
}
fn d_min_ports() -> u32 {
    5
}
fn d_arp_targets() -> u32 {
    24
}
fn d_icmp_targets() -> u32 {
    10
}
fn d_odd() -> u32 {
    2
}
fn d_probe_timeout() -> u64 {
    5
}
fn d_idle() -> u64 {
    60
}
fn d_max_episode() -> u64 {
    600
}
fn d_mirai_ports() -> Vec<u16> {
    vec![23, 2323]
}
fn d_mirai_targets() -> u32 {
    10
}
fn d_mirai_share() -> f64 {
    0.5
}
fn d_max_sources() -> usize {
    65_536
}
fn d_max_contacts() -> usize {
    16_384
}
fn d_max_remembered() -> usize {
    2_097_152
}

impl Default for ScanParams {
    fn default() -> Self {
        ScanParams {
            theta0: d_theta0(),
            theta1: d_theta1(),
            p_detect: d_pd(),
            p_false: d_pf(),
            min_targets: d_min_targets(),
            min_ports: d_min_ports(),
            arp_min_targets: d_arp_targets(),
            icmp_min_targets: d_icmp_targets(),
            odd_flag_probes: d_odd(),
            probe_timeout_secs: d_probe_timeout(),
            idle_secs: d_idle(),
            max_episode_secs: d_max_episode(),
            mirai_ports: d_mirai_ports(),
            mirai_min_targets: d_mirai_targets(),
            mirai_min_share: d_mirai_share(),
            max_sources: d_max_sources(),
            max_contacts_per_source: d_max_contacts(),
            max_remembered: d_max_remembered(),
        }
    }
}

/// Threshold random walk (Jung et al., 2004): the sequential test of one source.
#[derive(Clone, Copy, Debug)]
pub struct Trw {
    step_success: f64,
    step_failure: f64,
    upper: f64,
    lower: f64,
}

/// What the walk says after one more outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrwDecision {
    Pending,
    Scanner,
    /// Benign: the caller restarts the walk (a benign host may start scanning later).
    Benign,
}

impl Trw {
    /// `theta0`/`theta1`: success probability of a first contact for a benign source and for a
    /// scanner; `pd`/`pf`: wanted detection and false-positive probabilities.
    pub fn new(theta0: f64, theta1: f64, pd: f64, pf: f64) -> Result<Trw, String> {
        let unit = |x: f64| x > 0.0 && x < 1.0;
        if !(unit(theta0) && unit(theta1) && theta1 < theta0) {
            return Err(format!(
                "need 0 < theta1 ({theta1}) < theta0 ({theta0}) < 1"
            ));
        }
        if !(unit(pd) && unit(pf) && pf < pd) {
            return Err(format!("need 0 < p_false ({pf}) < p_detect ({pd}) < 1"));
        }
        Ok(Trw {
            step_success: (theta1 / theta0).ln(),
            step_failure: ((1.0 - theta1) / (1.0 - theta0)).ln(),
            upper: (pd / pf).ln(),
            lower: ((1.0 - pd) / (1.0 - pf)).ln(),
        })
    }

    /// Moves the log-likelihood ratio `llr` by one outcome.
    pub fn step(&self, llr: &mut f64, success: bool) -> TrwDecision {
        *llr += if success {
            self.step_success
        } else {
            self.step_failure
        };
        if *llr >= self.upper {
            TrwDecision::Scanner
        } else if *llr <= self.lower {
            TrwDecision::Benign
        } else {
            TrwDecision::Pending
        }
    }

    /// Failed first contacts in a row that declare a scanner from a fresh start.
    pub fn failures_to_detect(&self) -> u32 {
        (self.upper / self.step_failure).ceil().max(1.0) as u32
    }
}

/// How a source probed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ProbeType {
    Syn,
    Connect,
    Udp,
    Icmp,
    Arp,
    Null,
    Fin,
    Xmas,
    /// SYN with FIN/PSH/URG (nmap OS-detection T3).
    SynFin,
    /// Other flag combinations without ACK/SYN/RST.
    OddFlags,
    /// A lone ACK answered by a reset (ACK scan, nmap T4/T6).
    Ack,
}

impl ProbeType {
    /// Every type, in declaration (and `Ord`) order.
    const ALL: [ProbeType; 11] = [
        ProbeType::Syn,
        ProbeType::Connect,
        ProbeType::Udp,
        ProbeType::Icmp,
        ProbeType::Arp,
        ProbeType::Null,
        ProbeType::Fin,
        ProbeType::Xmas,
        ProbeType::SynFin,
        ProbeType::OddFlags,
        ProbeType::Ack,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ProbeType::Syn => "syn",
            ProbeType::Connect => "connect",
            ProbeType::Udp => "udp",
            ProbeType::Icmp => "icmp",
            ProbeType::Arp => "arp",
            ProbeType::Null => "null",
            ProbeType::Fin => "fin",
            ProbeType::Xmas => "xmas",
            ProbeType::SynFin => "syn_fin",
            ProbeType::OddFlags => "odd_flags",
            ProbeType::Ack => "ack",
        }
    }
    /// Probes that no ordinary TCP stack sends.
    fn odd(self) -> bool {
        matches!(
            self,
            ProbeType::Null
                | ProbeType::Fin
                | ProbeType::Xmas
                | ProbeType::SynFin
                | ProbeType::OddFlags
        )
    }
    /// Probes of nmap's OS detection (T2 NULL, T3 SYN+FIN+PSH+URG, T4/T6 ACK, T7 FIN+PSH+URG).
    fn os_probe_bit(self) -> u8 {
        match self {
            ProbeType::Null => 1,
            ProbeType::SynFin => 2,
            ProbeType::Ack => 4,
            ProbeType::Xmas => 8,
            _ => 0,
        }
    }
    fn class(self) -> Class {
        match self {
            ProbeType::Udp => Class::Udp,
            ProbeType::Icmp => Class::Icmp,
            ProbeType::Arp => Class::Arp,
            _ => Class::Tcp,
        }
    }
}

/// The contact space a probe belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Class {
    Tcp,
    Udp,
    Icmp,
    Arp,
}

/// What the lateral-movement detector needs to know of an earlier scan.
#[derive(Clone, Debug, PartialEq)]
pub struct ScanRef {
    pub kind: Kind,
    pub first: Timestamp,
    pub last: Timestamp,
    pub targets: u64,
    pub ports: u64,
    pub identifier: String,
    /// When the episode was opened (names it).
    pub opened: Timestamp,
}

impl ScanRef {
    /// The `after_scan` evidence object.
    pub fn evidence(&self) -> Value {
        json!({
            "kind": self.kind.as_str(),
            "first": self.first.rfc3339().to_string(),
            "last": self.last.rfc3339().to_string(),
            "targets": self.targets,
            "ports": self.ports,
            "identifier": self.identifier,
        })
    }
}

#[derive(Default)]
struct Target {
    /// Distinct TCP/UDP ports probed on this host.
    ports: u32,
    classes: u8,
    mirai: bool,
    os_bits: u8,
}

/// Per-source state: the walk and the current window (an episode once declared).
struct Source {
    llr: f64,
    declared: Option<&'static str>,
    contacts: SmallSet<(IpAddr, u16, Class), 1>,
    /// First contacts not remembered (per-source cap).
    untracked: u64,
    targets: SmallMap<IpAddr, Target, 1>,
    /// Port -> hosts probed on it.
    ports: SmallMap<u16, u32, 1>,
    first: Timestamp,
    last: Timestamp,
    /// When the source was last active, by its probes' own times: a new probe's last packet,
    /// a reply, a probe timing out. Not the detector's clock when the record came: a probe's
    /// flow record comes at the flow's end, later under load, and where an episode ends must
    /// not depend on that.
    active: Timestamp,
    attempts: u64,
    failed: u64,
    odd: u32,
    /// Probes by type (`ProbeType as usize`): an array, not a map, so that a new source
    /// (every packet of a spoofed flood) allocates nothing for it; 32 bits, as the table's
    /// entries are scanned whole when it is full.
    types: [u32; ProbeType::ALL.len()],
    targets_by_class: [u32; 4],
    mirai_targets: u32,
    /// Times this episode was reported (0 = not yet).
    reports: u32,
    /// When it was last reported (detector clock).
    reported_at: Timestamp,
    /// Packet time the episode was opened: names it for suppression (`first` may move earlier
    /// when older flows' records arrive).
    opened: Timestamp,
    /// The most ports probed on one target (kept as targets grow).
    max_ports: u32,
}

impl Source {
    /// First contacts, targets and ports remembered (counted in `ScanDetector::held`).
    fn entries(&self) -> usize {
        self.contacts.len() + self.targets.len() + self.ports.len()
    }

    /// The probe types seen and their counts, in `ProbeType` order.
    fn probe_types(&self) -> impl Iterator<Item = (ProbeType, u64)> + '_ {
        ProbeType::ALL
            .into_iter()
            .zip(self.types.map(u64::from))
            .filter(|&(_, n)| n > 0)
    }

    fn new(ts: Timestamp, at: Timestamp, now: Timestamp) -> Source {
        Source {
            opened: ts,
            max_ports: 0,
            llr: 0.0,
            declared: None,
            contacts: SmallSet::default(),
            untracked: 0,
            targets: SmallMap::default(),
            ports: SmallMap::default(),
            first: ts,
            last: ts,
            active: at,
            attempts: 0,
            failed: 0,
            odd: 0,
            types: [0; ProbeType::ALL.len()],
            targets_by_class: [0; 4],
            mirai_targets: 0,
            reports: 0,
            reported_at: now,
        }
    }
}

/// What a sweep does to a source's episode.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Due {
    /// Quiet for `idle_secs`: reported and forgotten.
    Ended,
    /// Declared and running for `max_episode_secs` since its last report: reported again.
    Report,
}

/// The scan detector.
pub struct ScanDetector {
    p: ScanParams,
    trw: Trw,
    home: Settings,
    sources: HashMap<IpAddr, Source>,
    /// ARP requests and ICMP echoes waiting for an answer: (prober, target, class) -> sent.
    pending: HashMap<(IpAddr, IpAddr, Class), Timestamp>,
    /// Latest scan of each source (for the lateral-movement detector).
    recent: HashMap<IpAddr, ScanRef>,
    now: Timestamp,
    last_sweep: Timestamp,
    enabled: bool,
    /// Tracking entries dropped because a table was full.
    pub evicted: u64,
    /// First contacts, targets and ports the sources remember now (see `max_remembered`).
    held: usize,
}

const MAX_PENDING: usize = 262_144;
const MAX_RECENT: usize = 65_536;

impl ScanDetector {
    pub fn new(settings: &Settings, rules: &RuleSet) -> Result<Self, RuleError> {
        let rule = rules.get(Kind::PortScan, "");
        let p: ScanParams = match rule {
            Some(r) => r.params()?,
            None => ScanParams::default(),
        };
        let err = |reason: String| match rule {
            Some(r) => r.error(reason),
            None => RuleError {
                file: "built-in".into(),
                line: 0,
                reason,
            },
        };
        let trw = Trw::new(p.theta0, p.theta1, p.p_detect, p.p_false).map_err(err)?;
        if p.idle_secs == 0 || p.max_episode_secs == 0 || p.max_remembered == 0 {
            return Err(err(
                "idle_secs, max_episode_secs and max_remembered must be positive".into(),
            ));
        }
        if !(0.0..=1.0).contains(&p.mirai_min_share) {
            return Err(err("mirai_min_share must be within 0..1".into()));
        }
        let enabled = rules.enabled(Kind::PortScan, "").is_some()
            || rules.enabled(Kind::HostScan, "").is_some();
        Ok(ScanDetector {
            p,
            trw,
            home: settings.clone(),
            sources: HashMap::default(),
            pending: HashMap::default(),
            recent: HashMap::default(),
            now: Timestamp::ZERO,
            last_sweep: Timestamp::ZERO,
            enabled,
            evicted: 0,
            held: 0,
        })
    }

    /// One event from a worker.
    pub fn on_event(&mut self, ev: &Emitted, out: &mut Vec<Finding>) {
        if !self.enabled {
            return;
        }
        match ev {
            Emitted::Started(m) => self.tick(m.first, out),
            Emitted::App { ts, .. } => self.tick(*ts, out),
            Emitted::Activity { .. } => {}
            Emitted::Flow(r) => {
                self.tick(r.last, out);
                self.on_flow(r, out);
            }
            Emitted::Packet(p) => {
                self.tick(p.ts, out);
                self.on_packet(p, out);
            }
        }
    }

    /// End of input: unanswered probes fail, open episodes are reported.
    pub fn finish(&mut self, out: &mut Vec<Finding>) {
        let mut pend: Vec<_> = self.pending.drain().collect();
        pend.sort_by_key(|(k, t)| (*t, *k));
        for ((src, _, _), _) in pend {
            self.outcome(src, false, self.now);
        }
        let mut keys: Vec<IpAddr> = self.sources.keys().copied().collect();
        keys.sort();
        for k in keys {
            if let Some(s) = self.forget(k) {
                self.report(k, &s, false, out);
            }
        }
    }

    /// The latest scan episode of `src` that had begun by `now` (reported or still open, once it
    /// is big enough to be reported).
    pub fn recent_scan(&self, src: IpAddr, now: Timestamp) -> Option<ScanRef> {
        self.recent.get(&src).filter(|r| r.first <= now).cloned()
    }

    /// Sources currently tracked.
    pub fn tracked(&self) -> usize {
        self.sources.len()
    }

    fn tick(&mut self, ts: Timestamp, out: &mut Vec<Finding>) {
        if ts > self.now {
            self.now = ts;
        }
        if self.now.since(self.last_sweep) >= 1_000_000_000 {
            self.last_sweep = self.now;
            self.sweep(out);
        }
    }

    fn sweep(&mut self, out: &mut Vec<Finding>) {
        let now = self.now;
        let timeout = self.p.probe_timeout_secs;
        let mut expired: Vec<_> = self
            .pending
            .iter()
            .filter(|(_, t)| now.secs_since(**t) >= timeout)
            .map(|(k, t)| (*t, *k))
            .collect();
        expired.sort();
        for (sent, k) in expired {
            self.pending.remove(&k);
            self.outcome(k.0, false, sent.plus_secs(timeout));
        }
        let mut done: Vec<IpAddr> = Vec::new();
        let mut long: Vec<IpAddr> = Vec::new();
        for (ip, s) in &self.sources {
            match self.due(s, now) {
                Some(Due::Ended) => done.push(*ip),
                Some(Due::Report) => long.push(*ip),
                None => {}
            }
        }
        done.sort();
        long.sort();
        for ip in done.into_iter().chain(long) {
            self.settle(ip, out);
        }
    }

    /// What a sweep at `now` does to source `s`'s episode.
    fn due(&self, s: &Source, now: Timestamp) -> Option<Due> {
        if now.secs_since(s.active) >= self.p.idle_secs {
            Some(Due::Ended)
        } else if s.declared.is_some()
            && now.secs_since(if s.reports == 0 {
                s.first
            } else {
                s.reported_at
            }) >= self.p.max_episode_secs
        {
            Some(Due::Report)
        } else {
            None
        }
    }

    /// Does to source `ip` what a sweep now would: reports an episode that went quiet (and
    /// forgets it), or writes a long one's periodic report. Called by the sweep, and before a
    /// source's next probe is counted, so that where an episode ends or is reported depends
    /// on the probes' times, not on when other traffic last made the detector sweep.
    fn settle(&mut self, ip: IpAddr, out: &mut Vec<Finding>) {
        let now = self.now;
        match self.sources.get(&ip).and_then(|s| self.due(s, now)) {
            Some(Due::Ended) => {
                if let Some(s) = self.forget(ip) {
                    self.report(ip, &s, false, out);
                }
            }
            Some(Due::Report) => {
                let reported = self
                    .sources
                    .get(&ip)
                    .is_some_and(|s| self.report(ip, s, true, out));
                if let Some(s) = self.sources.get_mut(&ip).filter(|_| reported) {
                    s.reports += 1;
                    s.reported_at = now;
                }
            }
            None => {}
        }
    }

    /// Removes source `ip`, its remembered entries given back to `max_remembered`.
    fn forget(&mut self, ip: IpAddr) -> Option<Source> {
        let s = self.sources.remove(&ip)?;
        self.held = self.held.saturating_sub(s.entries());
        Some(s)
    }

    fn on_flow(&mut self, r: &FlowRecord, out: &mut Vec<Finding>) {
        let m = &r.meta;
        let (src, dst) = (m.initiator.ip, m.responder.ip);
        if src == dst || src.is_loopback() || !unicast(dst) {
            return;
        }
        // x.x.x.255 inside the home networks is most likely a subnet broadcast (NetBIOS,
        // discovery); pings and ARP to it still count.
        if matches!(dst, IpAddr::V4(v) if v.octets()[3] == 255) && self.home.is_home(dst) {
            return;
        }
        let (ty, success) = match m.proto {
            6 => match tcp_probe(r) {
                Some(x) => x,
                None => return,
            },
            17 => (ProbeType::Udp, r.rev.packets > 0),
            _ => return,
        };
        if self.contact(src, dst, m.responder.port, ty, (r.start, r.last), out) {
            self.outcome(src, success, r.last);
        }
    }

    fn on_packet(&mut self, p: &PacketSummary, out: &mut Vec<Finding>) {
        match p.net {
            Net::Arp(a) => {
                let (s, t) = (IpAddr::V4(a.sender_ip), IpAddr::V4(a.target_ip));
                if a.sender_ip.is_unspecified() || a.sender_ip == a.target_ip {
                    return; // address probe / gratuitous ARP
                }
                match a.op {
                    1 if self.contact(s, t, 0, ProbeType::Arp, (p.ts, p.ts), out) => {
                        self.add_pending((s, t, Class::Arp), p.ts);
                    }
                    2 => self.answer((t, s, Class::Arp), p.ts),
                    _ => {}
                }
            }
            Net::Ip {
                src,
                dst,
                l4: Transport::Icmp { v6, ty, .. },
                ..
            } => {
                let request = if v6 {
                    ty == 128
                } else {
                    matches!(ty, 8 | 13 | 15 | 17)
                };
                let reply = if v6 {
                    ty == 129
                } else {
                    matches!(ty, 0 | 14 | 16 | 18)
                };
                if request && src != dst && !src.is_loopback() && unicast(dst) {
                    if self.contact(src, dst, 0, ProbeType::Icmp, (p.ts, p.ts), out) {
                        self.add_pending((src, dst, Class::Icmp), p.ts);
                    }
                } else if reply {
                    self.answer((dst, src, Class::Icmp), p.ts);
                }
            }
            _ => {}
        }
    }

    /// A reply to probe `k`, at `ts`: a success if it came within the probe timeout. One that
    /// came later is the failure that a sweep counts; sweeps run at most once a second, so
    /// whether one came between the timeout and the reply must not decide it.
    fn answer(&mut self, k: (IpAddr, IpAddr, Class), ts: Timestamp) {
        if let Some(sent) = self.pending.remove(&k) {
            let timely = ts.secs_since(sent) < self.p.probe_timeout_secs;
            let at = if timely {
                ts
            } else {
                sent.plus_secs(self.p.probe_timeout_secs)
            };
            self.outcome(k.0, timely, at);
        }
    }

    fn add_pending(&mut self, k: (IpAddr, IpAddr, Class), ts: Timestamp) {
        if self.pending.len() >= MAX_PENDING {
            // Oldest half out, counted as evicted (not as failures).
            let mut ts_all: Vec<Timestamp> = self.pending.values().copied().collect();
            ts_all.sort_unstable();
            let cut = ts_all[ts_all.len() / 2];
            let before = self.pending.len();
            self.pending.retain(|_, t| *t > cut);
            self.evicted += (before - self.pending.len()) as u64;
        }
        self.pending.entry(k).or_insert(ts);
    }

    /// Records a probe that began at `ts` and was last seen at `at` (its flow's first and last
    /// packets); true when it is a first contact (its outcome then feeds the walk).
    fn contact(
        &mut self,
        src: IpAddr,
        dst: IpAddr,
        port: u16,
        ty: ProbeType,
        (ts, at): (Timestamp, Timestamp),
        out: &mut Vec<Finding>,
    ) -> bool {
        let now = self.now;
        // One look at the table for what `settle` would do and whether the source is known
        // (a flood's every probe is a new source).
        let known = match self.sources.get(&src).map(|s| self.due(s, now)) {
            Some(Some(_)) => {
                self.settle(src, out);
                self.sources.contains_key(&src)
            }
            Some(None) => true,
            None => false,
        };
        if !known && self.sources.len() >= self.p.max_sources {
            self.evict_sources(out);
        }
        let cap = self.p.max_contacts_per_source;
        let mirai_port = ty.class() == Class::Tcp && self.p.mirai_ports.contains(&port);
        let s = self
            .sources
            .entry(src)
            .or_insert_with(|| Source::new(ts, at, now));
        s.attempts += 1;
        if let Some(n) = s.types.get_mut(ty as usize) {
            *n = n.saturating_add(1);
        }
        s.first = s.first.min(ts);
        s.last = s.last.max(ts);
        let class = ty.class();
        let key = (dst, port, class);
        if s.contacts.contains(&key) {
            return false;
        }
        let budget = self.p.max_remembered;
        if s.contacts.len() < cap && self.held < budget {
            s.contacts.insert(key);
            self.held += 1;
        } else {
            s.untracked += 1;
        }
        s.active = s.active.max(at);
        let new_target = !s.targets.contains_key(&dst);
        if new_target && (s.targets.len() >= cap || self.held >= budget) {
            // Beyond the per-source cap, or the cap over all sources, the probe is counted
            // (attempts, untracked), not its target: a source's targets are capped like its
            // first contacts.
            self.remember(src);
            return true;
        }
        self.held += usize::from(new_target);
        let t = s.targets.get_or_default(dst);
        let cbit = 1u8 << (class as u8);
        if t.classes & cbit == 0 {
            t.classes |= cbit;
            s.targets_by_class[class as usize] += 1;
        }
        if matches!(class, Class::Tcp | Class::Udp) {
            t.ports += 1;
            s.max_ports = s.max_ports.max(t.ports);
            // A port not seen before needs room over all sources; a known one is counted.
            let known = s.ports.contains_key(&port);
            if known || self.held < budget {
                self.held += usize::from(!known);
                *s.ports.get_or_default(port) += 1;
            }
        }
        if mirai_port && !t.mirai {
            t.mirai = true;
            s.mirai_targets += 1;
        }
        t.os_bits |= ty.os_probe_bit();
        if ty.odd() {
            s.odd += 1;
            if s.odd >= self.p.odd_flag_probes && s.declared.is_none() {
                s.declared = Some("odd_flags");
            }
        }
        if class == Class::Icmp
            && s.targets_by_class[Class::Icmp as usize] >= self.p.icmp_min_targets
            && s.declared.is_none()
        {
            s.declared = Some("icmp_sweep");
        }
        self.remember(src);
        true
    }

    /// The outcome of a first contact of `src`.
    fn outcome(&mut self, src: IpAddr, success: bool, at: Timestamp) {
        let trw = self.trw;
        let Some(s) = self.sources.get_mut(&src) else {
            return;
        };
        s.active = s.active.max(at);
        if !success {
            s.failed += 1;
        }
        if s.declared.is_some() {
            return;
        }
        match trw.step(&mut s.llr, success) {
            TrwDecision::Scanner => s.declared = Some("trw"),
            TrwDecision::Benign => s.llr = 0.0,
            TrwDecision::Pending => {}
        }
        self.remember(src);
    }

    /// Keeps `recent` up to date once the source's episode is reportable.
    fn remember(&mut self, src: IpAddr) {
        let Some(s) = self.sources.get(&src) else {
            return;
        };
        let Some(kind) = self.classify(s) else {
            return;
        };
        if !self.recent.contains_key(&src) && self.recent.len() >= MAX_RECENT {
            self.evicted += self.recent.len() as u64;
            self.recent.clear();
        }
        let (first, last) = (s.first, s.last);
        let (targets, ports) = (s.targets.len() as u64, s.ports.len() as u64);
        match self.recent.get_mut(&src) {
            // The same episode: update in place (no new identifier string per probe).
            Some(r) if r.opened == s.opened => {
                r.kind = kind;
                r.first = first;
                r.last = last;
                r.targets = targets;
                r.ports = ports;
            }
            _ => {
                let r = ScanRef {
                    kind,
                    first,
                    last,
                    targets,
                    ports,
                    identifier: identifier(src, s),
                    opened: s.opened,
                };
                self.recent.insert(src, r);
            }
        }
    }

    /// Port scan, host scan, or nothing (not declared, or too small).
    fn classify(&self, s: &Source) -> Option<Kind> {
        let how = s.declared?;
        let p = &self.p;
        let c = &s.targets_by_class;
        let ip_targets = c[Class::Tcp as usize].max(c[Class::Udp as usize]);
        let max_ports = s.max_ports;
        let many_hosts = ip_targets >= p.min_targets
            || c[Class::Arp as usize] >= p.arp_min_targets
            || c[Class::Icmp as usize] >= p.icmp_min_targets;
        if many_hosts && (s.targets.len() as u32) >= max_ports {
            Some(Kind::HostScan)
        } else if max_ports >= p.min_ports || (how == "odd_flags" && max_ports >= 1) {
            Some(Kind::PortScan)
        } else if many_hosts {
            Some(Kind::HostScan)
        } else {
            None
        }
    }

    /// Writes the finding of an episode; false when there is nothing to report.
    fn report(&self, src: IpAddr, s: &Source, ongoing: bool, out: &mut Vec<Finding>) -> bool {
        let Some(kind) = self.classify(s) else {
            return false;
        };
        out.push(self.finding(src, s, kind, ongoing));
        // One episode can be both: a sweep of many hosts and many ports of one of them.
        let p = &self.p;
        let c = &s.targets_by_class;
        let ip_targets = c[Class::Tcp as usize].max(c[Class::Udp as usize]);
        let many_hosts =
            ip_targets >= p.min_targets || c[Class::Icmp as usize] >= p.icmp_min_targets;
        let max_ports = s.max_ports;
        let other = match kind {
            Kind::HostScan if max_ports >= p.min_ports.max(20) => Some(Kind::PortScan),
            Kind::PortScan if many_hosts => Some(Kind::HostScan),
            _ => None,
        };
        if let Some(k) = other {
            out.push(self.finding(src, s, k, ongoing));
        }
        true
    }

    fn finding(&self, src: IpAddr, s: &Source, kind: Kind, ongoing: bool) -> Finding {
        let mut top: Vec<(u16, u32)> = s.ports.iter().map(|(p, n)| (*p, *n)).collect();
        top.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        let top_ports: Vec<Value> = top
            .iter()
            .take(10)
            .map(|(p, n)| json!({"port": p, "targets": n}))
            .collect();
        // ARP when most targets were asked for by ARP (a LAN sweep), else the commonest IP probe
        // (ARP requests also precede any IP probe on a LAN).
        let c = &s.targets_by_class;
        let arp_sweep = c[Class::Arp as usize]
            > c[Class::Tcp as usize] + c[Class::Udp as usize] + c[Class::Icmp as usize];
        let (main_ty, _) = s
            .probe_types()
            .filter(|(t, _)| (*t == ProbeType::Arp) == arp_sweep)
            .max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(&a.0)))
            .unwrap_or((ProbeType::Arp, 0));
        let by_class = json!({
            "tcp": s.targets_by_class[Class::Tcp as usize],
            "udp": s.targets_by_class[Class::Udp as usize],
            "icmp": s.targets_by_class[Class::Icmp as usize],
            "arp": s.targets_by_class[Class::Arp as usize],
        });
        let mut types = Map::new();
        for (t, n) in s.probe_types() {
            types.insert(t.as_str().into(), n.into());
        }
        let ip_targets = s.targets_by_class[Class::Tcp as usize]
            .max(s.targets_by_class[Class::Udp as usize])
            .max(1);
        let mirai_like = s.mirai_targets >= self.p.mirai_min_targets
            && f64::from(s.mirai_targets) / f64::from(ip_targets) >= self.p.mirai_min_share;
        let os_fp = s.targets.values().any(|t| t.os_bits.count_ones() >= 3);
        // The host with the most ports is the port scan's destination.
        let busiest = s
            .targets
            .iter()
            .max_by(|a, b| a.1.ports.cmp(&b.1.ports).then(b.0.cmp(a.0)))
            .map(|(ip, _)| *ip);
        let proto = match main_ty.class() {
            Class::Tcp => 6,
            Class::Udp => 17,
            Class::Icmp if src.is_ipv6() => 58,
            Class::Icmp => 1,
            Class::Arp => 0,
        };
        let mut sample: Vec<IpAddr> = s.targets.keys().copied().collect();
        sample.sort();
        sample.truncate(10);
        let mut f = Finding {
            ts: s.last,
            kind,
            variant: "",
            src: Some(Endpoint { ip: src, port: 0 }),
            dst: match (kind, busiest) {
                (Kind::PortScan, Some(ip)) => Some(Endpoint { ip, port: 0 }),
                _ => None,
            },
            proto,
            flow_id: None,
            vlan: Default::default(),
            app_proto: None,
            identifier: identifier(src, s),
            evidence: super::Evidence::default(),
            admission: super::Admission::Undecided,
        }
        .with("targets", s.targets.len())
        .with("targets_by_protocol", by_class)
        .with("ports", s.ports.len())
        .with("attempts", s.attempts)
        .with("failed", s.failed)
        .with("first", s.first.rfc3339().to_string())
        .with("last", s.last.rfc3339().to_string())
        .with("duration_secs", s.last.since(s.first) as f64 / 1e9)
        .with("probe_type", main_ty.as_str())
        .with("probe_types", Value::Object(types))
        .with("decided_by", s.declared.unwrap_or(""))
        .with("top_ports", top_ports)
        .with("mirai_like", mirai_like)
        .with("telnet_targets", s.mirai_targets)
        .with("os_fingerprint", os_fp)
        .with("internal_source", self.home.is_home(src))
        .with(
            "target_sample",
            sample.iter().map(|i| i.to_string()).collect::<Vec<_>>(),
        );
        if let Some(z) = self.home.zone_of(src) {
            f = f.with("zone_from", z);
        }
        if s.untracked > 0 {
            // Targets and contacts stop at the per-source cap: the figures above are floors.
            f = f
                .with("contacts_not_remembered", s.untracked)
                .with("remembered_per_source", self.p.max_contacts_per_source);
        }
        if ongoing || s.reports > 0 {
            f = f.with("update", s.reports > 0).with("ongoing", ongoing);
        }
        // The end of an episode already reported while ongoing is its summary: written once,
        // under its own identifier (the ongoing updates in between are suppressed).
        if !ongoing && s.reports > 0 {
            f.identifier.push_str("|end");
        }
        f
    }

    /// The source table is full: drop the undeclared sources idle the longest.
    fn evict_sources(&mut self, out: &mut Vec<Finding>) {
        let idle: Vec<(Timestamp, IpAddr)> = self
            .sources
            .iter()
            .filter(|(_, s)| s.declared.is_none())
            .map(|(ip, s)| (s.active, *ip))
            .collect();
        let n = (self.sources.len() / 4).max(1);
        // The n least recently active (their order does not matter: nothing is written),
        // dropped in place in one pass: (activity, address) pairs are distinct, so those at or
        // below the n-th are exactly n.
        let before = self.sources.len();
        if let Some(last) = crate::fast::smallest(idle, n).into_iter().max() {
            let mut freed = 0;
            self.sources.retain(|ip, s| {
                let keep = s.declared.is_some() || (s.active, *ip) > last;
                freed += if keep { 0 } else { s.entries() };
                keep
            });
            self.held = self.held.saturating_sub(freed);
        }
        let mut dropped = before - self.sources.len();
        if dropped == 0 {
            // Every source is a declared scanner: report and drop the oldest.
            let mut all: Vec<(Timestamp, IpAddr)> =
                self.sources.iter().map(|(ip, s)| (s.first, *ip)).collect();
            all.sort();
            for (_, ip) in all.into_iter().take(n) {
                if let Some(s) = self.forget(ip) {
                    self.report(ip, &s, false, out);
                }
                dropped += 1;
            }
        }
        self.evicted += dropped as u64;
    }
}

fn identifier(src: IpAddr, s: &Source) -> String {
    format!("{src}|scan|{}", s.opened.0)
}

/// Multicast and broadcast destinations are not probes.
fn unicast(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v) => !(v.is_multicast() || v.is_broadcast()),
        IpAddr::V6(v) => !v.is_multicast(),
    }
}

/// What kind of TCP probe a flow record is, and whether it succeeded; `None` for flows picked
/// up mid-connection.
fn tcp_probe(r: &FlowRecord) -> Option<(ProbeType, bool)> {
    const FIN: u8 = TcpFlags::FIN;
    const SYN: u8 = TcpFlags::SYN;
    const RST: u8 = TcpFlags::RST;
    const PSH: u8 = TcpFlags::PSH;
    const ACK: u8 = TcpFlags::ACK;
    const URG: u8 = TcpFlags::URG;
    let f = r.fwd.tcp_flags;
    if r.fwd.packets == 0 {
        return None;
    }
    if r.fwd.syns > 0 {
        if f & (FIN | PSH | URG) != 0 && f & ACK == 0 {
            return Some((ProbeType::SynFin, false));
        }
        let ok = r.synack_seen;
        let ty = if ok && f & ACK != 0 {
            ProbeType::Connect
        } else {
            ProbeType::Syn
        };
        return Some((ty, ok));
    }
    if f & (ACK | RST | SYN) == 0 {
        let ty = if f == 0 {
            ProbeType::Null
        } else if f == FIN {
            ProbeType::Fin
        } else if f & (FIN | PSH | URG) == FIN | PSH | URG {
            ProbeType::Xmas
        } else {
            ProbeType::OddFlags
        };
        return Some((ty, false));
    }
    if f == ACK
        && r.fwd.payload_bytes == 0
        && r.fwd.packets <= 2
        && r.rev.tcp_flags & RST != 0
        && r.rev.payload_bytes == 0
    {
        return Some((ProbeType::Ack, false));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A source counts probes by `ProbeType as usize`: `ALL` must list every type at its own
    /// index (a type past the end would not be counted), in `Ord` order (the alert lists them
    /// in it). `Ack` is the last variant declared.
    #[test]
    fn probe_types_are_indexed_in_order() {
        for (i, t) in ProbeType::ALL.iter().enumerate() {
            assert_eq!(*t as usize, i, "{t:?}");
        }
        assert!(ProbeType::ALL.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(ProbeType::Ack as usize + 1, ProbeType::ALL.len());
        let mut s = Source::new(Timestamp::ZERO, Timestamp::ZERO, Timestamp::ZERO);
        for t in [ProbeType::Ack, ProbeType::Syn, ProbeType::Ack] {
            s.types[t as usize] += 1;
        }
        let seen: Vec<_> = s.probe_types().collect();
        assert_eq!(seen, [(ProbeType::Syn, 1), (ProbeType::Ack, 2)]);
    }

    #[test]
    fn trw_thresholds_follow_jung() {
        let t = Trw::new(0.8, 0.2, 0.99, 0.01).unwrap();
        // ln(99) / ln(4) = 3.3: four failures in a row.
        assert_eq!(t.failures_to_detect(), 4);
        let mut llr = 0.0;
        for i in 0..3 {
            assert_eq!(t.step(&mut llr, false), TrwDecision::Pending, "step {i}");
        }
        assert_eq!(t.step(&mut llr, false), TrwDecision::Scanner);
        // A success undoes a failure (ln 0.25 = -ln 4).
        let mut llr = 0.0;
        t.step(&mut llr, false);
        t.step(&mut llr, true);
        assert!(llr.abs() < 1e-9);
        // Busy clients succeed: benign after four successes, whatever came before.
        let mut llr = 0.0;
        let mut d = TrwDecision::Pending;
        for _ in 0..4 {
            d = t.step(&mut llr, true);
        }
        assert_eq!(d, TrwDecision::Benign);
        assert!(Trw::new(0.2, 0.8, 0.99, 0.01).is_err());
        assert!(Trw::new(0.8, 0.2, 0.01, 0.99).is_err());
    }

    fn rules_with(params: &str) -> RuleSet {
        let text = format!(
            "[[rule]]\nsid = 1\nrev = 1\nkind = \"port_scan\"\nsignature = \"s\"\ncategory = \"c\"\nseverity = 2\n[rule.params]\n{params}\n[[rule]]\nsid = 2\nrev = 1\nkind = \"host_scan\"\nsignature = \"s\"\ncategory = \"c\"\nseverity = 2\n"
        );
        RuleSet::from_texts([("t.toml", text.as_str())]).unwrap()
    }

    #[test]
    fn params_are_checked() {
        let st = Settings::default();
        assert!(ScanDetector::new(&st, &rules_with("")).is_ok());
        let e = ScanDetector::new(&st, &rules_with("theta0 = 0.1"))
            .err()
            .unwrap();
        assert!(e.reason.contains("theta1"), "{e}");
        let e = ScanDetector::new(&st, &rules_with("min_tragets = 3"))
            .err()
            .unwrap();
        assert!(e.reason.contains("min_tragets"), "{e}");
        let e = ScanDetector::new(&st, &rules_with("max_remembered = 0"))
            .err()
            .unwrap();
        assert!(e.reason.contains("max_remembered must be positive"), "{e}");
    }

    fn ts(s: u64) -> Timestamp {
        Timestamp::from_secs(1_700_000_000 + s)
    }

    /// A one-packet probe from `src` to `dst`:`port` at `t` as its flow record gives it, and
    /// its outcome if it is a first contact.
    fn probe(
        d: &mut ScanDetector,
        (src, dst, port): (IpAddr, IpAddr, u16),
        ty: ProbeType,
        t: Timestamp,
        success: bool,
        out: &mut Vec<Finding>,
    ) {
        if d.contact(src, dst, port, ty, (t, t), out) {
            d.outcome(src, success, t);
        }
    }

    #[test]
    fn failed_contacts_make_a_port_scan_and_successes_do_not() {
        let st = Settings::default();
        let mut d = ScanDetector::new(&st, &rules_with("")).unwrap();
        let mut out = Vec::new();
        let scanner: IpAddr = "10.0.0.5".parse().unwrap();
        let client: IpAddr = "10.0.0.6".parse().unwrap();
        let target: IpAddr = "10.0.0.9".parse().unwrap();
        for port in 1..=20u16 {
            d.now = ts(u64::from(port));
            let now = d.now;
            probe(
                &mut d,
                (scanner, target, port),
                ProbeType::Syn,
                now,
                port == 5,
                &mut out,
            );
            // A busy client: many connections, few servers, all answered.
            for srv in 0..3u8 {
                let ip = IpAddr::from([10, 0, 1, srv]);
                probe(
                    &mut d,
                    (client, ip, 443),
                    ProbeType::Connect,
                    now,
                    true,
                    &mut out,
                );
            }
        }
        assert_eq!(
            d.recent_scan(scanner, ts(30)).map(|r| r.kind),
            Some(Kind::PortScan)
        );
        assert!(d.recent_scan(client, ts(30)).is_none());
        d.finish(&mut out);
        assert_eq!(out.len(), 1, "{out:?}");
        let f = &out[0];
        assert_eq!(f.kind, Kind::PortScan);
        assert_eq!(f.src.unwrap().ip, scanner);
        assert_eq!(f.evidence["ports"], 20);
        assert_eq!(f.evidence["failed"], 19);
        assert_eq!(f.evidence["targets"], 1);
    }

    /// Where a scan episode ends depends on the probes' times only: a detector that swept
    /// just before the source's next probe (other traffic made it sweep, and it sweeps at most
    /// once a second) and one that did not give the same alerts.
    #[test]
    fn episodes_end_at_the_same_probe_whatever_other_traffic_came_between() {
        let st = Settings::default();
        let mut busy = ScanDetector::new(&st, &rules_with("")).unwrap();
        let mut quiet = ScanDetector::new(&st, &rules_with("")).unwrap();
        let (mut a, mut b) = (Vec::new(), Vec::new());
        let scanner: IpAddr = "198.18.1.5".parse().unwrap();
        let target: IpAddr = "198.18.1.9".parse().unwrap();
        let ms = |ms: u64| Timestamp(ts(0).0 + ms * 1_000_000);
        // Twenty ports a second apart, none answering; 60.5 s after the last, twenty more.
        let times = (1..=20u64)
            .map(|i| i * 1_000)
            .chain((0..20).map(|i| 80_500 + i * 1_000));
        for (port, t) in (1..=40u16).zip(times) {
            if t == 80_500 {
                // Other traffic 0.6 s before: the episode is not over yet (59.9 s quiet).
                busy.tick(ms(79_900), &mut a);
            }
            for (d, out) in [(&mut busy, &mut a), (&mut quiet, &mut b)] {
                d.tick(ms(t), out);
                probe(
                    d,
                    (scanner, target, port),
                    ProbeType::Syn,
                    ms(t),
                    false,
                    out,
                );
            }
        }
        busy.finish(&mut a);
        quiet.finish(&mut b);
        let show = crate::detect::described;
        assert_eq!(a.len(), 2, "{:?}", show(&a));
        assert!(
            a.iter().all(|f| f.evidence["ports"] == 20),
            "{:?}",
            show(&a)
        );
        assert_eq!(show(&a), show(&b));
    }

    /// Where a scan episode ends depends on the probes' own times, not on when their flow
    /// records come: a probe's record comes at its flow's end (an unanswered SYN's after the
    /// half-open timeout, an answered one's sooner), later under load. Twenty probes a second
    /// apart, then 70 s later twenty more: two episodes, whether each record comes at once or,
    /// for the first twenty, 30 s late (other traffic moving the clock meanwhile).
    #[test]
    fn episodes_end_by_the_probes_times_whenever_their_records_come() {
        let st = Settings::default();
        let scanner: IpAddr = "198.18.1.5".parse().unwrap();
        let target: IpAddr = "198.18.1.9".parse().unwrap();
        let show = crate::detect::described;
        let mut runs = Vec::new();
        for late in [0u64, 30] {
            let mut d = ScanDetector::new(&st, &rules_with("")).unwrap();
            let mut out = Vec::new();
            let probes = (1..=20u64).chain(90..110);
            for (port, t) in (1..=40u16).zip(probes) {
                let arrives = if t < 90 { t + late } else { t + 1 };
                d.tick(ts(arrives), &mut out);
                probe(
                    &mut d,
                    (scanner, target, port),
                    ProbeType::Syn,
                    ts(t),
                    false,
                    &mut out,
                );
            }
            d.finish(&mut out);
            runs.push(show(&out));
        }
        assert_eq!(runs[0].len(), 2, "{:?}", runs[0]);
        assert_eq!(runs[0], runs[1]);
    }

    /// A reply that comes after the probe timeout is a failure, whether a sweep has counted it
    /// already (other traffic came since) or not.
    #[test]
    fn a_late_reply_is_a_failure_whatever_other_traffic_came_between() {
        let st = Settings::default();
        let src: IpAddr = "198.18.1.5".parse().unwrap();
        let dst: IpAddr = "198.18.1.9".parse().unwrap();
        let ms = |ms: u64| Timestamp(ts(0).0 + ms * 1_000_000);
        let mut failed = Vec::new();
        for busy in [false, true] {
            let mut d = ScanDetector::new(&st, &rules_with("")).unwrap();
            let mut out = Vec::new();
            // An echo request at 0 s, its reply 5.3 s later (the timeout is 5 s); the busy
            // detector saw other traffic at 4.9 s, and swept then.
            d.tick(ms(0), &mut out);
            assert!(d.contact(src, dst, 0, ProbeType::Icmp, (ms(0), ms(0)), &mut out));
            d.add_pending((src, dst, Class::Icmp), ms(0));
            if busy {
                d.tick(ms(4_900), &mut out);
            }
            d.tick(ms(5_300), &mut out);
            d.answer((src, dst, Class::Icmp), ms(5_300));
            failed.push(d.sources.get(&src).map(|s| s.failed));
        }
        assert_eq!(failed, [Some(1), Some(1)]);
    }

    /// What falls due is handled at the first sweep at or after it, with a tick every second
    /// from other traffic: a quiet episode's end (idle 60 s), a long episode's report (after
    /// 600 s) and then its end, a client's source forgotten (alone in the table), an
    /// unanswered echo's timeout (5 s).
    #[test]
    fn what_falls_due_is_handled_at_the_first_sweep_after() {
        let st = Settings::default();
        let mut d = ScanDetector::new(&st, &rules_with("")).unwrap();
        let mut out = Vec::new();
        let quiet: IpAddr = "198.18.1.5".parse().unwrap();
        let slow: IpAddr = "198.18.1.6".parse().unwrap();
        let pinger: IpAddr = "198.18.1.7".parse().unwrap();
        let client: IpAddr = "198.18.1.8".parse().unwrap();
        let target: IpAddr = "198.18.1.9".parse().unwrap();
        let mut seen = Vec::new();
        for t in 1..=1_300u64 {
            d.tick(ts(t), &mut out);
            for f in out.drain(..) {
                seen.push((t, f.src.map(|e| e.ip)));
            }
            if t <= 20 {
                let port = t as u16;
                probe(
                    &mut d,
                    (quiet, target, port),
                    ProbeType::Syn,
                    ts(t),
                    false,
                    &mut out,
                );
            }
            if t % 10 == 0 && t <= 600 {
                let port = 1_000 + (t / 10) as u16;
                probe(
                    &mut d,
                    (slow, target, port),
                    ProbeType::Syn,
                    ts(t),
                    false,
                    &mut out,
                );
            }
            if t == 300 {
                assert!(d.contact(pinger, target, 0, ProbeType::Icmp, (ts(t), ts(t)), &mut out));
                d.add_pending((pinger, target, Class::Icmp), ts(t));
            }
            // A client's answered connection, alone in the table: no scan, forgotten once quiet
            // for 60 s.
            if t == 700 {
                probe(
                    &mut d,
                    (client, target, 443),
                    ProbeType::Connect,
                    ts(t),
                    true,
                    &mut out,
                );
            }
            if t == 759 || t == 760 {
                assert_eq!(d.sources.contains_key(&client), t == 759, "at {t} s");
            }
            if t == 304 || t == 305 {
                let failed = d.sources.get(&pinger).map(|s| s.failed);
                assert_eq!(failed, Some(u64::from(t == 305)), "at {t} s");
            }
        }
        // `quiet` ended at 80 s. `slow` (10 s to 600 s) was reported at 610 s, after 600 s of
        // episode, and again at its end, quiet from 600 s to 660 s. The pinger's one failed
        // probe is no scan (it ends at 365 s without an alert).
        assert_eq!(
            seen,
            [(80, Some(quiet)), (610, Some(slow)), (660, Some(slow))],
        );
    }

    /// The first contacts, targets and ports remembered over all sources stop at
    /// `max_remembered`, so many sources scanning at once cannot multiply the per-source caps;
    /// the probes beyond are counted, and a source's entries come back when its episode ends.
    #[test]
    fn remembered_entries_are_capped_over_all_sources() {
        let st = Settings::default();
        let mut d = ScanDetector::new(&st, &rules_with("max_remembered = 300")).unwrap();
        let mut out = Vec::new();
        let target: IpAddr = "198.18.2.9".parse().unwrap();
        let sum = |d: &ScanDetector| d.sources.values().map(Source::entries).sum::<usize>();
        // Ten sources probing the same 50 ports of one host: 10 × (50 + 1 + 50) entries asked.
        for port in 1..=50u16 {
            d.now = ts(u64::from(port));
            let now = d.now;
            for n in 0..10u8 {
                let src = IpAddr::from([198, 18, 1, 10 + n]);
                probe(
                    &mut d,
                    (src, target, port),
                    ProbeType::Syn,
                    now,
                    false,
                    &mut out,
                );
                assert_eq!(d.held, sum(&d));
                assert!(d.held <= 300, "{}", d.held);
            }
        }
        assert_eq!(d.held, 300);
        // A source's first probe takes three entries (contact, target, port), each next one two:
        // 145 of the 500 first contacts fit in 300 entries; the rest are counted.
        let attempts: u64 = d.sources.values().map(|s| s.attempts).sum();
        let untracked: u64 = d.sources.values().map(|s| s.untracked).sum();
        assert_eq!((attempts, untracked), (500, 355));
        // Quiet for the idle time: the episodes end, and their entries are given back.
        d.tick(ts(200), &mut out);
        assert!(d.sources.is_empty());
        assert_eq!(d.held, 0);
        let late: IpAddr = "198.18.1.99".parse().unwrap();
        probe(
            &mut d,
            (late, target, 7),
            ProbeType::Syn,
            ts(201),
            false,
            &mut out,
        );
        assert_eq!(d.held, 3, "a contact, a target and a port");
        let reported: Vec<_> = out.iter().filter(|f| f.kind == Kind::PortScan).collect();
        assert_eq!(reported.len(), 10);
        assert!(reported
            .iter()
            .any(|f| f.evidence["contacts_not_remembered"].as_u64() > Some(0)));
    }

    #[test]
    fn a_sources_targets_stop_at_its_cap_and_the_alert_says_so() {
        let st = Settings::default();
        let mut d = ScanDetector::new(&st, &rules_with("max_contacts_per_source = 100")).unwrap();
        let mut out = Vec::new();
        let scanner: IpAddr = "198.18.1.5".parse().unwrap();
        // 300 hosts on port 23, none answering.
        for n in 0..300u16 {
            d.now = ts(u64::from(n / 10));
            let target = IpAddr::from([198, 19, (n >> 8) as u8, n as u8]);
            let now = d.now;
            probe(
                &mut d,
                (scanner, target, 23),
                ProbeType::Syn,
                now,
                false,
                &mut out,
            );
        }
        assert_eq!(d.sources[&scanner].targets.len(), 100);
        d.finish(&mut out);
        let f = out.iter().find(|f| f.kind == Kind::HostScan).unwrap();
        assert_eq!(f.evidence["targets"], 100);
        assert_eq!(f.evidence["attempts"], 300);
        assert_eq!(f.evidence["contacts_not_remembered"], 200);
        assert_eq!(f.evidence["remembered_per_source"], 100);
    }
}
