//! Alert stage: applies alert policy to findings and writes every event as a JSON line in
//! Suricata's EVE shape (`alert`, `flow`, `stats`).
//!
//! Owns: the suppression table, the output writer, alert counters. It is the only writer.
//! Detectors decide; this stage suppresses and writes.

pub mod suppress;

use crate::detect::rules::RuleSet;
use crate::detect::{Finding, Kind};
use crate::flow::{Direction, FlowRecord};
use crate::time::Timestamp;
use serde_json::{json, Map, Value};
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

    pub fn write(&mut self, v: &Value) {
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

/// Common EVE header fields.
fn header(
    ts: Timestamp,
    event_type: &str,
    src: Option<crate::flow::Endpoint>,
    dst: Option<crate::flow::Endpoint>,
    proto: u8,
    flow_id: Option<u64>,
    vlan: &[u16],
) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("timestamp".into(), ts.rfc3339().to_string().into());
    if let Some(id) = flow_id {
        m.insert("flow_id".into(), id.into());
    }
    m.insert("event_type".into(), event_type.into());
    if !vlan.is_empty() {
        m.insert("vlan".into(), vlan.to_vec().into());
    }
    if let Some(s) = src {
        m.insert("src_ip".into(), s.ip.to_string().into());
        if (proto == 6 || proto == 17) && s.port != 0 {
            m.insert("src_port".into(), s.port.into());
        }
    }
    if let Some(d) = dst {
        m.insert("dest_ip".into(), d.ip.to_string().into());
        if (proto == 6 || proto == 17) && d.port != 0 {
            m.insert("dest_port".into(), d.port.into());
        }
    }
    if proto != 0 {
        m.insert("proto".into(), proto_name(proto));
    }
    m
}

fn tcp_flags_hex(f: u8) -> String {
    format!("{f:02x}")
}

/// Builds the EVE `flow` event of a flow record.
pub fn flow_event(r: &FlowRecord) -> Value {
    let m = &r.meta;
    let mut e = header(
        r.last,
        "flow",
        Some(m.initiator),
        Some(m.responder),
        m.proto,
        Some(m.id.0),
        m.vlan.as_slice(),
    );
    if r.app != "unknown" {
        e.insert("app_proto".into(), r.app.into());
    }
    let age = r.last.secs_since(r.start);
    e.insert(
        "flow".into(),
        json!({
            "pkts_toserver": r.fwd.packets,
            "pkts_toclient": r.rev.packets,
            "bytes_toserver": r.fwd.bytes,
            "bytes_toclient": r.rev.bytes,
            "start": r.start.rfc3339().to_string(),
            "end": r.last.rfc3339().to_string(),
            "age": age,
            "state": match r.end { crate::flow::FlowEnd::Fin | crate::flow::FlowEnd::Rst => "closed", _ => if m.proto == 6 { r.tcp.as_str() } else { "new" } },
            "reason": r.end.as_str(),
        }),
    );
    if let Some(vni) = m.vni {
        e.insert("vxlan".into(), json!({ "vni": vni }));
    }
    if m.proto == 6 {
        let all = r.fwd.tcp_flags | r.rev.tcp_flags;
        let bit = |b: u8| all & b != 0;
        e.insert(
            "tcp".into(),
            json!({
                "tcp_flags": tcp_flags_hex(all),
                "tcp_flags_ts": tcp_flags_hex(r.fwd.tcp_flags),
                "tcp_flags_tc": tcp_flags_hex(r.rev.tcp_flags),
                "syn": bit(0x02), "fin": bit(0x01), "rst": bit(0x04), "psh": bit(0x08), "ack": bit(0x10),
                "state": r.tcp.as_str(),
                "gap_bytes_ts": r.gaps[Direction::Forward.index()],
                "gap_bytes_tc": r.gaps[Direction::Reverse.index()],
            }),
        );
    }
    Value::Object(e)
}

