//! Lateral movement: zone segmentation policy, and admin / remote-execution sessions between
//! internal hosts that never talked to each other.
//!
//! * With a segmentation policy (`[[segmentation]]` in the config file), a connection from one
//!   zone to another that no entry allows raises `lateral_movement` when it is an admin service
//!   and `policy_violation` otherwise (at the flow's start, one alert per source and zone pair
//!   within the rule's suppression window).
//! * Without a policy covering the two hosts, an internal host that opens an admin or
//!   remote-execution session (SSH, Telnet, SMB, RDP, WinRM, VNC, DCE/RPC) to another internal
//!   host it has never talked to raises `lateral_movement`. The flows of such a *fresh* pair that
//!   follow within `idle_secs` make one episode, reported once when the pair goes quiet (no flow
//!   of it open, and `idle_secs` past its flows' last packets), with the
//!   SMB evidence of all its flows: shares (`ADMIN$`, `IPC$`), named pipes (`svcctl`,
//!   `PSEXESVC`...), DCE/RPC interfaces and operations, NTLM users.
//! * A session from a host that scanned shortly before refers to the scan (`after_scan`).
//!
//! "Talked to" is remembered for every pair of home hosts seen in a flow (any pair of hosts
//! when a segmentation policy is set: those are the pairs asked about; traffic to and from the
//! Internet would push the home pairs out), in two generations of at most `max_peers` pairs
//! each (the older one is dropped when the newer fills, and counted).

use super::rules::{RuleError, RuleSet};
use super::scan::ScanDetector;
use super::{Finding, Kind};
use crate::app::Emitted;
use crate::fast::{remove_if, GenerationSet, Generations, HashMap, HashSet};
use crate::flow::{Endpoint, FlowId, FlowMeta, FlowRecord};
use crate::proto::smb::SmbEvent;
use crate::settings::Settings;
use crate::time::Timestamp;
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

#[derive(Deserialize, Clone, Debug)]
#[serde(deny_unknown_fields)]
struct LateralParams {
    /// Admin / remote-execution services: name -> TCP ports.
    #[serde(default = "d_admin")]
    admin_services: BTreeMap<String, Vec<u16>>,
    /// A fresh pair's episode ends after this long without a new flow or event (seconds).
    #[serde(default = "d_idle")]
    idle_secs: u64,
    /// Pairs seen during this many seconds after the first packet are learned, not alerted.
    #[serde(default)]
    learning_secs: u64,
    /// A scan by the same source that began at most this long before refers to it.
    #[serde(default = "d_after_scan")]
    after_scan_secs: u64,
    /// Host pairs remembered per generation.
    #[serde(default = "d_max_peers")]
    max_peers: usize,
    /// Account names that mark a privileged logon (case-insensitive).
    #[serde(default = "d_privileged")]
    privileged_users: Vec<String>,
}

