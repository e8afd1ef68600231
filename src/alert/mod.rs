//! Alert stage: applies alert policy to findings and writes every event as a JSON line in
//! Suricata's EVE shape (`alert`, `flow`, `stats`).
//!
//! Owns: the suppression table, the output writer, alert counters. It is the only writer.
//! Detectors decide; this stage suppresses and writes.

pub mod suppress;

use crate::decode::IpText;
use crate::detect::rules::{Rule, RuleSet};
use crate::detect::{Admission, Finding, Gate, Kind};
use crate::flow::{Direction, FlowRecord};
use crate::time::Timestamp;
use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;
use serde_json::{json, Value};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;
use suppress::{Decision, Suppressor};

/// EVE `proto` name of an IP protocol number.
pub fn proto_name(p: u8) -> Value {
    match p {
        6 => "TCP".into(),
        17 => "UDP".into(),
        1 => "ICMP".into(),
        58 => "IPv6-ICMP".into(),
        0 => Value::Null,
        n => n.to_string().into(),
    }
}

/// Output errors other than a closed pipe.
#[derive(Debug, thiserror::Error)]
#[error("writing {target}: {source}")]
pub struct OutputError {
    pub target: String,
    #[source]
    pub source: io::Error,
}

/// When to start a new output file (`-o FILE` only). The current file keeps its name; full files
/// are renamed to `FILE.1`, `FILE.2`, ... (the first free number), always between two lines.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rotation {
    /// Rotate once the file holds at least this many bytes.
    pub max_bytes: Option<u64>,
    /// Rotate every this many seconds of wall-clock time (output housekeeping, not detection).
    pub max_secs: Option<u64>,
}

/// The output file behind a writer: where it is, how big it is, when it was opened.
struct FileTarget {
    path: PathBuf,
    rotation: Rotation,
    bytes: u64,
    opened: Instant,
    /// Set by SIGHUP: close and reopen the file (after logrotate moved it away).
    reopen: Arc<AtomicBool>,
    /// The SIGHUP registration, undone when the writer goes.
    hup: Option<signal_hook::SigId>,
    rotations: u64,
}

impl Drop for FileTarget {
    fn drop(&mut self) {
        if let Some(id) = self.hup.take() {
            signal_hook::low_level::unregister(id);
        }
    }
}

/// A `Write` that counts what goes through it (the size of the current output file).
struct Counted<W> {
    inner: W,
    bytes: Arc<AtomicU64>,
}

impl<W: Write> Write for Counted<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.bytes.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn open_append(path: &Path) -> io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
}

/// The JSON-lines writer. A closed pipe (the reader went away, as with `| head`) ends output
/// quietly; any other write error (disk full...) stops output and is reported once, naming the
/// target. Writing to a file, it rotates by size or time and reopens the file on SIGHUP.
pub struct EveWriter {
    out: BufWriter<Box<dyn Write + Send>>,
    target: String,
    pub closed: bool,
    pub lines: u64,
    error: Option<io::Error>,
    file: Option<FileTarget>,
    /// Bytes that reached the current file (shared with its `Counted` wrapper).
    written: Arc<AtomicU64>,
}