/// The EVE `flow_window` event (under `--flows`): one flow's part in one device's window of the
/// device stage, with every field present (null where absent), so that a flow log reads as one
/// table. See [`crate::device::FlowWindow`].
pub fn flow_window_event(r: &crate::device::FlowWindow, window_secs: u64) -> Value {
    let mut e = Map::new();
    e.insert("timestamp".into(), r.window.rfc3339().to_string().into());
    e.insert("flow_id".into(), r.flow_id.into());
    e.insert("event_type".into(), "flow_window".into());
    e.insert("window".into(), r.window.secs().into());
    e.insert("window_secs".into(), window_secs.into());
    e.insert("device".into(), r.device.to_string().into());
    e.insert("device_ip".into(), r.device_ip.to_string().into());
    e.insert(
        "role".into(),
        if r.initiator {
            "initiator"
        } else {
            "responder"
        }
        .into(),
    );
    e.insert("peer_ip".into(), r.peer_ip.to_string().into());
    e.insert(
        "peer_device".into(),
        r.peer_device.map_or(Value::Null, |d| d.to_string().into()),
    );
    e.insert("proto".into(), proto_name(r.proto));
    e.insert("dest_port".into(), r.dest_port.into());
    e.insert("started".into(), r.started.into());
    e.insert(
        "app".into(),
        r.app.map_or(Value::Null, |a| a.as_str().into()),
    );
    for i in crate::device::ADDITIVE {
        e.insert(crate::device::FEATURES[i].into(), (r.v[i] as u64).into());
    }
    Value::Object(e)
}

/// The EVE `device` event, written when a device appears for the first time.
pub fn device_event(d: &crate::device::DeviceProfile) -> Value {
    let mut e = Map::new();
    e.insert(
        "timestamp".into(),
        d.first_seen.rfc3339().to_string().into(),
    );
    e.insert("event_type".into(), "device".into());
    if let Some(ip) = d.ips.items.iter().next() {
        e.insert("src_ip".into(), ip.to_string().into());
    }
    e.insert(
        "device".into(),
        json!({
            "id": d.id.to_string(),
            "mac": d.mac,
            "ips": d.ips.items.iter().map(|i| i.to_string()).collect::<Vec<_>>(),
        }),
    );
    Value::Object(e)
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

    /// The alert for a finding, or `None` when it has no enabled rule or is suppressed.
    pub fn alert(&mut self, f: &Finding) -> Option<Value> {
        let Some(rule) = self.rules.enabled(f.kind, f.variant) else {
            self.counters.no_rule += 1;
            return None;
        };
        let window = rule.suppress_secs.unwrap_or(self.default_suppress);
        let suppressed_before = match self
            .suppressor
            .decide(rule.sid, &f.identifier, f.ts, window)
        {
            Decision::Suppress => return None,
            Decision::Write { suppressed_before } => suppressed_before,
        };
        self.counters.written += 1;
        if let Some(c) = self.counters.by_kind.get_mut(f.kind.index()) {
            *c += 1;
        }
        let mut e = header(
            f.ts,
            "alert",
            f.src,
            f.dst,
            f.proto,
            f.flow_id.map(|i| i.0),
            f.vlan.as_slice(),
        );
        if let Some(a) = f.app_proto {
            e.insert("app_proto".into(), a.into());
        }
        e.insert(
            "alert".into(),
            json!({
                "action": "allowed",
                "gid": 1,
                "signature_id": rule.sid,
                "rev": rule.rev,
                "signature": rule.signature,
                "category": rule.category,
                "severity": rule.severity,
                "kind": f.kind.as_str(),
            }),
        );
        let mut ev = f.evidence.to_map();
        if suppressed_before > 0 {
            ev.insert("suppressed_since_last".into(), suppressed_before.into());
        }
        e.insert("evidence".into(), Value::Object(ev));
        Some(Value::Object(e))
    }
}