fn d_admin() -> BTreeMap<String, Vec<u16>> {
    [
        ("ssh", vec![22]),
        ("telnet", vec![23, 2323]),
        ("smb", vec![445, 139]),
        ("rdp", vec![3389]),
        ("winrm", vec![5985, 5986]),
        ("vnc", vec![5900, 5901, 5902, 5903]),
        ("dcerpc", vec![135]),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}
fn d_idle() -> u64 {
    60
}
fn d_after_scan() -> u64 {
    3600
}
fn d_max_peers() -> usize {
    500_000
}
fn d_privileged() -> Vec<String> {
    ["administrator", "admin", "root", "domain admin"]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

impl Default for LateralParams {
    fn default() -> Self {
        LateralParams {
            admin_services: d_admin(),
            idle_secs: d_idle(),
            learning_secs: 0,
            after_scan_secs: d_after_scan(),
            max_peers: d_max_peers(),
            privileged_users: d_privileged(),
        }
    }
}

/// DCE/RPC interfaces and named pipes that mean remote execution or discovery.
const EXEC_INTERFACES: &[(&str, &str)] = &[
    ("svcctl", "remote_service"),
    ("atsvc", "scheduled_task"),
    ("taskscheduler", "scheduled_task"),
    ("sasec", "scheduled_task"),
    ("samr", "account_discovery"),
    ("drsuapi", "directory_replication"),
    ("winreg", "remote_registry"),
    ("IRemoteSCMActivator", "dcom"),
];

/// Evidence gathered for one flow or one episode.
#[derive(Default, Clone)]
struct Evidence {
    shares: BTreeSet<String>,
    pipes: BTreeSet<String>,
    files: BTreeSet<String>,
    interfaces: BTreeSet<String>,
    operations: BTreeSet<String>,
    users: BTreeSet<String>,
    dialects: BTreeSet<&'static str>,
    encrypted: bool,
    /// Share of the last tree connect (decides pipe vs file for CREATE).
    last_share: String,
}

const MAX_SET: usize = 64;

/// No evidence (what a flow or episode without SMB has).
static NO_EVIDENCE: Evidence = Evidence {
    shares: BTreeSet::new(),
    pipes: BTreeSet::new(),
    files: BTreeSet::new(),
    interfaces: BTreeSet::new(),
    operations: BTreeSet::new(),
    users: BTreeSet::new(),
    dialects: BTreeSet::new(),
    encrypted: false,
    last_share: String::new(),
};

/// A flow's or an episode's SMB evidence, allocated at its first SMB event: most tracked
/// flows (first contacts between home hosts, every flow of a flood of them) carry none, and
/// the evidence is 200 bytes.
#[derive(Default)]
struct Smb(Option<Box<Evidence>>);

impl Smb {
    fn get(&self) -> &Evidence {
        self.0.as_deref().unwrap_or(&NO_EVIDENCE)
    }
    fn get_mut(&mut self) -> &mut Evidence {
        self.0.get_or_insert_with(Box::default)
    }
    fn merge(&mut self, other: &Smb) {
        if let Some(o) = &other.0 {
            self.get_mut().merge(o);
        }
    }
}

fn put(set: &mut BTreeSet<String>, v: String) {
    if set.len() < MAX_SET {
        set.insert(v);
    }
}

impl Evidence {
    fn add(&mut self, ev: &SmbEvent) {
        match ev {
            SmbEvent::Protocol { dialect } => {
                self.dialects.insert(dialect);
            }
            SmbEvent::Encrypted => self.encrypted = true,
            SmbEvent::SessionSetup { user, domain, .. } => {
                let u = if domain.is_empty() {
                    user.clone()
                } else {
                    format!("{domain}\\{user}")
                };
                put(&mut self.users, u);
            }
            SmbEvent::TreeConnect { path } => {
                let share = SmbEvent::share_name(path).to_string();
                self.last_share = share.to_ascii_uppercase();
                put(&mut self.shares, share);
            }
            SmbEvent::Create { name } => {
                // Named pipes live on IPC$; without the tree connect (picked up mid-session),
                // a bare name without extension or path is taken for a pipe.
                let bare = !name.contains(['.', '\\', '/']);
                if self.last_share == "IPC$" || (self.last_share.is_empty() && bare) {
                    put(&mut self.pipes, name.clone());
                } else {
                    put(&mut self.files, name.clone());
                }
            }
            SmbEvent::RpcBind { uuid, interface } => {
                put(
                    &mut self.interfaces,
                    interface.map_or_else(|| uuid.clone(), str::to_string),
                );
            }
            SmbEvent::RpcCall {
                interface,
                opnum,
                operation,
            } => {
                let op = match (interface, operation) {
                    (_, Some(o)) => o.to_string(),
                    (Some(i), None) => format!("{i}#{opnum}"),
                    (None, None) => format!("#{opnum}"),
                };
                put(&mut self.operations, op);
            }
        }
    }

    fn merge(&mut self, o: &Evidence) {
        for (a, b) in [
            (&mut self.shares, &o.shares),
            (&mut self.pipes, &o.pipes),
            (&mut self.files, &o.files),
            (&mut self.interfaces, &o.interfaces),
            (&mut self.operations, &o.operations),
            (&mut self.users, &o.users),
        ] {
            for v in b {
                put(a, v.clone());
            }
        }
        self.dialects.extend(o.dialects.iter().copied());
        self.encrypted |= o.encrypted;
    }

    /// SMB/DCE-RPC content that marks administration rather than file sharing: an admin share
    /// (`ADMIN$`, `C$`...), a remote-execution or discovery pipe or interface, or a privileged
    /// account; also SMB that could not be read (encrypted).
    fn admin_markers(&self, privileged: bool) -> bool {
        !self.techniques().is_empty() || privileged || self.encrypted
    }

    /// Remote execution proper (not discovery).
    fn remote_exec(&self) -> bool {
        self.techniques().iter().any(|t| {
            matches!(
                *t,
                "remote_service" | "scheduled_task" | "psexec" | "directory_replication" | "dcom"
            )
        })
    }

    fn techniques(&self) -> BTreeSet<&'static str> {
        let mut t = BTreeSet::new();
        for (i, tech) in EXEC_INTERFACES {
            if self.interfaces.iter().any(|x| x == i) || self.pipes.iter().any(|p| p == i) {
                t.insert(*tech);
            }
        }
        let psexec = |s: &String| {
            let l = s.to_ascii_lowercase();
            l.starts_with("psexesvc") || l.starts_with("remcom") || l.starts_with("paexec")
        };
        if self.pipes.iter().any(psexec) || self.files.iter().any(psexec) {
            t.insert("psexec");
        }
        let admin_share = self.shares.iter().any(|s| {
            let u = s.to_ascii_uppercase();
            u == "ADMIN$" || (u.len() == 2 && u.ends_with('$'))
        });
        if admin_share {
            t.insert("admin_share");
        }
        t
    }
}

/// A tracked flow of a fresh or policy-checked pair.
struct FlowInfo {
    pair: (IpAddr, IpAddr),
    evidence: Smb,
    merged: bool,
}

/// One episode of a pair (source, destination).
struct Pair {
    first: Timestamp,
    last: Timestamp,
    /// The latest packet time known of the episode's flows: their starts, their SMB events and
    /// their records' last packets (not when the records came: a flow's record comes at its
    /// end, later under load or after an idle timeout).
    active: Timestamp,
    open: u32,
    first_contact: bool,
    /// No admin session from this source to this destination before this episode.
    new_admin: bool,
    policy_denied: bool,
    services: BTreeSet<String>,
    ports: BTreeSet<u16>,
    flows: u32,
    evidence: Smb,
    meta: FlowMeta,
}

impl Pair {
    /// The pair's episode is over at `now`: no flow of it open, and quiet for `idle_secs`.
    fn ended(&self, now: Timestamp, idle_secs: u64) -> bool {
        self.open == 0 && now.secs_since(self.active) >= idle_secs
    }
}

/// A set of address pairs; a pair of IPv4 addresses is kept as one `u64` (8 bytes a pair in the
/// table, against 34 for the two addresses), the others as they are.
#[derive(Default)]
struct PairSet {
    v4: HashSet<u64>,
    other: HashSet<(IpAddr, IpAddr)>,
}

impl GenerationSet for PairSet {
    type Item = (IpAddr, IpAddr);
    fn contains(&self, (a, b): (IpAddr, IpAddr)) -> bool {
        match Self::key(a, b) {
            Ok(k) => self.v4.contains(&k),
            Err(k) => self.other.contains(&k),
        }
    }
    fn insert(&mut self, (a, b): (IpAddr, IpAddr)) {
        match Self::key(a, b) {
            Ok(k) => self.v4.insert(k),
            Err(k) => self.other.insert(k),
        };
    }
    fn size(&self) -> usize {
        self.v4.len() + self.other.len()
    }
}

impl PairSet {
    fn key(a: IpAddr, b: IpAddr) -> Result<u64, (IpAddr, IpAddr)> {
        match (a, b) {
            (IpAddr::V4(x), IpAddr::V4(y)) => {
                Ok(u64::from(u32::from(x)) << 32 | u64::from(u32::from(y)))
            }
            _ => Err((a, b)),
        }
    }
}

/// Address pairs remembered in two generations of at most `max` pairs each.
type PairMemory = Generations<PairSet>;

/// The lateral-movement detector.
pub struct LateralDetector {
    p: LateralParams,
    st: Settings,
    /// Port -> admin service name.
    admin: HashMap<u16, String>,
    /// Host pairs that have talked (in address order): home pairs only, unless a segmentation
    /// policy applies.
    peers: PairMemory,
    /// (source, destination) pairs that had an admin session.
    admin_peers: PairMemory,
    flows: HashMap<FlowId, FlowInfo>,
    pairs: HashMap<(IpAddr, IpAddr), Pair>,
    start: Option<Timestamp>,
    now: Timestamp,
    last_sweep: Timestamp,
    /// No pair's episode can end before this packet time (a lower bound: the earliest
    /// `active + idle_secs` of the pairs with no flow open when last looked at), so a sweep
    /// before it would find nothing: it is skipped. A pair's end only moves later as it is
    /// active; it gets one when its last open flow ends, which lowers this bound.
    next_end: Timestamp,
    lateral_on: bool,
    policy_on: bool,
    /// Tracking entries dropped because a table was full.
    pub evicted: u64,
}

const MAX_FLOWS: usize = 100_000;
const MAX_PAIRS: usize = 50_000;

impl LateralDetector {
    pub fn new(settings: &Settings, rules: &RuleSet) -> Result<Self, RuleError> {
        let rule = rules.get(Kind::LateralMovement, "");
        let p: LateralParams = match rule {
            Some(r) => r.params()?,
            None => LateralParams::default(),
        };
        let mut admin = HashMap::default();
        for (name, ports) in &p.admin_services {
            for port in ports {
                admin.insert(*port, name.clone());
            }
        }
        if p.idle_secs == 0 || p.max_peers == 0 {
            let reason = "idle_secs and max_peers must be positive".to_string();
            return Err(match rule {
                Some(r) => r.error(reason),
                None => RuleError {
                    file: "built-in".into(),
                    line: 0,
                    reason,
                },
            });
        }
        Ok(LateralDetector {
            p,
            st: settings.clone(),
            admin,
            peers: PairMemory::default(),
            admin_peers: PairMemory::default(),
            flows: HashMap::default(),
            pairs: HashMap::default(),
            start: None,
            now: Timestamp::ZERO,
            last_sweep: Timestamp::ZERO,
            next_end: Timestamp::ZERO,
            lateral_on: rules.enabled(Kind::LateralMovement, "").is_some(),
            policy_on: rules.enabled(Kind::PolicyViolation, "").is_some(),
            evicted: 0,
        })
    }

    /// One event from a worker; `scan` is asked about earlier scans by the same source.
    pub fn on_event(&mut self, ev: &Emitted, scan: &ScanDetector, out: &mut Vec<Finding>) {
        if !self.lateral_on && !self.policy_on {
            return;
        }
        match ev {
            Emitted::Started(m) => {
                self.tick(m.first, scan, out);
                self.on_start(m, scan, out);
            }
            Emitted::App { ts, .. } => self.tick(*ts, scan, out),
            Emitted::Activity { .. } => {}
            Emitted::Flow(r) => {
                self.tick(r.last, scan, out);
                self.on_end(r);
            }
            Emitted::Packet(p) => self.tick(p.ts, scan, out),
        }
    }

    /// SMB / DCE-RPC evidence of a flow (from the flow's SMB parser).
    pub fn on_smb(&mut self, meta: &FlowMeta, ts: Timestamp, ev: &SmbEvent) {
        if ts > self.now {
            self.now = ts;
        }
        if let Some(f) = self.flows.get_mut(&meta.id) {
            f.evidence.get_mut().add(ev);
            if let Some(p) = self.pairs.get_mut(&f.pair) {
                p.active = p.active.max(ts);
            }
        }
    }

    /// End of input: report open episodes.
    pub fn finish(&mut self, scan: &ScanDetector, out: &mut Vec<Finding>) {
        let ids: Vec<FlowId> = self.flows.keys().copied().collect();
        for id in ids {
            if let Some(f) = self.flows.remove(&id) {
                if let Some(p) = self.pairs.get_mut(&f.pair) {
                    p.evidence.merge(&f.evidence);
                    p.open = p.open.saturating_sub(1);
                }
            }
        }
        let mut keys: Vec<_> = self.pairs.iter().map(|(k, p)| (p.first, *k)).collect();
        keys.sort();
        for (_, k) in keys {
            if let Some(p) = self.pairs.remove(&k) {
                out.extend(self.finding(k, &p, scan));
            }
        }
    }

    fn tick(&mut self, ts: Timestamp, scan: &ScanDetector, out: &mut Vec<Finding>) {
        if self.start.is_none() {
            self.start = Some(ts);
        }
        if ts > self.now {
            self.now = ts;
        }
        if self.now.since(self.last_sweep) < 1_000_000_000 {
            return;
        }
        self.last_sweep = self.now;
        // Sweeps keep their once-a-second times, so those that find something come when they
        // did; most find nothing (episodes last minutes) and need not look at every pair.
        if self.now < self.next_end {
            return;
        }
        let (now, idle) = (self.now, self.p.idle_secs);
        let mut next_end = Timestamp(u64::MAX);
        let mut done = Vec::new();
        for (k, p) in &self.pairs {
            if p.ended(now, idle) {
                done.push((p.first, *k));
            } else if p.open == 0 {
                next_end = next_end.min(p.active.plus_secs(idle));
            }
        }
        self.next_end = next_end;
        done.sort();
        for (_, k) in done {
            if let Some(p) = self.pairs.remove(&k) {
                out.extend(self.finding(k, &p, scan));
            }
        }
    }

    /// Remembers that `a` and `b` talked; true when they had before.
    fn learn(&mut self, a: IpAddr, b: IpAddr) -> bool {
        let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
        self.peers
            .learn((lo, hi), self.p.max_peers, &mut self.evicted)
    }

    /// Marks a pair as known (seen in a model's training): its sessions are not first contacts.
    pub fn seed_known(&mut self, s: IpAddr, d: IpAddr) {
        self.learn_admin(s, d);
        self.learn(s, d);
    }

    fn had_admin(&self, s: IpAddr, d: IpAddr) -> bool {
        self.admin_peers.contains((s, d))
    }

    fn learn_admin(&mut self, s: IpAddr, d: IpAddr) {
        self.admin_peers
            .learn((s, d), self.p.max_peers, &mut self.evicted);
    }

    fn privileged(&self, e: &Evidence) -> bool {
        e.users.iter().any(|u| {
            let name = u.rsplit('\\').next().unwrap_or(u);
            self.p
                .privileged_users
                .iter()
                .any(|x| x.eq_ignore_ascii_case(name))
        })
    }

    /// The admin service a TCP flow's server port is, if any.
    fn service(&self, m: &FlowMeta) -> Option<&str> {
        if m.proto != 6 {
            return None;
        }
        self.admin.get(&m.responder.port).map(String::as_str)
    }

    fn on_start(&mut self, m: &FlowMeta, scan: &ScanDetector, out: &mut Vec<Finding>) {
        let (s, d) = (m.initiator.ip, m.responder.ip);
        if s == d {
            return;
        }
        // Only pairs that can become an episode are remembered: two home hosts, or any two
        // hosts when a segmentation policy may deny their session. Traffic to and from the
        // Internet (a spoofed flood's millions of pairs) would push the home pairs out and
        // make every one of them a first contact again.
        let both_home = self.st.is_home(s) && self.st.is_home(d);
        let talked = (both_home || !self.st.segmentation.is_empty()) && self.learn(s, d);
        // A flow picked up mid-connection with the server side first: not an opening.
        let (ip, rp) = (m.initiator.port, m.responder.port);
        if matches!(m.proto, 6 | 17) && ip < 1024 && rp >= 1024 {
            return;
        }
        let admin = self.service(m).is_some();
        // Zones only matter to a segmentation policy (looked up only when there is one).
        let zones = if self.st.segmentation.is_empty() {
            None
        } else {
            match (self.st.zones.index_of(s), self.st.zones.index_of(d)) {
                (Some(a), Some(b)) if a != b => Some((a, b)),
                _ => None,
            }
        };
        let mut denied = false;
        if let Some((a, b)) = zones {
            if self.st.zones_allow(a, b, m.proto, rp) {
                return; // the policy decides, and allows
            }
            if !admin {
                if self.policy_on {
                    out.push(self.policy_finding(m, a, b));
                }
                return;
            }
            denied = true;
        }
        if !self.lateral_on {
            return;
        }
        // An episode that is over is reported before this flow, whether a sweep has come by
        // since or not: where an episode ends depends on its flows' times, not on how much
        // other traffic there was.
        let (now, idle) = (self.now, self.p.idle_secs);
        if let Some(p) = remove_if(&mut self.pairs, (s, d), |p| p.ended(now, idle)) {
            out.extend(self.finding((s, d), &p, scan));
        }
        let open_pair = self.pairs.contains_key(&(s, d));
        // Admin ports, the rest of an open episode, and first contacts (DCE/RPC on a dynamic
        // port is recognised by content), between two home addresses.
        let track = denied || (m.proto == 6 && (admin || open_pair || !talked) && both_home);
        if !track {
            return;
        }
        if self.flows.len() >= MAX_FLOWS {
            self.evicted += self.flows.len() as u64;
            self.flows.clear();
            for p in self.pairs.values_mut() {
                p.open = 0;
            }
            self.next_end = Timestamp::ZERO;
        }
        if !open_pair && self.pairs.len() >= MAX_PAIRS {
            self.evicted += 1;
            return;
        }
        let learning = self
            .start
            .is_some_and(|t0| m.first.secs_since(t0) < self.p.learning_secs);
        let new_admin = !learning && !self.had_admin(s, d);
        let p = self.pairs.entry((s, d)).or_insert_with(|| Pair {
            first: m.first,
            last: m.first,
            active: m.first,
            open: 0,
            first_contact: !talked,
            new_admin,
            policy_denied: false,
            services: BTreeSet::new(),
            ports: BTreeSet::new(),
            flows: 0,
            evidence: Smb::default(),
            meta: *m,
        });
        p.open += 1;
        p.active = p.active.max(m.first);
        p.policy_denied |= denied;
        self.flows.insert(
            m.id,
            FlowInfo {
                pair: (s, d),
                evidence: Smb::default(),
                merged: false,
            },
        );
    }

    fn on_end(&mut self, r: &FlowRecord) {
        let m = &r.meta;
        let last_slice = r.end != crate::flow::FlowEnd::ActiveTimeout;
        let Some(f) = self.flows.get_mut(&m.id) else {
            return;
        };
        let taken = std::mem::take(&mut f.evidence);
        let was_merged = f.merged;
        f.merged = true;
        let ev = taken.get();
        let pair = f.pair;
        if last_slice {
            self.flows.remove(&m.id);
        } else if !ev.last_share.is_empty() {
            // The flow goes on: its next slice's CREATEs still need the share they are in.
            f.evidence.get_mut().last_share = ev.last_share.clone();
        }
        let service = self.service(m).map(str::to_string).or_else(|| {
            (!ev.interfaces.is_empty() || ev.dialects.contains("dcerpc")).then(|| "dcerpc".into())
        });
        if let Some(p) = self.pairs.get_mut(&pair) {
            if last_slice {
                p.open = p.open.saturating_sub(1);
            }
            p.active = p.active.max(r.last);
            if p.open == 0 {
                self.next_end = self.next_end.min(p.active.plus_secs(self.p.idle_secs));
            }
        }
        let Some(service) = service else {
            return;
        };
        let established = r.synack_seen || (r.fwd.payload_bytes > 0 && r.rev.payload_bytes > 0);
        let opened = r.fwd.syns > 0;
        let smb = service == "smb" || service == "dcerpc";
        let privileged = self.privileged(ev);
        let Some(p) = self.pairs.get_mut(&pair) else {
            return;
        };
        let qualifies = if p.policy_denied {
            true
        } else if !established {
            false
        } else if smb {
            // File sharing is not administration: SMB needs admin markers, or SMB that could
            // not be read at all on a session whose start was seen.
            ev.admin_markers(privileged) || (opened && ev.dialects.is_empty())
        } else {
            true
        };
        if !qualifies {
            return;
        }
        if self.admin.contains_key(&m.responder.port) || service == "dcerpc" {
            self.learn_admin(pair.0, pair.1);
        }
        let Some(p) = self.pairs.get_mut(&pair) else {
            return;
        };
        if !was_merged {
            p.flows += 1;
        }
        p.services.insert(service);
        p.ports.insert(m.responder.port);
        p.last = p.last.max(r.last);
        p.evidence.merge(&taken);
    }

    /// A connection from zone `from` to zone `to` (indices of the zones) that no rule allows.
    fn policy_finding(&self, m: &FlowMeta, from: usize, to: usize) -> Finding {
        let zf = self.st.zones.name(from).unwrap_or_default();
        let zt = self.st.zones.name(to).unwrap_or_default();
        let mut f = Finding::for_flow(m.first, Kind::PolicyViolation, m, None)
            .with("zone_from", zf)
            .with("zone_to", zt)
            .with("service", service_label(m.proto, m.responder.port))
            .with(
                "allowed",
                self.st
                    .segmentation_allowed(zf, zt)
                    .into_iter()
                    .collect::<Vec<_>>(),
            )
            .with("policy", "segmentation");
        f.identifier = format!("{}|{zf}|{zt}", m.initiator.ip);
        f
    }

    fn finding(&self, (s, d): (IpAddr, IpAddr), p: &Pair, scan: &ScanDetector) -> Option<Finding> {
        let e = p.evidence.get();
        if p.flows == 0 || !(p.new_admin || p.policy_denied || e.remote_exec()) {
            return None;
        }
        let main = p
            .services
            .iter()
            .find(|x| *x != "dcerpc")
            .or(p.services.iter().next())
            .cloned()
            .unwrap_or_default();
        let priv_user = self.privileged(e);
        let list = |s: &BTreeSet<String>| s.iter().cloned().collect::<Vec<_>>();
        let mut f = Finding {
            ts: p.last,
            kind: Kind::LateralMovement,
            variant: "",
            src: Some(Endpoint { ip: s, port: 0 }),
            dst: Some(Endpoint {
                ip: d,
                port: p
                    .ports
                    .iter()
                    .find(|x| self.admin.get(*x) == Some(&main))
                    .or(p.ports.iter().next())
                    .copied()
                    .unwrap_or(0),
            }),
            proto: 6,
            flow_id: None,
            vlan: p.meta.vlan,
            app_proto: None,
            identifier: format!("{s}|{d}|lateral"),
            evidence: Default::default(),
            admission: Default::default(),
        }
        .with("service", main.clone())
        .with("services", list(&p.services))
        .with("ports", p.ports.iter().copied().collect::<Vec<_>>())
        .with("flows", p.flows)
        .with("first", p.first.rfc3339().to_string())
        .with("last", p.last.rfc3339().to_string())
        .with("first_contact", p.first_contact)
        .with("new_admin_peer", p.new_admin)
        .with("policy_denied", p.policy_denied)
        .with("zone_from", self.st.zone_of(s))
        .with("zone_to", self.st.zone_of(d))
        .with("smb_shares", list(&e.shares))
        .with("named_pipes", list(&e.pipes))
        .with("smb_files", list(&e.files))
        .with("rpc_interfaces", list(&e.interfaces))
        .with("rpc_operations", list(&e.operations))
        .with("users", list(&e.users))
        .with("privileged_user", priv_user)
        .with("techniques", e.techniques().into_iter().collect::<Vec<_>>());
        if e.encrypted {
            f = f.with("smb_encrypted", true);
        }
        if let Some(r) = scan.recent_scan(s, p.first) {
            if p.first.secs_since(r.first) <= self.p.after_scan_secs {
                f = f.with("after_scan", r.evidence());
            }
        }
        Some(f)
    }
}

fn service_label(proto: u8, port: u16) -> String {
    match proto {
        6 => format!("tcp/{port}"),
        17 => format!("udp/{port}"),
        1 | 58 => "icmp".into(),
        p => format!("ip/{p}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::Vlans;
    use crate::flow::{DirStats, FlowEnd, FlowKey, TcpState};

    #[test]
    fn pair_memory_keeps_two_generations_of_v4_and_v6_pairs() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let mut m = PairMemory::default();
        let mut evicted = 0;
        let v4 = |n: u8| ip(&format!("198.18.0.{n}"));
        // (a, b) and (b, a) are different pairs; a v6 pair is kept apart from the v4 ones.
        assert!(!m.learn((v4(1), v4(2)), 3, &mut evicted));
        assert!(m.learn((v4(1), v4(2)), 3, &mut evicted));
        assert!(!m.contains((v4(2), v4(1))));
        assert!(!m.learn((ip("fd00::1"), ip("fd00::2")), 3, &mut evicted));
        assert!(m.contains((ip("fd00::1"), ip("fd00::2"))));
        assert!(!m.learn((v4(3), v4(4)), 3, &mut evicted));
        // The newer generation is full (3): it becomes the older one.
        assert!(!m.learn((v4(5), v4(6)), 3, &mut evicted));
        assert_eq!(evicted, 0);
        assert!(m.contains((v4(1), v4(2))) && m.contains((ip("fd00::1"), ip("fd00::2"))));
        // Known from the older generation, and moved into the newer one.
        assert!(m.learn((v4(1), v4(2)), 3, &mut evicted));
        assert!(!m.learn((v4(7), v4(8)), 3, &mut evicted));
        // Full again: the older generation's three pairs are dropped; (1, 2) was moved on.
        assert!(!m.learn((v4(9), v4(10)), 3, &mut evicted));
        assert_eq!(evicted, 3);
        assert!(m.contains((v4(1), v4(2))));
        assert!(!m.contains((v4(3), v4(4))));
        assert!(!m.contains((ip("fd00::1"), ip("fd00::2"))));
    }

    fn meta(s: &str, sp: u16, d: &str, dp: u16, t: u64) -> FlowMeta {
        let a = Endpoint {
            ip: s.parse().unwrap(),
            port: sp,
        };
        let b = Endpoint {
            ip: d.parse().unwrap(),
            port: dp,
        };
        let (key, _) = FlowKey::new(a, b, 6, Vlans::default(), None);
        FlowMeta {
            id: key.flow_id(t),
            initiator: a,
            responder: b,
            proto: 6,
            vlan: Vlans::default(),
            vni: None,
            first: Timestamp::from_secs(t),
            initiator_mac: None,
            responder_mac: None,
            local: FlowMeta::local_bits(true, true),
        }
    }

    fn record(m: FlowMeta, secs: u64) -> FlowRecord {
        let dir = DirStats {
            packets: 5,
            bytes: 500,
            payload_bytes: 200,
            tcp_flags: 0x1a,
            syns: 1,
            rsts: 0,
        };
        FlowRecord {
            meta: m,
            start: m.first,
            last: m.first.plus_secs(secs),
            fwd: dir,
            rev: DirStats { syns: 1, ..dir },
            tcp: TcpState::Closed,
            end: FlowEnd::Fin,
            app: "unknown",
            gaps: [0; 2],
            synack_seen: true,
            memcap_shed: false,
        }
    }

    fn run(st: &Settings, flows: &[FlowMeta]) -> Vec<Finding> {
        run_with(st, flows, |_| {}).0
    }

    /// Each flow's start and its 2-second record through a detector that `tune` set up, then
    /// the end of input: the findings and the detector.
    fn run_with(
        st: &Settings,
        flows: &[FlowMeta],
        tune: impl FnOnce(&mut LateralDetector),
    ) -> (Vec<Finding>, LateralDetector) {
        let rules = RuleSet::embedded().unwrap();
        let scan = ScanDetector::new(st, &rules).unwrap();
        let mut d = LateralDetector::new(st, &rules).unwrap();
        tune(&mut d);
        let mut out = Vec::new();
        for m in flows {
            d.on_event(&Emitted::Started(*m), &scan, &mut out);
            d.on_event(&Emitted::Flow(record(*m, 2)), &scan, &mut out);
        }
        d.finish(&scan, &mut out);
        (out, d)
    }

    #[test]
    fn first_admin_session_between_internal_hosts() {
        let st = Settings::default();
        let out = run(
            &st,
            &[
                // Routine web traffic to .9, then the first SSH session to it: a new admin peer.
                meta("10.0.0.5", 40000, "10.0.0.9", 80, 100),
                meta("10.0.0.5", 40001, "10.0.0.9", 22, 110),
                // An SSH session to a host never talked to.
                meta("10.0.0.5", 40002, "10.0.0.7", 22, 120),
                // Outbound SSH to the Internet is not east-west.
                meta("10.0.0.5", 40003, "192.0.2.1", 22, 130),
                // A later SSH session to .7 (after the episode closed): a known admin peer.
                meta("10.0.0.5", 40004, "10.0.0.7", 22, 1000),
                meta("10.0.0.5", 40005, "10.0.0.8", 1000, 2000),
            ],
        );
        let got: Vec<_> = out
            .iter()
            .map(|f| {
                (
                    f.kind,
                    f.dst.unwrap().ip.to_string(),
                    f.evidence["flows"].clone(),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                (Kind::LateralMovement, "10.0.0.9".to_string(), 1.into()),
                (Kind::LateralMovement, "10.0.0.7".to_string(), 1.into()),
            ],
            "{out:?}"
        );
        assert_eq!(out[1].evidence["service"], "ssh");
        assert_eq!(out[1].evidence["first_contact"], true);
        assert_eq!(out[1].evidence["new_admin_peer"], true);
    }

    /// An episode ends `idle_secs` after its flows' last packets, whenever their records come:
    /// a record that comes late (other traffic has moved the detector's clock on) does not
    /// keep the episode open for a session that follows past the idle time.
    #[test]
    fn episodes_end_by_the_flows_own_times_whenever_their_records_come() {
        let st = Settings::default();
        let rules = RuleSet::embedded().unwrap();
        let scan = ScanDetector::new(&st, &rules).unwrap();
        // An SSH session (last packet at 102 s), traffic to the Internet at 165 s, and a second
        // SSH session of the pair at 170 s: 68 s after the first one's last packet.
        let a = meta("10.0.0.5", 40001, "10.0.0.9", 22, 100);
        let other = meta("10.0.0.6", 40000, "192.0.2.1", 443, 165);
        let b = meta("10.0.0.5", 40002, "10.0.0.9", 22, 170);
        for late in [false, true] {
            let mut d = LateralDetector::new(&st, &rules).unwrap();
            let mut out = Vec::new();
            let mut ev = |d: &mut LateralDetector, e: Emitted| d.on_event(&e, &scan, &mut out);
            ev(&mut d, Emitted::Started(a));
            if !late {
                ev(&mut d, Emitted::Flow(record(a, 2)));
            }
            ev(&mut d, Emitted::Started(other));
            ev(&mut d, Emitted::Flow(record(other, 2)));
            if late {
                // The first session's record comes after the other traffic, at 167 s.
                ev(&mut d, Emitted::Flow(record(a, 2)));
            }
            ev(&mut d, Emitted::Started(b));
            ev(&mut d, Emitted::Flow(record(b, 2)));
            d.finish(&scan, &mut out);
            // Two episodes: the first one's alert counts its one session (the second session
            // is no new admin peer any more, so it raises none).
            assert_eq!(out.len(), 1, "late {late}: {out:?}");
            assert_eq!(
                out[0].evidence["flows"],
                serde_json::Value::from(1),
                "late {late}: {out:?}"
            );
            assert_eq!(out[0].ts, Timestamp::from_secs(102), "late {late}");
        }
    }

    /// Tracked flows and episodes without SMB hold no evidence of their own (a flood of first
    /// contacts between home hosts carries none); the first SMB event of a flow makes it, and
    /// its episode takes it when the flow ends.
    #[test]
    fn evidence_is_allocated_at_the_first_smb_event() {
        let st = Settings::default();
        let rules = RuleSet::embedded().unwrap();
        let scan = ScanDetector::new(&st, &rules).unwrap();
        let mut d = LateralDetector::new(&st, &rules).unwrap();
        let mut out = Vec::new();
        let ssh = meta("10.0.0.5", 40001, "10.0.0.9", 22, 100);
        let smb = meta("10.0.0.5", 40002, "10.0.0.7", 445, 101);
        for m in [ssh, smb] {
            d.on_event(&Emitted::Started(m), &scan, &mut out);
        }
        assert_eq!(d.flows.len(), 2);
        assert!(d.flows.values().all(|f| f.evidence.0.is_none()));
        let at = Timestamp::from_secs(102);
        d.on_smb(&smb, at, &SmbEvent::Protocol { dialect: "smb2" });
        d.on_smb(&smb, at, &SmbEvent::Encrypted);
        assert!(d.flows[&smb.id].evidence.0.is_some());
        assert!(d.flows[&ssh.id].evidence.0.is_none());
        for m in [ssh, smb] {
            d.on_event(&Emitted::Flow(record(m, 2)), &scan, &mut out);
        }
        let pair = |m: &FlowMeta| &d.pairs[&(m.initiator.ip, m.responder.ip)];
        assert!(pair(&ssh).evidence.0.is_none());
        let e = pair(&smb).evidence.get();
        assert!(e.encrypted && e.dialects.contains("smb2"));
    }

    /// Pairs with an end outside the home networks are not remembered: a flood of them does
    /// not push out the home pairs, whose next admin session is then no first contact.
    #[test]
    fn traffic_from_outside_does_not_push_home_pairs_out() {
        let mut flows = vec![meta("10.0.0.5", 40000, "10.0.0.9", 80, 100)];
        for n in 0..20u16 {
            let src = format!("203.0.113.{n}");
            flows.push(meta(&src, 50000 + n, "10.0.0.9", 443, 200 + u64::from(n)));
        }
        flows.push(meta("10.0.0.5", 40001, "10.0.0.9", 22, 1000));
        let (out, d) = run_with(&Settings::default(), &flows, |d| d.p.max_peers = 4);
        assert_eq!(out.len(), 1, "{:?}", crate::detect::described(&out));
        assert_eq!(out[0].evidence["new_admin_peer"], true);
        assert_eq!(out[0].evidence["first_contact"], false);
        assert_eq!(d.evicted, 0);
    }

    /// Where an episode of a pair ends depends on its flows' times only: a detector that swept
    /// just before the pair's next session (other traffic made it sweep, and it sweeps at most
    /// once a second) and one that did not give the same alerts.
    #[test]
    fn episodes_end_at_the_same_session_whatever_other_traffic_came_between() {
        let st = Settings::default();
        let rules = RuleSet::embedded().unwrap();
        let scan = ScanDetector::new(&st, &rules).unwrap();
        let mut busy = LateralDetector::new(&st, &rules).unwrap();
        let mut quiet = LateralDetector::new(&st, &rules).unwrap();
        let (mut a, mut b) = (Vec::new(), Vec::new());
        // An SSH session of 2 s, then (60.5 s after its end) another between the same hosts.
        let first = meta("198.18.0.5", 40000, "198.18.0.9", 22, 100);
        let mut second = meta("198.18.0.5", 40001, "198.18.0.9", 22, 162);
        second.first = Timestamp(second.first.0 + 500_000_000);
        // Other traffic 0.6 s before the second session: the episode is not over yet.
        let other = meta("198.18.0.6", 40002, "198.18.0.7", 1883, 100);
        let ping = Emitted::App {
            meta: other,
            ts: Timestamp(second.first.0 - 600_000_000),
            dir: crate::flow::Direction::Forward,
            event: crate::proto::ProtoEvent::MqttPing,
        };
        for (i, m) in [first, second].into_iter().enumerate() {
            if i == 1 {
                busy.on_event(&ping, &scan, &mut a);
            }
            for ev in [Emitted::Started(m), Emitted::Flow(record(m, 2))] {
                busy.on_event(&ev, &scan, &mut a);
                quiet.on_event(&ev, &scan, &mut b);
            }
        }
        busy.finish(&scan, &mut a);
        quiet.finish(&scan, &mut b);
        let show = crate::detect::described;
        // The first session is the new admin peer's alert; the second, a known admin peer, none.
        assert_eq!(a.len(), 1, "{:?}", show(&a));
        assert_eq!(a[0].evidence["flows"], 1);
        assert_eq!(show(&a), show(&b));
    }

    #[test]
    fn segmentation_policy() {
        let st = Settings::from_toml(
            "t.toml",
            r#"
[zones]
iot = ["10.1.0.0/16"]
office = ["10.2.0.0/16"]
servers = ["10.3.0.0/16"]
[[segmentation]]
from = "office"
to = "servers"
allow = ["https", "tcp/8000-8100", "rdp"]
[[segmentation]]
from = "iot"
to = "servers"
allow = ["mqtt"]
"#,
        )
        .unwrap();
        let allows = |from: &str, to: &str, proto, port| {
            let zone = |n: &str| st.zones.position(n).unwrap();
            st.zones_allow(zone(from), zone(to), proto, port)
        };
        assert!(allows("office", "servers", 6, 443));
        assert!(allows("office", "servers", 6, 8050));
        assert!(!allows("office", "servers", 17, 8050));
        assert!(!allows("iot", "office", 6, 443));
        assert!(allows("iot", "iot", 6, 22), "same zone");
        let out = run(
            &st,
            &[
                meta("10.2.0.5", 40000, "10.3.0.9", 443, 100), // allowed
                meta("10.2.0.5", 40001, "10.3.0.9", 3389, 101), // allowed admin
                meta("10.1.0.5", 40002, "10.3.0.9", 1883, 102), // allowed
                meta("10.1.0.5", 40003, "10.3.0.9", 8080, 103), // not allowed, not admin
                meta("10.1.0.5", 40004, "10.2.0.7", 22, 104),  // not allowed, admin
            ],
        );
        let kinds: Vec<_> = out.iter().map(|f| (f.kind, f.dst.unwrap().port)).collect();
        assert_eq!(
            kinds,
            vec![(Kind::PolicyViolation, 8080), (Kind::LateralMovement, 22)],
            "{out:?}"
        );
        assert_eq!(out[0].evidence["zone_from"], "iot");
        assert_eq!(out[0].evidence["zone_to"], "servers");
        assert_eq!(out[1].evidence["policy_denied"], true);
        let e = Settings::from_toml(
            "t.toml",
            "[zones]\na = [\"10.0.0.0/8\"]\n[[segmentation]]\nfrom = \"a\"\nto = \"b\"\nallow = [\"ssh\"]\n",
        )
        .unwrap_err();
        assert_eq!(e.line, 5, "{e}");
        let e = Settings::from_toml(
            "t.toml",
            "[zones]\na = [\"10.0.0.0/8\"]\n[[segmentation]]\nfrom = \"a\"\nto = \"*\"\nallow = [\n\"tcp/22\",\n\"tcp/99999\"]\n",
        )
        .unwrap_err();
        assert_eq!(e.line, 8, "{e}");
    }

    #[test]
    fn login_after_scan_refers_to_the_scan() {
        let st = Settings::default();
        let rules = RuleSet::embedded().unwrap();
        let mut scan = ScanDetector::new(&st, &rules).unwrap();
        let mut d = LateralDetector::new(&st, &rules).unwrap();
        let mut out = Vec::new();
        // 10.0.0.5 probes 10 ports of 10.0.0.7; only 22 answers.
        for port in 20..30u16 {
            let m = meta("10.0.0.5", 50000 + port, "10.0.0.7", port, 100);
            let mut r = record(m, 0);
            r.synack_seen = port == 22;
            r.fwd.tcp_flags = 0x02;
            r.rev.tcp_flags = if port == 22 { 0x12 } else { 0x14 };
            scan.on_event(&Emitted::Flow(r), &mut out);
        }
        let m = meta("10.0.0.5", 40000, "10.0.0.7", 22, 130);
        for ev in [Emitted::Started(m), Emitted::Flow(record(m, 20))] {
            scan.on_event(&ev, &mut out);
            d.on_event(&ev, &scan, &mut out);
        }
        scan.finish(&mut out);
        d.finish(&scan, &mut out);
        let kinds: Vec<Kind> = out.iter().map(|f| f.kind).collect();
        assert_eq!(
            kinds,
            vec![Kind::PortScan, Kind::LateralMovement],
            "{out:?}"
        );
        let after = &out[1].evidence["after_scan"];
        assert_eq!(after["kind"], "port_scan");
        assert_eq!(after["ports"], 10);
        assert_eq!(after["identifier"], out[0].identifier.as_str());
    }
}