impl EveWriter {
    pub fn new(out: Box<dyn Write + Send>, target: &str) -> Self {
        EveWriter {
            out: BufWriter::with_capacity(64 << 10, out),
            target: target.into(),
            closed: false,
            lines: 0,
            error: None,
            file: None,
            written: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Appends to the file at `path`, rotating it as `rotation` says; SIGHUP reopens it.
    pub fn to_file(path: &Path, rotation: Rotation) -> io::Result<Self> {
        let f = open_append(path)?;
        let size = f.metadata().map(|m| m.len()).unwrap_or(0);
        let reopen = Arc::new(AtomicBool::new(false));
        // Registering can only fail for forbidden signals; SIGHUP is not one.
        let hup =
            signal_hook::flag::register(signal_hook::consts::SIGHUP, Arc::clone(&reopen)).ok();
        let written = Arc::new(AtomicU64::new(size));
        let sink = Counted {
            inner: f,
            bytes: Arc::clone(&written),
        };
        let mut w = EveWriter::new(Box::new(sink), &path.display().to_string());
        w.written = written;
        w.file = Some(FileTarget {
            path: path.to_path_buf(),
            rotation,
            bytes: size,
            opened: Instant::now(),
            reopen,
            hup,
            rotations: 0,
        });
        Ok(w)
    }

    /// Files rotated so far.
    pub fn rotations(&self) -> u64 {
        self.file.as_ref().map_or(0, |f| f.rotations)
    }

    /// Writes one event as a JSON line (a [`Value`], or an event serialized in place).
    pub fn write<T: Serialize + ?Sized>(&mut self, v: &T) {
        if self.closed {
            return;
        }
        if self.file.is_some() {
            self.maybe_rotate();
            if self.closed {
                return;
            }
        }
        let r = serde_json::to_writer(&mut self.out, v)
            .map_err(io::Error::from)
            .and_then(|_| self.out.write_all(b"\n"));
        match r {
            Ok(()) => self.lines += 1,
            Err(e) => self.fail(e),
        }
    }

    /// Between two lines: reopen after SIGHUP, or rotate a full or old file.
    fn maybe_rotate(&mut self) {
        let buffered = self.out.buffer().len() as u64;
        let Some(f) = self.file.as_mut() else {
            return;
        };
        let hup = f.reopen.swap(false, Ordering::Relaxed);
        f.bytes = self.written.load(Ordering::Relaxed) + buffered;
        let by_size = f.rotation.max_bytes.is_some_and(|m| f.bytes >= m);
        let by_time = f
            .rotation
            .max_secs
            .is_some_and(|s| f.opened.elapsed().as_secs() >= s && f.bytes > 0);
        if !(hup || by_size || by_time) {
            return;
        }
        let path = f.path.clone();
        let rotate = by_size || by_time;
        if let Err(e) = self.out.flush() {
            self.fail(e);
            return;
        }
        let r = (|| -> io::Result<u64> {
            if rotate {
                let mut n = 1u64;
                let dest = loop {
                    let mut d = path.clone().into_os_string();
                    d.push(format!(".{n}"));
                    let d = PathBuf::from(d);
                    if !d.exists() {
                        break d;
                    }
                    n += 1;
                };
                std::fs::rename(&path, &dest)?;
            }
            let nf = open_append(&path)?;
            let size = nf.metadata().map(|m| m.len()).unwrap_or(0);
            self.written.store(size, Ordering::Relaxed);
            *self.out.get_mut() = Box::new(Counted {
                inner: nf,
                bytes: Arc::clone(&self.written),
            });
            Ok(size)
        })();
        match r {
            Ok(size) => {
                if let Some(f) = self.file.as_mut() {
                    f.bytes = size;
                    f.opened = Instant::now();
                    if rotate {
                        f.rotations += 1;
                    }
                }
            }
            Err(e) => self.fail(e),
        }
    }

    fn fail(&mut self, e: io::Error) {
        self.closed = true;
        if e.kind() != io::ErrorKind::BrokenPipe {
            self.error = Some(e);
        }
    }

    pub fn flush(&mut self) {
        if !self.closed {
            if let Err(e) = self.out.flush() {
                self.fail(e);
            }
        }
    }

    /// The write error met, if any (a closed pipe is not an error).
    pub fn take_error(&mut self) -> Option<OutputError> {
        self.error.take().map(|source| OutputError {
            target: self.target.clone(),
            source,
        })
    }
}

/// Common EVE header fields, written in place into an event's map.
struct Head<'a> {
    ts: Timestamp,
    event_type: &'a str,
    src: Option<crate::flow::Endpoint>,
    dst: Option<crate::flow::Endpoint>,
    proto: u8,
    flow_id: Option<u64>,
    vlan: &'a [u16],
}

impl Head<'_> {
    fn entries<M: SerializeMap>(&self, m: &mut M) -> Result<(), M::Error> {
        m.serialize_entry("timestamp", &Shown(self.ts.rfc3339()))?;
        if let Some(id) = self.flow_id {
            m.serialize_entry("flow_id", &id)?;
        }
        m.serialize_entry("event_type", self.event_type)?;
        if !self.vlan.is_empty() {
            m.serialize_entry("vlan", self.vlan)?;
        }
        let ported = self.proto == 6 || self.proto == 17;
        for (ip, port, e) in [
            ("src_ip", "src_port", self.src),
            ("dest_ip", "dest_port", self.dst),
        ] {
            if let Some(e) = e {
                m.serialize_entry(ip, &IpText(e.ip))?;
                if ported && e.port != 0 {
                    m.serialize_entry(port, &e.port)?;
                }
            }
        }
        if self.proto != 0 {
            m.serialize_entry("proto", &proto_name(self.proto))?;
        }
        Ok(())
    }
}

