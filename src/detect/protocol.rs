//! Detectors on protocol events: plaintext sessions, clear-text and default credentials, brute
//! force (and password spraying), MQTT topic policy, weak TLS and protocol anomalies.
//!
//! The analyzers in `proto/` describe what was said; this module decides what is worth an alert.

use super::rules::{Rule, RuleError, RuleSet};
use super::{Finding, Gate, Ident, Kind};
use crate::fast::{remove_if, HashMap, HashSet};
use crate::flow::{Direction, FlowId, FlowMeta, FlowRecord};
use crate::proto::{clip_str, AppProto, Outcome, ProtoEvent};
use crate::time::Timestamp;
use serde::Deserialize;
use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::PathBuf;

/// Default credential lists built into the binary (used with the built-in rules).
const EMBEDDED_LISTS: &[(&str, &str)] = &[
    (
        "credentials/mirai.txt",
        include_str!("../../rules/credentials/mirai.txt"),
    ),
    (
        "credentials/vendors.txt",
        include_str!("../../rules/credentials/vendors.txt"),
    ),
];
const EMBEDDED_ACL: (&str, &str) = (
    "policy/mqtt-topics.toml",
    include_str!("../../rules/policy/mqtt-topics.toml"),
);

/// Masks a secret as first character, stars, last character (`p******d`).
pub fn mask(secret: &[u8]) -> String {
    let s = String::from_utf8_lossy(secret);
    let n = s.chars().count();
    let (Some(first), Some(last)) = (s.chars().next(), s.chars().next_back()) else {
        return String::new();
    };
    if n <= 2 {
        return "*".repeat(n);
    }
    let mut m = String::with_capacity(n + 6);
    m.push(first);
    m.extend(std::iter::repeat_n('*', n - 2));
    m.push(last);
    m
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DefaultCredParams {
    /// Credential list files, relative to the rules directory.
    #[serde(default = "default_lists")]
    lists: Vec<String>,
}
fn default_lists() -> Vec<String> {
    EMBEDDED_LISTS.iter().map(|(n, _)| n.to_string()).collect()
}

#[derive(Deserialize, Clone, Copy)]
#[serde(deny_unknown_fields)]
struct BruteParams {
    /// Failed logins from one source to one service that make a brute force.
    #[serde(default = "d_failures")]
    failures: u32,
    /// An episode ends after this many seconds without a failure (seconds of packet time).
    #[serde(default = "d_window")]
    window_secs: u64,
    /// A long episode is reported at least this often.
    #[serde(default = "d_max_episode")]
    max_episode_secs: u64,
    /// Distinct usernames that make it password spraying.
    #[serde(default = "d_spray")]
    spray_usernames: u32,
    /// Short connections from one source to one SSH server that make an SSH brute force
    /// (SSH is encrypted: judged from connection patterns).
    #[serde(default = "d_ssh_conns")]
    ssh_connections: u32,
}
fn d_failures() -> u32 {
    5
}
impl BruteParams {
    /// An episode seen from `first` to `last` is over at `now`: quiet for the window, or run
    /// for as long as an episode is reported.
    fn ended(&self, first: Timestamp, last: Timestamp, now: Timestamp) -> bool {
        now.secs_since(last) >= self.window_secs || now.secs_since(first) >= self.max_episode_secs
    }

    /// The packet time from which [`BruteParams::ended`] holds.
    fn end(&self, first: Timestamp, last: Timestamp) -> Timestamp {
        (last.plus_secs(self.window_secs)).min(first.plus_secs(self.max_episode_secs))
    }
}

fn d_window() -> u64 {
    60
}
fn d_max_episode() -> u64 {
    300
}
fn d_spray() -> u32 {
    5
}
fn d_ssh_conns() -> u32 {
    8
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AclParams {
    /// Topic policy file, relative to the rules directory.
    #[serde(default = "d_policy")]
    policy: String,
}
fn d_policy() -> String {
    EMBEDDED_ACL.0.into()
}

/// Topic policy: which device may publish or subscribe to which topic filters.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct AclFile {
    /// Devices allowed to subscribe to `#` or `$SYS/#` (IP, CIDR or client id).
    #[serde(default)]
    wildcard_subscribers: Vec<String>,
    #[serde(default)]
    device: Vec<toml::Spanned<AclEntry>>,
}

#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
struct AclEntry {
    /// IP address or CIDR of the device.
    ip: Option<String>,
    /// MQTT client id (exact, or a prefix ending in `*`).
    client_id: Option<String>,
    #[serde(default)]
    publish: Vec<String>,
    #[serde(default)]
    subscribe: Vec<String>,
}

enum Who {
    Net(ipnet::IpNet),
    Client(String),
}

impl Who {
    fn parse(s: &str) -> Who {
        match crate::settings::parse_cidr(s) {
            Ok(n) => Who::Net(n),
            Err(_) => Who::Client(s.to_string()),
        }
    }
    fn matches(&self, ip: IpAddr, client_id: Option<&str>) -> bool {
        match self {
            Who::Net(n) => crate::settings::in_nets(std::slice::from_ref(n), ip),
            Who::Client(c) => client_id.is_some_and(|id| match c.strip_suffix('*') {
                Some(prefix) => id.starts_with(prefix),
                None => id == c,
            }),
        }
    }
}

struct Acl {
    wildcard: Vec<Who>,
    devices: AclDevices,
    origin: String,
}

/// A device entry of the topic policy: who, the filters it may publish to, and those it may
/// subscribe to.
type AclDevice = (Who, Vec<String>, Vec<String>);

/// The topic policy's device entries, looked up at every MQTT publish and subscribe: the first
/// entry (in file order) that matches the client, as a scan of the entries finds it, but
/// through maps (a look per network prefix length and per client-id prefix length in the
/// policy), so a policy of thousands of devices costs a publish about what a policy of five
/// does.
struct AclDevices {
    entries: Vec<AclDevice>,
    /// The first entry of each network (a single address is a /32 or /128).
    nets: crate::settings::NetMap<usize>,
    /// The first entry of each exact client id.
    clients: HashMap<String, usize>,
    /// Per length of the client-id prefixes (`dev-*` is 4): the first entry of each prefix.
    prefixes: crate::fast::ByLength<Box<[u8]>, usize>,
}

impl AclDevices {
    fn new(entries: Vec<AclDevice>) -> AclDevices {
        let mut nets = crate::settings::NetMap::default();
        let mut clients = HashMap::default();
        let mut prefixes = crate::fast::ByLength::default();
        for (i, (who, _, _)) in entries.iter().enumerate() {
            match who {
                Who::Net(n) => {
                    nets.get_or_insert_with(n, || i);
                }
                Who::Client(c) => match c.strip_suffix('*') {
                    None => {
                        clients.entry(c.clone()).or_insert(i);
                    }
                    Some(p) => {
                        prefixes.get_or_insert_with(p.len(), p.as_bytes().into(), || i);
                    }
                },
            }
        }
        AclDevices {
            entries,
            nets,
            clients,
            prefixes,
        }
    }

    /// The first entry that matches `ip` or `client`.
    fn entry(&self, ip: IpAddr, client: Option<&str>) -> Option<&AclDevice> {
        let nets = self.nets.matches(ip);
        let exact = client.and_then(|c| self.clients.get(c));
        let prefixes = client.into_iter().flat_map(|c| {
            (self.prefixes.iter())
                .filter_map(move |(len, m)| c.as_bytes().get(..len).and_then(|p| m.get(p)))
        });
        let first = nets.chain(exact).chain(prefixes).min()?;
        self.entries.get(*first)
    }
}

/// MQTT topic filter matching (`+` one level, `#` the rest).
pub fn topic_matches(filter: &str, topic: &str) -> bool {
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return !topic.starts_with('$') || !filter.starts_with('#'),
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// A subscription filter is covered by an allowed filter when every topic it can match is.
fn filter_covered(allowed: &str, requested: &str) -> bool {
    let mut a = allowed.split('/');
    let mut r = requested.split('/');
    loop {
        match (a.next(), r.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(x)) if x != "#" => {}
            (Some(x), Some(y)) if x == y => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Per brute-force episode state (one source against one service).
struct Episode {
    app: AppProto,
    first: Timestamp,
    last: Timestamp,
    failures: u32,
    successes: u32,
    /// Hashes of the distinct usernames tried (the first `MAX_USERNAMES`), to count them.
    tried: Vec<u64>,
    /// The `SHOWN_USERNAMES` of those that sort first, cut to `MAX_KEPT` bytes (the
    /// alert's list), as far as `MAX_NAME_BYTES` lets all the episodes keep names.
    usernames: BTreeSet<String>,
    /// What `usernames` counts against `MAX_NAME_BYTES` (see [`name_cost`]).
    name_bytes: usize,
    /// Distinct usernames not kept for the list because the episodes' names had reached
    /// `MAX_NAME_BYTES`.
    names_not_kept: u32,
    accepted_user: Option<String>,
    meta: FlowMeta,
}

/// A brute-force episode's source, server and service port.
type EpisodeKey = (IpAddr, IpAddr, u16);

const MAX_USERNAMES: usize = 64;
const SHOWN_USERNAMES: usize = 10;
const MAX_TRACKED: usize = 100_000;
/// The usernames that all open brute-force episodes keep for their alerts' lists, in bytes
/// (with [`name_cost`]'s overhead): 16 MiB, some 58,000 names cut to 256 bytes or 450,000 of 5.
/// Without it, a spray of 100,000 sources guessing long names held 330 MB of names.
const MAX_NAME_BYTES: usize = 16 << 20;

/// What a kept username costs: its bytes and about what its allocation and its place in the
/// episode's set take.
fn name_cost(name: &str) -> usize {
    name.len() + 32
}

/// Short SSH connections from one source to one server: (first, last, count, a flow of them).
type SshEpisode = (Timestamp, Timestamp, u32, FlowMeta);

/// A borrowed (username, password) key: looks up the default credential pairs without
/// allocating (it hashes as the owned tuple does).
#[derive(Hash)]
struct CredRef<'a>(&'a str, &'a [u8]);

impl hashbrown::Equivalent<(String, Vec<u8>)> for CredRef<'_> {
    fn equivalent(&self, k: &(String, Vec<u8>)) -> bool {
        self.0 == k.0 && self.1 == k.1.as_slice()
    }
}

/// Per-flow facts the detectors remember until the flow ends.
#[derive(Default)]
struct FlowFacts {
    client_id: Option<String>,
    plaintext_done: bool,
    encrypted: bool,
    app: Option<AppProto>,
}

/// The protocol-event detectors.
pub struct ProtocolDetector {
    reveal: bool,
    defaults: HashSet<(String, Vec<u8>)>,
    default_lists: Vec<String>,
    brute: BruteParams,
    episodes: HashMap<EpisodeKey, Episode>,
    ssh: HashMap<EpisodeKey, SshEpisode>,
    acl: Option<Acl>,
    flows: HashMap<FlowId, FlowFacts>,
    last_sweep: Timestamp,
    /// When the open brute-force (`false`) and SSH (`true`) episodes can end
    /// ([`BruteParams::end`]), so a sweep looks only at those due, not at every episode; at
    /// most twice as many entries as open episodes plus 1,024 (the maps hold at most
    /// `MAX_TRACKED` each).
    ends: crate::fast::Deadlines<Timestamp, (EpisodeKey, bool)>,
    /// Bytes of the usernames that the open episodes keep, held to `max_name_bytes`
    /// (`MAX_NAME_BYTES`).
    name_bytes: usize,
    max_name_bytes: usize,
    /// At the end of input: the episodes still to report, last = next (see `finish_some`).
    closing: Vec<(Timestamp, FlowId, EpisodeKey)>,
    /// Tracking entries dropped because a table was full.
    pub evicted: u64,
}

fn rule_file(
    rules: &RuleSet,
    rel: &str,
    embedded: &[(&str, &str)],
    rule: &Rule,
) -> Result<(String, String), RuleError> {
    match &rules.dir {
        Some(dir) => {
            let p: PathBuf = dir.join(rel);
            std::fs::read_to_string(&p)
                .map(|t| (p.display().to_string(), t))
                .map_err(|e| rule.error(format!("{}: {e}", p.display())))
        }
        None => embedded
            .iter()
            .find(|(n, _)| *n == rel)
            .map(|(n, t)| (format!("built-in rules/{n}"), t.to_string()))
            .ok_or_else(|| rule.error(format!("{rel}: no such built-in file"))),
    }
}

impl ProtocolDetector {
    pub fn new(rules: &RuleSet, reveal: bool) -> Result<Self, RuleError> {
        let mut d = ProtocolDetector {
            reveal,
            defaults: HashSet::default(),
            default_lists: Vec::new(),
            brute: BruteParams {
                failures: d_failures(),
                window_secs: d_window(),
                max_episode_secs: d_max_episode(),
                spray_usernames: d_spray(),
                ssh_connections: d_ssh_conns(),
            },
            episodes: HashMap::default(),
            ssh: HashMap::default(),
            acl: None,
            flows: HashMap::default(),
            last_sweep: Timestamp::ZERO,
            ends: Default::default(),
            name_bytes: 0,
            max_name_bytes: MAX_NAME_BYTES,
            closing: Vec::new(),
            evicted: 0,
        };
        if let Some(r) = rules.get(Kind::DefaultCredentials, "") {
            let p: DefaultCredParams = r.params()?;
            for rel in &p.lists {
                let (name, text) = rule_file(rules, rel, EMBEDDED_LISTS, r)?;
                for (i, line) in text.lines().enumerate() {
                    let line = line.trim_end_matches('\r');
                    if line.trim().is_empty() || line.trim_start().starts_with('#') {
                        continue;
                    }
                    let Some((u, pw)) = line.split_once(':') else {
                        return Err(RuleError {
                            file: name.clone(),
                            line: i + 1,
                            reason: format!("expected username:password, got {line:?}"),
                        });
                    };
                    d.defaults.insert((u.to_string(), pw.as_bytes().to_vec()));
                }
                d.default_lists.push(rel.clone());
            }
        }
        if let Some(r) = rules.get(Kind::BruteForce, "") {
            d.brute = r.params()?;
            if d.brute.failures == 0 || d.brute.window_secs == 0 {
                return Err(r.error("params.failures and params.window_secs must be positive"));
            }
        }
        if let Some(r) = rules.get(Kind::TopicAclViolation, "") {
            let p: AclParams = r.params()?;
            let (name, text) = rule_file(rules, &p.policy, &[EMBEDDED_ACL], r)?;
            let f: AclFile = toml::from_str(&text).map_err(|e| RuleError {
                file: name.clone(),
                line: e
                    .span()
                    .map_or(0, |s| crate::settings::line_of(&text, s.start)),
                reason: e.message().to_string(),
            })?;
            let mut devices = Vec::new();
            for e in f.device {
                // The entry's line, worked out only for an error (counting lines for every
                // entry would cost a policy of thousands of entries its length squared).
                let at = e.span().start;
                let error = |reason: String| RuleError {
                    file: name.clone(),
                    line: crate::settings::line_of(&text, at),
                    reason,
                };
                let e = e.into_inner();
                let who = match (&e.ip, &e.client_id) {
                    (Some(ip), None) => Who::Net(crate::settings::parse_cidr(ip).map_err(error)?),
                    (None, Some(c)) => Who::Client(c.clone()),
                    _ => {
                        return Err(error(
                            "each [[device]] needs exactly one of ip or client_id".into(),
                        ))
                    }
                };
                devices.push((who, e.publish, e.subscribe));
            }
            d.acl = Some(Acl {
                wildcard: f
                    .wildcard_subscribers
                    .iter()
                    .map(|s| Who::parse(s))
                    .collect(),
                devices: AclDevices::new(devices),
                origin: name,
            });
        }
        Ok(d)
    }

    /// Number of default credential pairs loaded.
    pub fn default_credentials(&self) -> usize {
        self.defaults.len()
    }

    fn secret(&self, pw: &[u8]) -> serde_json::Value {
        if self.reveal {
            String::from_utf8_lossy(pw).into_owned().into()
        } else {
            mask(pw).into()
        }
    }

    fn facts(&mut self, id: FlowId) -> &mut FlowFacts {
        if self.flows.len() >= MAX_TRACKED && !self.flows.contains_key(&id) {
            self.evicted += self.flows.len() as u64;
            self.flows.clear();
        }
        self.flows.entry(id).or_default()
    }

    /// One application event of a flow.
    pub fn on_app(
        &mut self,
        meta: &FlowMeta,
        ts: Timestamp,
        dir: Direction,
        ev: &ProtoEvent,
        gate: &mut dyn Gate,
        out: &mut Vec<Finding>,
    ) {
        self.sweep(ts, out);
        match ev {
            ProtoEvent::Detected { app } => {
                let f = self.facts(meta.id);
                f.app = Some(*app);
                if matches!(app, AppProto::Mqtt | AppProto::MqttWs | AppProto::Telnet) {
                    self.plaintext(meta, ts, *app, gate, out);
                }
            }
            ProtoEvent::HttpRequest {
                method,
                uri,
                host,
                user_agent,
                websocket_mqtt,
                ..
            } => {
                let mut f = self.plaintext_finding(meta, ts, AppProto::Http, gate);
                if let Some(f) = f.as_mut() {
                    f.evidence.insert("http_method", method.clone().into());
                    f.evidence.insert("url", uri.clone().into());
                    if let Some(h) = host {
                        f.evidence.insert("hostname", h.clone().into());
                    }
                    if let Some(ua) = user_agent {
                        f.evidence.insert("http_user_agent", ua.clone().into());
                    }
                    if *websocket_mqtt {
                        f.evidence.insert("websocket_mqtt", true.into());
                    }
                }
                out.extend(f);
            }
            ProtoEvent::FtpCommand { verb, .. } => {
                let v = verb.to_ascii_uppercase();
                if v != "AUTH" && v != "FEAT" && !self.facts(meta.id).encrypted {
                    self.plaintext(meta, ts, AppProto::Ftp, gate, out);
                }
            }
            ProtoEvent::StartTls { .. } => self.facts(meta.id).encrypted = true,
            ProtoEvent::MqttConnect {
                client_id,
                auth_method,
                level,
                ..
            } => {
                self.facts(meta.id).client_id = Some(clip_str(client_id).to_string());
                let _ = (auth_method, level);
            }
            ProtoEvent::Login {
                app,
                username,
                password,
                password_len,
                method,
                outcome,
            } => {
                self.login(
                    meta,
                    ts,
                    *app,
                    username,
                    password.as_deref().map(|p| (p, *password_len)),
                    method,
                    *outcome,
                    gate,
                    out,
                );
            }
            // Only what the client sends: the broker's deliveries to subscribers are not theirs.
            ProtoEvent::MqttPublish {
                topic, qos, retain, ..
            } if dir == Direction::Forward => {
                self.acl_publish(meta, ts, topic, *qos, *retain, out);
            }
            ProtoEvent::MqttSubscribe { filters } if dir == Direction::Forward => {
                self.acl_subscribe(meta, ts, filters, out)
            }
            ProtoEvent::TlsClientHello {
                sni,
                legacy_version,
                supported_versions,
                ja3,
                ja4,
                ..
            } => {
                let highest = supported_versions
                    .iter()
                    .copied()
                    .filter(|v| v & 0x0f0f != 0x0a0a)
                    .max()
                    .unwrap_or(*legacy_version);
                if highest < 0x0303 {
                    let mut f = Finding::for_flow(ts, Kind::WeakTls, meta, Some("tls"))
                        .with("tls_version", tls_version_name(highest))
                        .with("stage", "offered")
                        .with("ja3", ja3.clone())
                        .with("ja4", ja4.clone());
                    if let Some(s) = sni {
                        f = f.with("sni", s.clone());
                    }
                    f.identifier = format!(
                        "{}|{}|offered|{highest}",
                        meta.initiator.ip, meta.responder.ip
                    );
                    out.push(f);
                }
            }
            ProtoEvent::TlsServerHello {
                version,
                cipher,
                hello_retry: false,
            } if *version < 0x0303 => {
                let mut f = Finding::for_flow(ts, Kind::WeakTls, meta, Some("tls"))
                    .with("tls_version", tls_version_name(*version))
                    .with("stage", "negotiated")
                    .with("cipher_suite", format!("0x{cipher:04x}"));
                f.identifier = format!(
                    "{}|{}|negotiated|{version}",
                    meta.initiator.ip, meta.responder.ip
                );
                out.push(f);
            }
            ProtoEvent::Anomaly { app, name } => {
                let mut f = Finding::for_flow(ts, Kind::ProtocolAnomaly, meta, Some(app.as_str()))
                    .with("anomaly", *name);
                f.identifier = format!("{}|{}|{name}", meta.initiator.ip, meta.responder.ip);
                out.push(f);
            }
            _ => {}
        }
    }

    fn plaintext_finding(
        &mut self,
        meta: &FlowMeta,
        ts: Timestamp,
        app: AppProto,
        gate: &mut dyn Gate,
    ) -> Option<Finding> {
        let f = self.facts(meta.id);
        if f.plaintext_done || f.encrypted {
            return None;
        }
        f.plaintext_done = true;
        let kind = match app {
            AppProto::Mqtt | AppProto::MqttWs => Kind::PlaintextMqtt,
            AppProto::Http => Kind::PlaintextHttp,
            AppProto::Telnet => Kind::PlaintextTelnet,
            AppProto::Ftp => Kind::PlaintextFtp,
            _ => return None,
        };
        // One alert per device and service within the rule's window; the rest are counted.
        let identifier = Ident::new()
            .ip(meta.initiator.ip)
            .ip(meta.responder.ip)
            .num(meta.responder.port.into())
            .done();
        let admission = gate.admit(kind, "", &identifier, ts)?;
        let mut finding = Finding::for_flow(ts, kind, meta, Some(app.as_str()))
            .with("app_proto", app.as_str())
            .with("server_port", meta.responder.port);
        finding.identifier = identifier;
        finding.admission = admission;
        Some(finding)
    }

    fn plaintext(
        &mut self,
        meta: &FlowMeta,
        ts: Timestamp,
        app: AppProto,
        gate: &mut dyn Gate,
        out: &mut Vec<Finding>,
    ) {
        out.extend(self.plaintext_finding(meta, ts, app, gate));
    }

    #[allow(clippy::too_many_arguments)]
    fn login(
        &mut self,
        meta: &FlowMeta,
        ts: Timestamp,
        app: AppProto,
        username: &str,
        password: Option<(&[u8], usize)>,
        method: &str,
        outcome: Outcome,
        gate: &mut dyn Gate,
        out: &mut Vec<Finding>,
    ) {
        let app_s = app.as_str();
        // The password as kept (cut to MAX_KEPT bytes when the login waited for its answer)
        // and its length on the wire.
        if let Some((pw, pw_len)) = password {
            // Accepted logins are told apart by user; failed ones are summarised per service
            // (a brute force is one alert of its own, not one per guess).
            let id = Ident::new()
                .ip(meta.initiator.ip)
                .ip(meta.responder.ip)
                .num(meta.responder.port.into());
            let identifier = match outcome {
                Outcome::Accepted => id.text(clip_str(username)).text("accepted").done(),
                _ => id.text(outcome.as_str()).done(),
            };
            let clear = gate.admit(Kind::CleartextCredentials, "", &identifier, ts);
            // The same evidence, for a pair that is a known default credential.
            let default = if self.defaults.contains(&CredRef(username, pw)) {
                gate.admit(Kind::DefaultCredentials, "", &identifier, ts)
            } else {
                None
            };
            if clear.is_some() || default.is_some() {
                let mut f = Finding::for_flow(ts, Kind::CleartextCredentials, meta, Some(app_s))
                    .with("username", username)
                    .with("password", self.secret(pw))
                    .with("password_length", pw_len)
                    .with("method", method)
                    .with("outcome", outcome.as_str());
                f.identifier = identifier;
                let default = default.map(|admission| {
                    let mut d = f.clone().with("lists", self.default_lists.clone());
                    d.kind = Kind::DefaultCredentials;
                    d.admission = admission;
                    d
                });
                if let Some(admission) = clear {
                    f.admission = admission;
                    out.push(f);
                }
                out.extend(default);
            }
        }
        // Brute force: failures per source and service.
        let key = (meta.initiator.ip, meta.responder.ip, meta.responder.port);
        // An episode that ended before this login (quiet for the window, or as long as an
        // episode runs) is closed first, whether a sweep has come by since or not: where an
        // episode ends depends on the logins' times, not on how much other traffic there was.
        let brute = &self.brute;
        let over = remove_if(&mut self.episodes, key, |e| {
            brute.ended(e.first, e.last, ts)
        });
        if let Some(e) = over {
            out.extend(self.episode_finding(e));
        }
        if !self.episodes.contains_key(&key) && self.episodes.len() >= MAX_TRACKED {
            self.evicted += self.episodes.len() as u64;
            self.episodes.clear();
            self.ends.retain(|&(_, ssh)| ssh);
            self.name_bytes = 0;
        }
        let name_hash = std::hash::BuildHasher::hash_one(self.episodes.hasher(), username);
        let (e, was) = match self.episodes.entry(key) {
            hashbrown::hash_map::Entry::Occupied(o) => {
                let e = o.into_mut();
                let was = self.brute.end(e.first, e.last);
                (e, Some(was))
            }
            hashbrown::hash_map::Entry::Vacant(v) => {
                let e = v.insert(Episode {
                    app,
                    first: ts,
                    last: ts,
                    failures: 0,
                    successes: 0,
                    tried: Vec::new(),
                    usernames: BTreeSet::new(),
                    name_bytes: 0,
                    names_not_kept: 0,
                    accepted_user: None,
                    meta: *meta,
                });
                (e, None)
            }
        };
        match outcome {
            Outcome::Rejected => {
                e.failures += 1;
                e.last = ts;
                if e.tried.len() < MAX_USERNAMES && !e.tried.contains(&name_hash) {
                    e.tried.push(name_hash);
                    let name = clip_str(username);
                    // A name that would not be among the list's first is not allocated.
                    let listed = e.usernames.len() < SHOWN_USERNAMES
                        || e.usernames.last().is_some_and(|l| name < l.as_str());
                    if listed && self.name_bytes + name_cost(name) > self.max_name_bytes {
                        e.names_not_kept += 1;
                    } else if listed && e.usernames.insert(name.to_string()) {
                        e.name_bytes += name_cost(name);
                        self.name_bytes += name_cost(name);
                        if e.usernames.len() > SHOWN_USERNAMES {
                            if let Some(l) = e.usernames.pop_last() {
                                e.name_bytes -= name_cost(&l);
                                self.name_bytes -= name_cost(&l);
                            }
                        }
                    }
                }
            }
            Outcome::Accepted => {
                e.successes += 1;
                // A success right after failures is the brute force's outcome; it does not keep
                // the episode open (the source's ordinary logins would).
                if e.failures > 0 && e.accepted_user.is_none() {
                    e.accepted_user = Some(clip_str(username).to_string());
                }
            }
            Outcome::Unknown => {}
        }
        // A new episode, or one whose end came earlier (a login older than its last).
        let end = self.brute.end(e.first, e.last);
        if was.is_none_or(|w| end < w) {
            self.queue_end(end, key, false);
        }
    }

    /// Queues the end of a brute-force (`ssh` false) or SSH episode.
    fn queue_end(&mut self, end: Timestamp, key: EpisodeKey, ssh: bool) {
        let p = self.brute;
        let (episodes, sessions) = (&self.episodes, &self.ssh);
        self.ends
            .push(end, (key, ssh), episodes.len() + sessions.len(), || {
                let brute = (episodes.iter()).map(|(k, e)| (p.end(e.first, e.last), (*k, false)));
                let ssh = (sessions.iter()).map(|(k, v)| (p.end(v.0, v.1), (*k, true)));
                brute.chain(ssh)
            });
    }

    /// Closes brute-force episodes that went quiet (or ran too long).
    fn sweep(&mut self, now: Timestamp, out: &mut Vec<Finding>) {
        if now.secs_since(self.last_sweep) < 1 {
            return;
        }
        self.last_sweep = now;
        let p = self.brute;
        let (episodes, sessions) = (&self.episodes, &self.ssh);
        let due = self.ends.due(now, |(key, ssh)| {
            if ssh {
                sessions.get(&key).map(|v| p.end(v.0, v.1))
            } else {
                episodes.get(&key).map(|e| p.end(e.first, e.last))
            }
        });
        let (mut done, mut done_ssh) = (Vec::new(), Vec::new());
        for (key, ssh) in due {
            if ssh {
                done_ssh.extend(sessions.get(&key).map(|v| (v.0, v.3.id, key)));
            } else {
                done.extend(episodes.get(&key).map(|e| (e.first, e.meta.id, key)));
            }
        }
        // Closed in the order of `finish` (first seen, then flow), not the order they came
        // due: the alerts of one sweep come out in the same order in every run.
        done.sort_unstable();
        for (_, _, k) in done {
            if let Some(e) = self.episodes.remove(&k) {
                out.extend(self.episode_finding(e));
            }
        }
        done_ssh.sort_unstable();
        for (_, _, k) in done_ssh {
            if let Some(v) = self.ssh.remove(&k) {
                out.extend(self.ssh_finding(v));
            }
        }
    }

    /// A closed episode's finding (if it had enough failures); its names leave the budget.
    fn episode_finding(&mut self, e: Episode) -> Option<Finding> {
        self.name_bytes -= e.name_bytes;
        if e.failures < self.brute.failures {
            return None;
        }
        let spraying = e.tried.len() as u32 >= self.brute.spray_usernames;
        let mut f = Finding::for_flow(e.last, Kind::BruteForce, &e.meta, Some(e.app.as_str()));
        f.variant = "";
        f.flow_id = None;
        f.src = Some(crate::flow::Endpoint {
            ip: e.meta.initiator.ip,
            port: 0,
        });
        let f = f
            .with("app_proto", e.app.as_str())
            .with("failed_logins", e.failures)
            .with("successful_logins", e.successes)
            .with("first", e.first.rfc3339().to_string())
            .with("last", e.last.rfc3339().to_string())
            .with("window_secs", self.brute.window_secs)
            .with("distinct_usernames", e.tried.len())
            .with("usernames", e.usernames.into_iter().collect::<Vec<_>>())
            .with("password_spraying", spraying)
            .with(
                "final_outcome",
                if e.accepted_user.is_some() {
                    "accepted"
                } else {
                    "rejected"
                },
            );
        let f = match &e.accepted_user {
            Some(u) => f.with("accepted_username", u.clone()),
            None => f,
        };
        // Said only when it happened: names left out of the list for memory, not by sorting.
        let mut f = if e.names_not_kept > 0 {
            f.with("usernames_not_kept", e.names_not_kept)
        } else {
            f
        };
        f.identifier = format!(
            "{}|{}|{}|{}",
            e.meta.initiator.ip, e.meta.responder.ip, e.meta.responder.port, e.first.0
        );
        Some(f)
    }

    fn ssh_finding(&self, v: (Timestamp, Timestamp, u32, FlowMeta)) -> Option<Finding> {
        let (first, last, n, meta) = v;
        if n < self.brute.ssh_connections {
            return None;
        }
        let mut f = Finding::for_flow(last, Kind::BruteForce, &meta, Some("ssh"));
        f.flow_id = None;
        f.src = Some(crate::flow::Endpoint {
            ip: meta.initiator.ip,
            port: 0,
        });
        let mut f = f
            .with("app_proto", "ssh")
            .with("connections", n)
            .with("first", first.rfc3339().to_string())
            .with("last", last.rfc3339().to_string())
            .with("window_secs", self.brute.window_secs)
            .with("method", "connection_pattern")
            .with("final_outcome", "unknown");
        f.identifier = format!(
            "{}|{}|{}|{}",
            meta.initiator.ip, meta.responder.ip, meta.responder.port, first.0
        );
        Some(f)
    }

    fn acl_publish(
        &mut self,
        meta: &FlowMeta,
        ts: Timestamp,
        topic: &str,
        qos: u8,
        retain: bool,
        out: &mut Vec<Finding>,
    ) {
        let Some(acl) = &self.acl else { return };
        let client = self
            .flows
            .get(&meta.id)
            .and_then(|f| f.client_id.as_deref());
        let Some((_, publish, _)) = acl.devices.entry(meta.initiator.ip, client) else {
            return;
        };
        if publish.iter().any(|f| topic_matches(f, topic)) {
            return;
        }
        let client = client.map(str::to_string);
        let mut f = Finding::for_flow(ts, Kind::TopicAclViolation, meta, Some("mqtt"))
            .with("operation", "publish")
            .with("topic", topic)
            .with("qos", qos)
            .with("retain", retain)
            .with("allowed", publish.clone())
            .with("policy", acl.origin.clone());
        if let Some(c) = &client {
            f = f.with("client_id", c.clone());
        }
        f.identifier = Ident::new()
            .ip(meta.initiator.ip)
            .text("publish")
            .text(clip_str(topic))
            .done();
        out.push(f);
    }

    fn acl_subscribe(
        &mut self,
        meta: &FlowMeta,
        ts: Timestamp,
        filters: &[(String, u8)],
        out: &mut Vec<Finding>,
    ) {
        let Some(acl) = &self.acl else { return };
        let client = self.flows.get(&meta.id).and_then(|f| f.client_id.clone());
        let ip = meta.initiator.ip;
        let entry = acl.devices.entry(ip, client.as_deref());
        for (filter, _) in filters {
            let wildcard = filter == "#" || filter.starts_with("$SYS/#") || filter == "$SYS/#";
            let violation = if wildcard {
                !acl.wildcard
                    .iter()
                    .any(|w| w.matches(ip, client.as_deref()))
            } else {
                entry.is_some_and(|(_, _, sub)| !sub.iter().any(|a| filter_covered(a, filter)))
            };
            if !violation {
                continue;
            }
            let mut f = Finding::for_flow(ts, Kind::TopicAclViolation, meta, Some("mqtt"))
                .with("operation", "subscribe")
                .with("topic_filter", filter.clone())
                .with("wildcard", wildcard)
                .with("policy", acl.origin.clone());
            if let Some((_, _, sub)) = entry {
                f = f.with("allowed", sub.clone());
            }
            if let Some(c) = &client {
                f = f.with("client_id", c.clone());
            }
            f.identifier = format!("{ip}|subscribe|{filter}");
            out.push(f);
        }
    }

    /// A flow ended: SSH connection patterns, and forget the flow's facts.
    pub fn on_flow_end(&mut self, r: &FlowRecord, out: &mut Vec<Finding>) {
        self.sweep(r.last, out);
        let facts = self.flows.remove(&r.meta.id);
        let is_ssh = r.app == "ssh" || facts.is_some_and(|f| f.app == Some(AppProto::Ssh));
        if is_ssh && r.meta.proto == 6 {
            // A login attempt that failed looks like a short session with little data.
            let short = r.last.secs_since(r.start) < 30 && r.fwd.payload_bytes < 8192;
            if short {
                let key = (
                    r.meta.initiator.ip,
                    r.meta.responder.ip,
                    r.meta.responder.port,
                );
                // As for logins: an episode over by this session's end is closed first.
                let brute = &self.brute;
                let over = remove_if(&mut self.ssh, key, |v| brute.ended(v.0, v.1, r.last));
                if let Some(v) = over {
                    out.extend(self.ssh_finding(v));
                }
                if !self.ssh.contains_key(&key) && self.ssh.len() >= MAX_TRACKED {
                    self.evicted += self.ssh.len() as u64;
                    self.ssh.clear();
                    self.ends.retain(|&(_, ssh)| !ssh);
                }
                let new = !self.ssh.contains_key(&key);
                let e = self.ssh.entry(key).or_insert((r.start, r.last, 0, r.meta));
                e.1 = e.1.max(r.last);
                e.2 += 1;
                // Its end moves only later from here.
                let end = self.brute.end(e.0, e.1);
                if new {
                    self.queue_end(end, key, true);
                }
            }
        }
    }

    /// End of input: report open episodes.
    pub fn finish(&mut self, out: &mut Vec<Finding>) {
        while self.finish_some(out, usize::MAX) {}
    }

    /// End of input, in steps: reports up to `max` of the open brute-force episodes (in the
    /// order of their first login, then flow) and returns true while some remain, so that the
    /// alert stage can write them as they come; then the SSH episodes. A spray from 100,000
    /// sources left as many episodes open, and their findings were all built before any was
    /// written.
    pub fn finish_some(&mut self, out: &mut Vec<Finding>, max: usize) -> bool {
        if self.closing.is_empty() {
            self.closing = self
                .episodes
                .iter()
                .map(|(k, e)| (e.first, e.meta.id, *k))
                .collect();
            self.closing.sort_unstable_by(|a, b| b.cmp(a));
        }
        for _ in 0..max {
            let Some((_, _, k)) = self.closing.pop() else {
                break;
            };
            if let Some(e) = self.episodes.remove(&k) {
                out.extend(self.episode_finding(e));
            }
        }
        if !self.closing.is_empty() {
            return true;
        }
        let mut ssh: Vec<_> = self.ssh.drain().map(|(_, v)| v).collect();
        ssh.sort_by_key(|v| (v.0, v.3.id));
        for v in ssh {
            out.extend(self.ssh_finding(v));
        }
        false
    }
}

fn tls_version_name(v: u16) -> &'static str {
    match v {
        0x0002 => "SSLv2",
        0x0300 => "SSLv3",
        0x0301 => "TLSv1.0",
        0x0302 => "TLSv1.1",
        0x0303 => "TLSv1.2",
        0x0304 => "TLSv1.3",
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::Ungated;

    #[test]
    fn masks_keep_first_last_and_length() {
        assert_eq!(mask(b"password"), "p******d");
        assert_eq!(mask(b"ab"), "**");
        assert_eq!(mask(b""), "");
        assert_eq!(mask(b"xc3511"), "x****1");
    }

    #[test]
    fn topic_filters() {
        assert!(topic_matches("site/+/telemetry", "site/a/telemetry"));
        assert!(!topic_matches("site/+/telemetry", "site/a/b/telemetry"));
        assert!(topic_matches("site/#", "site/a/b"));
        assert!(topic_matches("site/#", "site"));
        assert!(!topic_matches("#", "$SYS/broker"));
        assert!(filter_covered("site/a/#", "site/a/+/x"));
        assert!(!filter_covered("site/a/+", "site/a/#"));
    }

    /// The topic policy's lookup finds, for any address and client id, the entry that a scan
    /// of the entries in file order finds: networks (of any length), exact client ids and
    /// client-id prefixes through maps, whichever comes first in the file.
    #[test]
    fn acl_lookups_find_the_entry_a_scan_in_file_order_finds() {
        let mut rng = crate::proto::testutil::XorShift::new(0x9E37_79B9_7F4A_7C15);
        let mut next = |n: u64| rng.below(n);
        let ip = |n: u64| -> IpAddr {
            if n.is_multiple_of(5) {
                format!("fd00::{:x}", n % 40).parse().unwrap()
            } else {
                format!("198.18.{}.{}", n % 4, n % 40).parse().unwrap()
            }
        };
        let client = |n: u64| format!("dev-{}", n % 30);
        for round in 0..200 {
            let mut entries = Vec::new();
            for i in 0..(1 + next(40)) {
                let who = match next(6) {
                    0 | 1 => Who::Net(ip(next(200)).into()),
                    2 => Who::Net(
                        format!("198.18.{}.0/{}", next(4), 24 + next(9))
                            .parse()
                            .unwrap(),
                    ),
                    3 => Who::Net("fd00::/120".parse().unwrap()),
                    4 => Who::Client(client(next(200))),
                    _ => Who::Client(
                        ["*", "d*", "dev-*", "dev-1*", "dev-2*"][next(5) as usize].to_string(),
                    ),
                };
                entries.push((who, vec![format!("t/{i}")], Vec::new()));
            }
            let mut scan = Vec::new();
            for _ in 0..100 {
                let a = ip(next(200));
                let c = (next(3) > 0).then(|| client(next(200)));
                let first = entries
                    .iter()
                    .find(|(w, _, _)| w.matches(a, c.as_deref()))
                    .map_or_else(Vec::new, |(_, p, _)| p.clone());
                scan.push((first, a, c));
            }
            let acl = AclDevices::new(entries);
            for (want, a, c) in scan {
                let got = acl
                    .entry(a, c.as_deref())
                    .map_or_else(Vec::new, |e| e.1.clone());
                assert_eq!(got, want, "round {round}: {a} {c:?}");
            }
        }
    }

    /// Mirai's root/xc3511 on Telnet, the same client and server each time, in flow `n`.
    fn login_in_flow(n: u64) -> (FlowMeta, ProtoEvent) {
        let ip = |s: &str| s.parse().unwrap();
        let meta = FlowMeta {
            id: crate::flow::FlowId(n),
            initiator: crate::flow::Endpoint {
                ip: ip("198.18.0.66"),
                port: 40_000 + n as u16,
            },
            responder: crate::flow::Endpoint {
                ip: ip("198.18.0.5"),
                port: 23,
            },
            proto: 6,
            vlan: Default::default(),
            vni: None,
            first: Timestamp::from_secs(1_000 + n),
            initiator_mac: None,
            responder_mac: None,
            local: FlowMeta::local_bits(true, true),
        };
        let ev = ProtoEvent::login(
            AppProto::Telnet,
            "root".into(),
            Some(b"xc3511".to_vec()),
            "telnet",
            Outcome::Accepted,
        );
        (meta, ev)
    }

    /// A password kept cut (a login that waited for its answer keeps 256 bytes) is reported
    /// with its length on the wire, not the kept one.
    #[test]
    fn a_cut_password_is_reported_with_its_length_on_the_wire() {
        let rs = RuleSet::embedded().unwrap();
        let mut d = ProtocolDetector::new(&rs, false).unwrap();
        let (meta, _) = login_in_flow(1);
        let ev = ProtoEvent::Login {
            app: AppProto::Mqtt,
            username: "cam".into(),
            password: Some(vec![b'p'; crate::proto::MAX_KEPT]),
            password_len: 30_000,
            method: "mqtt-connect",
            outcome: Outcome::Rejected,
        };
        let mut out = Vec::new();
        ungated(&mut d, &meta, &ev, &mut out);
        let f = out.iter().find(|f| f.kind == Kind::CleartextCredentials);
        assert_eq!(
            f.map(|f| f.evidence["password_length"].clone()),
            Some(30_000.into())
        );
    }

    /// Behind the alert stage's gate, repeats that it suppresses are not built at all; without
    /// a gate every login gives its findings, and the alert stage writes the same alerts.
    #[test]
    fn suppressed_repeats_of_a_login_are_not_built_behind_the_gate() {
        let rs = RuleSet::embedded().unwrap();
        let mut gated = ProtocolDetector::new(&rs, false).unwrap();
        let mut plain = ProtocolDetector::new(&rs, false).unwrap();
        let mut alerter = crate::alert::Alerter::new(RuleSet::embedded().unwrap(), 600);
        let mut other = crate::alert::Alerter::new(RuleSet::embedded().unwrap(), 600);
        let (mut built, mut all) = (Vec::new(), Vec::new());
        for n in 0..5 {
            let (meta, ev) = login_in_flow(n);
            let ts = meta.first;
            gated.on_app(&meta, ts, Direction::Forward, &ev, &mut alerter, &mut built);
            plain.on_app(&meta, ts, Direction::Forward, &ev, &mut Ungated, &mut all);
        }
        // Cleartext and default credentials: one of each built, against five of each.
        let kinds = |v: &[Finding]| v.iter().map(|f| f.kind).collect::<Vec<_>>();
        assert_eq!(
            kinds(&built),
            [Kind::CleartextCredentials, Kind::DefaultCredentials]
        );
        assert_eq!(all.len(), 10);
        // The built ones carry their evidence (masked) and are written as they are.
        assert_eq!(built[0].evidence["password"], "x****1");
        let written = |a: &mut crate::alert::Alerter, v: &[Finding]| {
            v.iter()
                .filter_map(|f| a.alert(f).map(|l| serde_json::to_string(&l).unwrap()))
                .collect::<Vec<_>>()
        };
        assert_eq!(written(&mut alerter, &built), written(&mut other, &all));
        assert_eq!(alerter.suppressed(), 8);
        assert_eq!(alerter.suppressed(), other.suppressed());
    }

    /// A spraying source's episode counts its distinct usernames (up to 64) and keeps, for the
    /// alert, the ten that sort first, cut to 256 bytes: long names cost it no more.
    #[test]
    fn an_episode_keeps_few_short_usernames() {
        let rs = RuleSet::embedded().unwrap();
        let mut d = ProtocolDetector::new(&rs, false).unwrap();
        let mut out = Vec::new();
        for n in 0..100u64 {
            let (meta, _) = login_in_flow(n);
            // Kilobyte names first (they sort last), then short ones, each tried twice.
            let username = if n < 50 {
                format!("{}{n:02}", "z".repeat(1000))
            } else {
                format!("u{:02}", (n - 50) / 2)
            };
            ungated(&mut d, &meta, &rejected(username), &mut out);
        }
        let e = d.episodes.values().next().unwrap();
        assert_eq!(e.tried.len(), 64);
        assert_eq!(e.usernames.len(), 10);
        assert!(e.usernames.iter().all(|u| u.len() <= 256));
        d.finish(&mut out);
        let brute: Vec<_> = out.iter().filter(|f| f.kind == Kind::BruteForce).collect();
        assert_eq!(brute.len(), 1);
        let ev = &brute[0].evidence;
        assert_eq!(ev["failed_logins"], 100);
        // 50 long names and the first 14 short ones were counted; the list is the short ones
        // that sort first.
        assert_eq!(ev["distinct_usernames"], 64);
        assert_eq!(ev["password_spraying"], true);
        let want: Vec<String> = (0..10).map(|i| format!("u{i:02}")).collect();
        assert_eq!(ev["usernames"], serde_json::json!(want));
    }

    /// A failed Telnet login with `username` from 198.18.(1 + src / 250).(src % 250) at
    /// `secs`.
    fn fail(
        d: &mut ProtocolDetector,
        src: u32,
        username: String,
        secs: u64,
        out: &mut Vec<Finding>,
    ) {
        let (mut meta, _) = login_in_flow(u64::from(src));
        let a = 0xC612_0000 + (1 + src / 250) * 256 + src % 250;
        meta.initiator.ip = IpAddr::V4(a.into());
        meta.first = Timestamp::from_secs(secs);
        ungated(d, &meta, &rejected(username), out);
    }

    /// A Telnet login with `username` and the password "guess", rejected.
    fn rejected(username: String) -> ProtoEvent {
        ProtoEvent::login(
            AppProto::Telnet,
            username,
            Some(b"guess".to_vec()),
            "telnet",
            Outcome::Rejected,
        )
    }

    /// The usernames kept for the alerts' lists are held to one budget over all episodes: past
    /// it an episode counts the names it could not keep, and an episode that ends gives its
    /// names' bytes back.
    #[test]
    fn the_episodes_names_are_held_to_one_budget() {
        let rs = RuleSet::embedded().unwrap();
        let mut d = ProtocolDetector::new(&rs, false).unwrap();
        // Names of 300 bytes are kept cut to 256: ten of them fit.
        let cost = name_cost(&"x".repeat(crate::proto::MAX_KEPT));
        d.max_name_bytes = 10 * cost;
        let name = |src: u32, i: u32| format!("{src}-{i}-{}", "x".repeat(300));
        let mut out = Vec::new();
        for src in 0..3 {
            for i in 0..6 {
                fail(&mut d, src, name(src, i), 1_000 + u64::from(src), &mut out);
            }
        }
        let held: usize = d.episodes.values().map(|e| e.name_bytes).sum();
        assert_eq!((d.name_bytes, held), (10 * cost, 10 * cost));
        // Past the window, a sweep closes all three and gives their names back.
        other_traffic(&mut d, at(200_000), &mut out);
        assert_eq!((d.episodes.len(), d.name_bytes), (0, 0));
        for i in 0..6 {
            fail(&mut d, 3, name(3, i), 1_300, &mut out);
        }
        d.finish(&mut out);
        assert_eq!(d.name_bytes, 0);
        let got: Vec<_> = out
            .iter()
            .filter(|f| f.kind == Kind::BruteForce)
            .map(|f| {
                let e = &f.evidence;
                let kept = e["usernames"].as_array().map_or(0, Vec::len);
                let not_kept = e.get("usernames_not_kept").cloned();
                (e["distinct_usernames"].clone(), kept, not_kept)
            })
            .collect();
        let n = |v: u64| serde_json::Value::from(v);
        assert_eq!(
            got,
            vec![
                (n(6), 6, None),
                (n(6), 4, Some(n(2))),
                (n(6), 0, Some(n(6))),
                (n(6), 6, None),
            ]
        );
    }

    /// At the end of input the open episodes are reported a step at a time, in the order
    /// `finish` reports them at once.
    #[test]
    fn open_episodes_are_reported_in_steps_at_the_end() {
        let rs = RuleSet::embedded().unwrap();
        let mut stepped = ProtocolDetector::new(&rs, false).unwrap();
        let mut whole = ProtocolDetector::new(&rs, false).unwrap();
        let mut ignored = Vec::new();
        for src in 0..2_500 {
            for i in 0..5 {
                let secs = 1_000 + u64::from(src % 7);
                for d in [&mut stepped, &mut whole] {
                    fail(d, src, format!("user{i}"), secs, &mut ignored);
                }
            }
        }
        assert!(ignored.iter().all(|f| f.kind != Kind::BruteForce));
        let (mut a, mut b) = (Vec::new(), Vec::new());
        let mut sizes = Vec::new();
        while stepped.finish_some(&mut a, 1_024) {
            sizes.push(a.len());
        }
        sizes.push(a.len());
        whole.finish(&mut b);
        assert_eq!(sizes, [1_024, 2_048, 2_500]);
        assert_eq!(crate::detect::described(&a), crate::detect::described(&b));
    }

    /// `ms` milliseconds after second 1,000.
    fn at(ms: u64) -> Timestamp {
        Timestamp(1_000_000_000 * 1_000 + ms * 1_000_000)
    }

    /// `ev` of flow `meta`, at the flow's first packet, with no alert stage asked.
    fn ungated(d: &mut ProtocolDetector, meta: &FlowMeta, ev: &ProtoEvent, out: &mut Vec<Finding>) {
        d.on_app(meta, meta.first, Direction::Forward, ev, &mut Ungated, out);
    }

    /// An event of another flow at `ts` (which makes the detector sweep, at most once a second).
    fn other_traffic(d: &mut ProtocolDetector, ts: Timestamp, out: &mut Vec<Finding>) {
        let (other, _) = login_in_flow(99);
        d.on_app(
            &other,
            ts,
            Direction::Forward,
            &ProtoEvent::MqttPing,
            &mut Ungated,
            out,
        );
    }

    /// Where a brute-force episode ends depends on the logins' times only: a detector that saw
    /// other traffic (whose events sweep the episodes at most once a second) and one that saw
    /// only the logins give the same alerts.
    #[test]
    fn episodes_end_at_the_same_login_whatever_other_traffic_came_between() {
        let rs = RuleSet::embedded().unwrap();
        let mut busy = ProtocolDetector::new(&rs, false).unwrap();
        let mut quiet = ProtocolDetector::new(&rs, false).unwrap();
        let (mut a, mut b) = (Vec::new(), Vec::new());
        // Ten failures in 9 s, then (60.5 s after the last) ten more: two episodes of ten. The
        // busy detector also sees an event 0.6 s before the second run, which sweeps then
        // (the first episode is not over yet) and not again until a second later.
        let times: Vec<u64> = (0..10)
            .map(|i| i * 1_000)
            .chain((0..10).map(|i| 69_500 + i * 1_000))
            .collect();
        for (n, &ms) in times.iter().enumerate() {
            if ms == 69_500 {
                other_traffic(&mut busy, at(68_900), &mut a);
            }
            let (meta, _) = login_in_flow(n as u64);
            let ev = rejected(format!("user{n}"));
            for (d, out) in [(&mut busy, &mut a), (&mut quiet, &mut b)] {
                d.on_app(&meta, at(ms), Direction::Forward, &ev, &mut Ungated, out);
            }
        }
        busy.finish(&mut a);
        quiet.finish(&mut b);
        let brute = |mut v: Vec<Finding>| {
            v.retain(|f| f.kind == Kind::BruteForce);
            crate::detect::described(&v)
        };
        let (a, b) = (brute(a), brute(b));
        assert_eq!(a.len(), 2, "{a:?}");
        assert!(
            a.iter()
                .all(|e| e.contains("(\"failed_logins\", Number(10))")),
            "{a:?}"
        );
        assert_eq!(a, b);
    }

    /// A short SSH session (flow `n`, port 22) from `ms` to 0.5 s later.
    fn ssh_session(n: u64, ms: u64) -> FlowRecord {
        let (mut meta, _) = login_in_flow(n);
        meta.responder.port = 22;
        meta.first = at(ms);
        FlowRecord {
            meta,
            start: at(ms),
            last: at(ms + 500),
            fwd: Default::default(),
            rev: Default::default(),
            tcp: crate::flow::TcpState::Closed,
            end: crate::flow::FlowEnd::Fin,
            app: "ssh",
            gaps: [0; 2],
            synack_seen: true,
            memcap_shed: false,
        }
    }

    /// A brute-force episode is closed at the first sweep at or after its end, wherever its
    /// logins moved that end, with other traffic every second: one source failing every 10 s
    /// from 0 to 100 s (quiet for the 60 s window from 100 s), another every 20 s from 5.5 s
    /// (never quiet: cut at the 300 s an episode may run, then a second episode that the end
    /// of input closes); and an SSH episode of sessions ending 0.5 s to 9.5 s after 200 s.
    #[test]
    fn episodes_close_at_the_first_sweep_after_their_end() {
        let rs = RuleSet::embedded().unwrap();
        let mut d = ProtocolDetector::new(&rs, false).unwrap();
        let mut out = Vec::new();
        let mut seen = Vec::new();
        let mut n = 0;
        let ssh = |n: u64, ms: u64| {
            let mut r = ssh_session(n, ms);
            r.meta.initiator.ip = IpAddr::from([198, 18, 3, 3]);
            r
        };
        for ms in (0..=400_000u64).step_by(500) {
            if ms % 1_000 == 0 {
                other_traffic(&mut d, at(ms), &mut out);
                for f in out.drain(..) {
                    seen.push((ms / 1_000, f.kind, f.src.map(|e| e.ip)));
                }
            }
            for (src, every, from, until) in
                [(1u8, 10_000, 0, 100_000), (2, 20_000, 5_500, 385_500)]
            {
                if ms >= from && ms <= until && (ms - from) % every == 0 {
                    n += 1;
                    let (mut meta, _) = login_in_flow(n);
                    meta.initiator.ip = IpAddr::from([198, 18, 3, src]);
                    let ev = rejected(format!("user{n}"));
                    d.on_app(
                        &meta,
                        at(ms),
                        Direction::Forward,
                        &ev,
                        &mut Ungated,
                        &mut out,
                    );
                }
            }
            if (200_000..210_000).contains(&ms) && ms % 1_000 == 0 {
                n += 1;
                d.on_flow_end(&ssh(n, ms), &mut out);
            }
        }
        d.finish(&mut out);
        for f in out.drain(..) {
            seen.push((u64::MAX, f.kind, f.src.map(|e| e.ip)));
        }
        let ip = |n: u8| Some(IpAddr::from([198, 18, 3, n]));
        seen.retain(|(_, k, _)| *k == Kind::BruteForce);
        assert_eq!(
            seen,
            [
                (160, Kind::BruteForce, ip(1)),
                (270, Kind::BruteForce, ip(3)),
                (306, Kind::BruteForce, ip(2)),
                (u64::MAX, Kind::BruteForce, ip(2)),
            ]
        );
    }

    /// Logins each older than their episode's last move its end earlier, each adding an entry
    /// to the queue of ends: the queue is made again before it holds more than twice the open
    /// episodes plus 1,024, and the episode is still closed once, when it is over.
    #[test]
    fn the_queue_of_ends_stays_bounded() {
        let rs = RuleSet::embedded().unwrap();
        let mut d = ProtocolDetector::new(&rs, false).unwrap();
        let mut out = Vec::new();
        for i in 0..3_000u64 {
            let (meta, _) = login_in_flow(i);
            let ev = rejected(format!("user{i}"));
            d.on_app(
                &meta,
                at(50_000 - i * 10),
                Direction::Forward,
                &ev,
                &mut Ungated,
                &mut out,
            );
            assert!(
                d.ends.len() <= 2 + 1_024,
                "{} entries after {i}",
                d.ends.len()
            );
        }
        assert_eq!(d.episodes.len(), 1);
        assert!(out.iter().all(|f| f.kind != Kind::BruteForce));
        // The last login, at 20.01 s, ends the episode at 80.01 s.
        other_traffic(&mut d, at(80_000), &mut out);
        assert!(out.iter().all(|f| f.kind != Kind::BruteForce));
        other_traffic(&mut d, at(81_000), &mut out);
        let brute: Vec<_> = out.iter().filter(|f| f.kind == Kind::BruteForce).collect();
        assert_eq!(brute.len(), 1);
        assert_eq!(brute[0].evidence["failed_logins"], 3_000);
        d.finish(&mut out);
        assert_eq!(out.iter().filter(|f| f.kind == Kind::BruteForce).count(), 1);
    }

    /// The same for SSH, judged from short sessions: ten, a quiet minute, ten more.
    #[test]
    fn ssh_episodes_end_at_the_same_session_whatever_other_traffic_came_between() {
        let rs = RuleSet::embedded().unwrap();
        let mut busy = ProtocolDetector::new(&rs, false).unwrap();
        let mut quiet = ProtocolDetector::new(&rs, false).unwrap();
        let (mut a, mut b) = (Vec::new(), Vec::new());
        // Sessions end at 0.5, 1.5 ... 9.5 s; the second ten from 70.1 s (60.6 s quiet), and
        // the busy detector sees other traffic at 69.4 s (59.9 s quiet: not over yet).
        let times = (0..10u64)
            .map(|i| i * 1_000)
            .chain((0..10).map(|i| 69_600 + i * 1_000));
        for (n, ms) in times.enumerate() {
            if ms == 69_600 {
                other_traffic(&mut busy, at(69_400), &mut a);
            }
            let r = ssh_session(n as u64, ms);
            busy.on_flow_end(&r, &mut a);
            quiet.on_flow_end(&r, &mut b);
        }
        busy.finish(&mut a);
        quiet.finish(&mut b);
        let show = crate::detect::described;
        assert_eq!(a.len(), 2, "{:?}", show(&a));
        assert_eq!(show(&a), show(&b));
    }

    #[test]
    fn shipped_lists_hold_mirai_pairs() {
        let rs = RuleSet::embedded().unwrap();
        let d = ProtocolDetector::new(&rs, false).unwrap();
        assert!(d
            .defaults
            .contains(&("root".to_string(), b"xc3511".to_vec())));
        assert!(d
            .defaults
            .contains(&("admin".to_string(), b"admin".to_vec())));
        assert!(d.default_credentials() > 80);
    }
}