/// A value written as the string of its `Display` form, without building the string.
struct Shown<T>(T);

impl<T: std::fmt::Display> Serialize for Shown<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

/// The EVE `flow` event of a flow record, serialized in place (flow logs write one per flow).
pub fn flow_event(r: &FlowRecord) -> FlowOut<'_> {
    FlowOut(r)
}

/// See [`flow_event`].
pub struct FlowOut<'a>(&'a FlowRecord);

impl Serialize for FlowOut<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let r = self.0;
        let m = &r.meta;
        let mut e = s.serialize_map(None)?;
        Head {
            ts: r.last,
            event_type: "flow",
            src: Some(m.initiator),
            dst: Some(m.responder),
            proto: m.proto,
            flow_id: Some(m.id.0),
            vlan: m.vlan.as_slice(),
        }
        .entries(&mut e)?;
        if r.app != "unknown" {
            e.serialize_entry("app_proto", r.app)?;
        }
        e.serialize_entry("flow", &FlowPart(r))?;
        if let Some(vni) = m.vni {
            e.serialize_entry("vxlan", &json!({ "vni": vni }))?;
        }
        if m.proto == 6 {
            e.serialize_entry("tcp", &TcpPart(r))?;
        }
        e.end()
    }
}

/// The `flow` object of a flow event.
struct FlowPart<'a>(&'a FlowRecord);

impl Serialize for FlowPart<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use crate::flow::FlowEnd;
        let r = self.0;
        let mut f = s.serialize_map(Some(9))?;
        f.serialize_entry("pkts_toserver", &r.fwd.packets)?;
        f.serialize_entry("pkts_toclient", &r.rev.packets)?;
        f.serialize_entry("bytes_toserver", &r.fwd.bytes)?;
        f.serialize_entry("bytes_toclient", &r.rev.bytes)?;
        f.serialize_entry("start", &Shown(r.start.rfc3339()))?;
        f.serialize_entry("end", &Shown(r.last.rfc3339()))?;
        f.serialize_entry("age", &r.last.secs_since(r.start))?;
        let state = match r.end {
            FlowEnd::Fin | FlowEnd::Rst => "closed",
            _ if r.meta.proto == 6 => r.tcp.as_str(),
            _ => "new",
        };
        f.serialize_entry("state", state)?;
        f.serialize_entry("reason", r.end.as_str())?;
        f.end()
    }
}

/// The `tcp` object of a TCP flow event.
struct TcpPart<'a>(&'a FlowRecord);

impl Serialize for TcpPart<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let r = self.0;
        let all = r.fwd.tcp_flags | r.rev.tcp_flags;
        let mut t = s.serialize_map(Some(11))?;
        t.serialize_entry("tcp_flags", &Shown(Hex2(all)))?;
        t.serialize_entry("tcp_flags_ts", &Shown(Hex2(r.fwd.tcp_flags)))?;
        t.serialize_entry("tcp_flags_tc", &Shown(Hex2(r.rev.tcp_flags)))?;
        for (name, bit) in [
            ("syn", 0x02),
            ("fin", 0x01),
            ("rst", 0x04),
            ("psh", 0x08),
            ("ack", 0x10),
        ] {
            t.serialize_entry(name, &(all & bit != 0))?;
        }
        t.serialize_entry("state", r.tcp.as_str())?;
        t.serialize_entry("gap_bytes_ts", &r.gaps[Direction::Forward.index()])?;
        t.serialize_entry("gap_bytes_tc", &r.gaps[Direction::Reverse.index()])?;
        // Only when it happened: inspection stopped at the stream memcap.
        if r.memcap_shed {
            t.serialize_entry("reassembly_memcap", &true)?;
        }
        t.end()
    }
}

/// A byte as two lower-case hex digits.
struct Hex2(u8);

impl std::fmt::Display for Hex2 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let b = crate::decode::hex_byte(self.0);
        f.write_str(std::str::from_utf8(&b).map_err(|_| std::fmt::Error)?)
    }
}

/// The EVE `flow_window` event (under `--flows`): one flow's part in one device's window of the
/// device stage, with every field present (null where absent), so that a flow log reads as one
/// table. See [`crate::device::FlowWindow`].
pub fn flow_window_event(r: &crate::device::FlowWindow, window_secs: u64) -> FlowWindowOut<'_> {
    FlowWindowOut { r, window_secs }
}

/// See [`flow_window_event`] (serialized in place).
pub struct FlowWindowOut<'a> {
    r: &'a crate::device::FlowWindow,
    window_secs: u64,
}

impl Serialize for FlowWindowOut<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let r = self.r;
        let mut e = s.serialize_map(None)?;
        e.serialize_entry("timestamp", &Shown(r.window.rfc3339()))?;
        e.serialize_entry("flow_id", &r.flow_id)?;
        e.serialize_entry("event_type", "flow_window")?;
        e.serialize_entry("window", &r.window.secs())?;
        e.serialize_entry("window_secs", &self.window_secs)?;
        e.serialize_entry("device", &Shown(r.device))?;
        e.serialize_entry("device_ip", &IpText(r.device_ip))?;
        let role = if r.initiator {
            "initiator"
        } else {
            "responder"
        };
        e.serialize_entry("role", role)?;
        e.serialize_entry("peer_ip", &IpText(r.peer_ip))?;
        e.serialize_entry("peer_device", &r.peer_device.map(Shown))?;
        e.serialize_entry("proto", &proto_name(r.proto))?;
        e.serialize_entry("dest_port", &r.dest_port)?;
        e.serialize_entry("started", &r.started)?;
        e.serialize_entry("app", &r.app.map(|a| a.as_str()))?;
        for i in crate::device::ADDITIVE {
            e.serialize_entry(crate::device::FEATURES[i], &(r.v[i] as u64))?;
        }
        e.end()
    }
}

/// The EVE `device` event, written when a device appears for the first time.
pub fn device_event(d: &crate::device::DeviceProfile) -> DeviceOut<'_> {
    DeviceOut(d)
}

/// See [`device_event`] (serialized in place).
pub struct DeviceOut<'a>(&'a crate::device::DeviceProfile);

impl Serialize for DeviceOut<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let d = self.0;
        let mut e = s.serialize_map(None)?;
        e.serialize_entry("timestamp", &Shown(d.first_seen.rfc3339()))?;
        e.serialize_entry("event_type", "device")?;
        if let Some(ip) = d.ips.items.iter().next() {
            e.serialize_entry("src_ip", &IpText(*ip))?;
        }
        e.serialize_entry("device", &DevicePart(d))?;
        e.end()
    }
}

/// The `device` object of a device event.
struct DevicePart<'a>(&'a crate::device::DeviceProfile);

impl Serialize for DevicePart<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let d = self.0;
        let mut m = s.serialize_map(Some(3))?;
        m.serialize_entry("id", &Shown(d.id))?;
        m.serialize_entry("mac", &d.mac)?;
        m.serialize_entry("ips", &Addresses(&d.ips.items))?;
        m.end()
    }
}

/// A set of addresses as a JSON array of strings.
struct Addresses<'a>(&'a std::collections::BTreeSet<std::net::IpAddr>);

impl Serialize for Addresses<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(|&ip| IpText(ip)))
    }
}

/// Alert counters.
#[derive(Clone, Debug, Default)]
pub struct AlertCounters {
    pub written: u64,
    pub by_kind: [u64; Kind::ALL.len()],
    /// Findings whose rule is absent or disabled.
    pub no_rule: u64,
}

/// Turns findings into alerts: rule lookup, suppression, EVE shape.
pub struct Alerter {
    rules: RuleSet,
    default_suppress: u64,
    suppressor: Suppressor,
    pub counters: AlertCounters,
}

impl Alerter {
    pub fn new(rules: RuleSet, default_suppress_secs: u64) -> Self {
        Alerter {
            rules,
            default_suppress: default_suppress_secs,
            suppressor: Suppressor::new(100_000),
            counters: AlertCounters::default(),
        }
    }

    /// Suppression entries dropped because its table was full.
    pub fn suppression_evicted(&self) -> u64 {
        self.suppressor.evicted
    }

    pub fn suppressed(&self) -> u64 {
        self.suppressor.suppressed
    }

    /// The alert for a finding, or `None` when it has no enabled rule or is suppressed (both
    /// counted, unless the detector asked already: see `Gate`).
    pub fn alert<'a>(&'a mut self, f: &'a Finding) -> Option<AlertOut<'a>> {
        let Alerter {
            rules,
            default_suppress,
            suppressor,
            counters,
        } = self;
        let Some(rule) = rules.enabled(f.kind, f.variant) else {
            // An admitted finding had its rule; a missing one is counted once.
            if f.admission == Admission::Undecided {
                counters.no_rule += 1;
            }
            return None;
        };
        let suppressed_before = match f.admission {
            // Decided when the detector asked.
            Admission::Write { suppressed_before } => suppressed_before,
            Admission::Undecided => {
                suppress(suppressor, *default_suppress, rule, &f.identifier, f.ts)?
            }
        };
        counters.written += 1;
        if let Some(c) = counters.by_kind.get_mut(f.kind.index()) {
            *c += 1;
        }
        Some(AlertOut {
            f,
            rule,
            suppressed_before,
        })
    }
}

/// The suppression policy's decision on a finding of `rule`: `None` for a repeat written within
/// the rule's window (counted by the suppressor), else how many repeats were suppressed since
/// the last one written.
fn suppress(
    suppressor: &mut Suppressor,
    default_window: u64,
    rule: &Rule,
    identifier: &str,
    ts: Timestamp,
) -> Option<u64> {
    let window = rule.suppress_secs.unwrap_or(default_window);
    match suppressor.decide(rule.sid, identifier, ts, window) {
        Decision::Suppress => None,
        Decision::Write { suppressed_before } => Some(suppressed_before),
    }
}

/// The alert stage's decision asked for ahead of a finding: the same rule lookup and
/// suppression as [`Alerter::alert`], counted the same way.
impl Gate for Alerter {
    fn admit(
        &mut self,
        kind: Kind,
        variant: &'static str,
        identifier: &str,
        ts: Timestamp,
    ) -> Option<Admission> {
        let Some(rule) = self.rules.enabled(kind, variant) else {
            self.counters.no_rule += 1;
            return None;
        };
        let suppressed_before = suppress(
            &mut self.suppressor,
            self.default_suppress,
            rule,
            identifier,
            ts,
        )?;
        Some(Admission::Write { suppressed_before })
    }
}

/// An EVE `alert` event, serialized in place by the writer.
pub struct AlertOut<'a> {
    f: &'a Finding,
    rule: &'a crate::detect::rules::Rule,
    /// Findings of the same identifier suppressed since the last alert (0: not written).
    suppressed_before: u64,
}

impl Serialize for AlertOut<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let (f, rule) = (self.f, self.rule);
        let mut e = s.serialize_map(None)?;
        Head {
            ts: f.ts,
            event_type: "alert",
            src: f.src,
            dst: f.dst,
            proto: f.proto,
            flow_id: f.flow_id.map(|i| i.0),
            vlan: f.vlan.as_slice(),
        }
        .entries(&mut e)?;
        if let Some(a) = f.app_proto {
            e.serialize_entry("app_proto", a)?;
        }
        e.serialize_entry("alert", &RulePart { rule, kind: f.kind })?;
        e.serialize_entry(
            "evidence",
            &EvidencePart {
                ev: &f.evidence,
                suppressed_before: self.suppressed_before,
            },
        )?;
        e.end()
    }
}

/// The `alert` object of an alert: the rule that wrote it.
struct RulePart<'a> {
    rule: &'a crate::detect::rules::Rule,
    kind: Kind,
}

impl Serialize for RulePart<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let r = self.rule;
        let mut m = s.serialize_map(Some(8))?;
        m.serialize_entry("action", "allowed")?;
        m.serialize_entry("gid", &1)?;
        m.serialize_entry("signature_id", &r.sid)?;
        m.serialize_entry("rev", &r.rev)?;
        m.serialize_entry("signature", &r.signature)?;
        m.serialize_entry("category", &r.category)?;
        m.serialize_entry("severity", &r.severity)?;
        m.serialize_entry("kind", self.kind.as_str())?;
        m.end()
    }
}

/// The `evidence` object of an alert, with the count of findings suppressed since the last one
/// (`suppressed_since_last`, when there were any).
struct EvidencePart<'a> {
    ev: &'a crate::detect::Evidence,
    suppressed_before: u64,
}

impl Serialize for EvidencePart<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(None)?;
        for (k, v) in self.ev.iter() {
            m.serialize_entry(k, v)?;
        }
        if self.suppressed_before > 0 {
            m.serialize_entry("suppressed_since_last", &self.suppressed_before)?;
        }
        m.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::Endpoint;

    fn rules() -> RuleSet {
        RuleSet::from_texts([(
            "t.toml",
            "[[rule]]\nsid = 7\nrev = 2\nkind = \"plaintext_mqtt\"\nsignature = \"S\"\n\
             category = \"C\"\nseverity = 3\nsuppress_secs = 60\n",
        )])
        .unwrap()
    }

    fn finding(secs: u64) -> Finding {
        let e = |ip: &str, port| Endpoint {
            ip: ip.parse().unwrap(),
            port,
        };
        Finding {
            ts: Timestamp::from_secs_nanos(secs, 5_000),
            kind: Kind::PlaintextMqtt,
            variant: "",
            src: Some(e("198.18.0.7", 40000)),
            dst: Some(e("198.18.0.2", 1883)),
            proto: 6,
            flow_id: Some(crate::flow::FlowId(42)),
            vlan: Default::default(),
            app_proto: Some("mqtt"),
            identifier: "198.18.0.7|198.18.0.2".into(),
            evidence: Default::default(),
            admission: Admission::Undecided,
        }
        .with("client_id", "dev-1")
        .with("topics", json!(["a/b"]))
    }

    fn line(a: &mut Alerter, f: &Finding) -> Option<String> {
        a.alert(f).map(|v| serde_json::to_string(&v).unwrap())
    }

    #[test]
    fn alerts_are_eve_lines_and_count_what_was_suppressed() {
        let mut a = Alerter::new(rules(), 600);
        let first = line(&mut a, &finding(1_000)).expect("written");
        assert_eq!(
            first,
            "{\"timestamp\":\"1970-01-01T00:16:40.000005+00:00\",\"flow_id\":42,\
             \"event_type\":\"alert\",\"src_ip\":\"198.18.0.7\",\"src_port\":40000,\
             \"dest_ip\":\"198.18.0.2\",\"dest_port\":1883,\"proto\":\"TCP\",\
             \"app_proto\":\"mqtt\",\"alert\":{\"action\":\"allowed\",\"gid\":1,\
             \"signature_id\":7,\"rev\":2,\"signature\":\"S\",\"category\":\"C\",\
             \"severity\":3,\"kind\":\"plaintext_mqtt\"},\
             \"evidence\":{\"client_id\":\"dev-1\",\"topics\":[\"a/b\"]}}"
        );
        // Within the rule's 60 s: suppressed, twice.
        assert_eq!(line(&mut a, &finding(1_030)), None);
        assert_eq!(line(&mut a, &finding(1_059)), None);
        // After it: written, with the count, after the finding's own evidence.
        let later: Value = serde_json::from_str(&line(&mut a, &finding(1_061)).unwrap()).unwrap();
        let ev = later["evidence"].as_object().unwrap();
        assert_eq!(
            ev.keys().collect::<Vec<_>>(),
            ["client_id", "topics", "suppressed_since_last"]
        );
        assert_eq!(ev["suppressed_since_last"], 2);
        assert_eq!(a.counters.written, 2);
    }

    /// Asking ahead (a detector's `Gate`) takes the same decisions as the finding reaching the
    /// alert stage undecided: the same lines, the same counts, and no finding to build for a
    /// suppressed repeat or a kind without a rule.
    #[test]
    fn a_gated_finding_is_decided_once_as_an_undecided_one_is() {
        let (mut gated, mut plain) = (Alerter::new(rules(), 600), Alerter::new(rules(), 600));
        let mut lines = (Vec::new(), Vec::new());
        for secs in [1_000, 1_030, 1_059, 1_061, 1_062, 1_200] {
            let f = finding(secs);
            let ts = f.ts;
            if let Some(admission) = gated.admit(f.kind, f.variant, &f.identifier, ts) {
                let f = Finding {
                    admission,
                    ..f.clone()
                };
                lines
                    .0
                    .push(line(&mut gated, &f).expect("admitted, so written"));
            }
            lines.1.extend(line(&mut plain, &f));
        }
        assert_eq!(lines.0.len(), 3);
        assert_eq!(lines.0, lines.1);
        assert_eq!(gated.suppressed(), 3);
        assert_eq!(gated.suppressed(), plain.suppressed());
        assert_eq!(gated.counters.written, plain.counters.written);
        // No rule for the kind: dropped and counted, as `alert` counts it.
        let ts = Timestamp::from_secs(1_300);
        assert_eq!(gated.admit(Kind::WeakTls, "", "x", ts), None);
        assert_eq!(gated.counters.no_rule, 1);
    }
}
