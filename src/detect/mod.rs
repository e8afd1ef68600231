//! Detect stage: rule-based, built-in and learned detectors turn events into [`Finding`]s.
//!
//! Owns: the compiled rule set and the detectors' state. Hands on: `Finding` — what was seen, by
//! which rule, with the evidence that explains it. Detectors decide; they neither suppress nor
//! write (that is the alert stage's job). Where findings are mostly repeats (logins, plaintext
//! sessions), a detector asks the alert stage for its decision first ([`Gate`]) and builds the
//! evidence only of findings that will be written.

pub mod baseline;
pub mod lateral;
pub mod learned;
pub mod protocol;
pub mod rules;
pub mod scan;

use crate::decode::Vlans;
use crate::flow::{Endpoint, FlowId};
use crate::time::Timestamp;
use serde_json::Value;

/// The vocabulary of `alert.kind`: one word per kind of finding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    PlaintextMqtt,
    PlaintextHttp,
    PlaintextTelnet,
    PlaintextFtp,
    CleartextCredentials,
    DefaultCredentials,
    BruteForce,
    PortScan,
    HostScan,
    LateralMovement,
    PolicyViolation,
    NewPeer,
    NewService,
    RateSpike,
    VolumeSpike,
    TopicAclViolation,
    WeakTls,
    LearnedOutlier,
    ProtocolAnomaly,
}

impl Kind {
    pub const ALL: [Kind; 19] = [
        Kind::PlaintextMqtt,
        Kind::PlaintextHttp,
        Kind::PlaintextTelnet,
        Kind::PlaintextFtp,
        Kind::CleartextCredentials,
        Kind::DefaultCredentials,
        Kind::BruteForce,
        Kind::PortScan,
        Kind::HostScan,
        Kind::LateralMovement,
        Kind::PolicyViolation,
        Kind::NewPeer,
        Kind::NewService,
        Kind::RateSpike,
        Kind::VolumeSpike,
        Kind::TopicAclViolation,
        Kind::WeakTls,
        Kind::LearnedOutlier,
        Kind::ProtocolAnomaly,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::PlaintextMqtt => "plaintext_mqtt",
            Kind::PlaintextHttp => "plaintext_http",
            Kind::PlaintextTelnet => "plaintext_telnet",
            Kind::PlaintextFtp => "plaintext_ftp",
            Kind::CleartextCredentials => "cleartext_credentials",
            Kind::DefaultCredentials => "default_credentials",
            Kind::BruteForce => "brute_force",
            Kind::PortScan => "port_scan",
            Kind::HostScan => "host_scan",
            Kind::LateralMovement => "lateral_movement",
            Kind::PolicyViolation => "policy_violation",
            Kind::NewPeer => "new_peer",
            Kind::NewService => "new_service",
            Kind::RateSpike => "rate_spike",
            Kind::VolumeSpike => "volume_spike",
            Kind::TopicAclViolation => "topic_acl_violation",
            Kind::WeakTls => "weak_tls",
            Kind::LearnedOutlier => "learned_outlier",
            Kind::ProtocolAnomaly => "protocol_anomaly",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.iter().copied().find(|k| k.as_str() == s)
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// Something a detector found.
#[derive(Clone, Debug, PartialEq)]
pub struct Finding {
    /// Packet time of the event that completed the finding.
    pub ts: Timestamp,
    pub kind: Kind,
    /// Selects among several rules of the same kind (e.g. the protocol of a brute force); empty
    /// for the kind's default rule.
    pub variant: &'static str,
    pub src: Option<Endpoint>,
    pub dst: Option<Endpoint>,
    /// IP protocol number (0 when not about one flow).
    pub proto: u8,
    pub flow_id: Option<FlowId>,
    pub vlan: Vlans,
    pub app_proto: Option<&'static str>,
    /// What makes two findings "the same" for suppression (Zeek's notice identifier).
    pub identifier: String,
    /// The evidence that explains the finding (written as the alert's `evidence` object).
    pub evidence: Evidence,
    /// Whether the alert stage has already taken its decision on it (see [`Gate`]).
    pub admission: Admission,
}

/// The alert stage's decision on a finding, when a detector asked for it before building the
/// finding's evidence (see [`Gate`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Admission {
    /// Not asked: the alert stage decides when the finding reaches it.
    #[default]
    Undecided,
    /// To be written; `suppressed_before` repeats of it were suppressed since the last alert.
    Write { suppressed_before: u64 },
}

/// What a detector asks the alert stage before it builds a finding that is often a repeat
/// (one per login or plaintext session, most of them suppressed): the alert stage takes its
/// decision now, as it would on the finding (suppressed repeats are counted, a missing rule
/// too), and the detector builds the evidence only for a finding that will be written. Policy
/// stays in the alert stage; the detector reports whatever the answer.
pub trait Gate {
    /// `None`: dropped (and counted) by the alert stage. `Some(a)`: to be reported, carrying
    /// `a` in [`Finding::admission`] so that the decision is not taken twice.
    fn admit(
        &mut self,
        kind: Kind,
        variant: &'static str,
        identifier: &str,
        ts: Timestamp,
    ) -> Option<Admission>;
}

/// A gate that lets every finding through undecided (the detectors on their own: tests,
/// benches).
pub struct Ungated;

impl Gate for Ungated {
    fn admit(&mut self, _: Kind, _: &'static str, _: &str, _: Timestamp) -> Option<Admission> {
        Some(Admission::Undecided)
    }
}

impl Finding {
    /// A finding about one flow.
    pub fn for_flow(
        ts: Timestamp,
        kind: Kind,
        meta: &crate::flow::FlowMeta,
        app_proto: Option<&'static str>,
    ) -> Finding {
        Finding {
            ts,
            kind,
            variant: "",
            src: Some(meta.initiator),
            dst: Some(meta.responder),
            proto: meta.proto,
            flow_id: Some(meta.id),
            vlan: meta.vlan,
            app_proto,
            identifier: String::new(),
            evidence: Evidence::with_capacity(8),
            admission: Admission::Undecided,
        }
    }

    pub fn with(mut self, key: &'static str, v: impl Into<Value>) -> Finding {
        self.evidence.insert(key, v.into());
        self
    }
}

/// A finding's evidence: named values in the order they were added (a later value of a name
/// replaces the earlier one in place). Names are static, so a finding that alert policy then
/// suppresses costs no key strings; the alert stage turns it into a JSON object, and adds
/// `suppressed_since_last` (a name detectors leave to it).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Evidence(Vec<(&'static str, Value)>);

impl Evidence {
    /// Room for `n` values (a finding has a handful: one allocation, not one per growth).
    pub fn with_capacity(n: usize) -> Evidence {
        Evidence(Vec::with_capacity(n))
    }

    pub fn insert(&mut self, key: &'static str, v: Value) {
        match self.0.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = v,
            None => self.0.push((key, v)),
        }
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.0.iter().find(|(k, _)| *k == key).map(|(_, v)| v)
    }

    /// The names and values, in the order they were added.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, &Value)> {
        self.0.iter().map(|(k, v)| (*k, v))
    }
}

impl std::ops::Index<&str> for Evidence {
    type Output = Value;
    /// The named value, or null (as `serde_json::Value` indexes).
    fn index(&self, key: &str) -> &Value {
        static NULL: Value = Value::Null;
        self.get(key).unwrap_or(&NULL)
    }
}

/// Builds a suppression identifier from its parts, each written as a tag and its raw bytes:
/// addresses and numbers are not formatted (protocol findings are made at line rate, and most
/// are then suppressed). Only equality matters: the identifier is a key, never written. Each
/// part's length is fixed by its tag or written before it, so different parts never give the
/// same identifier.
#[derive(Default)]
pub struct Ident(String);

impl Ident {
    pub fn new() -> Ident {
        Ident(String::with_capacity(48))
    }

    /// Bytes as the chars of the same values (one to two UTF-8 bytes each).
    fn raw(&mut self, b: &[u8]) {
        self.0.extend(b.iter().map(|&x| char::from(x)));
    }

    pub fn ip(mut self, ip: std::net::IpAddr) -> Ident {
        match ip {
            std::net::IpAddr::V4(a) => {
                self.0.push('4');
                self.raw(&a.octets());
            }
            std::net::IpAddr::V6(a) => {
                self.0.push('6');
                self.raw(&a.octets());
            }
        }
        self
    }

    pub fn num(mut self, n: u64) -> Ident {
        self.0.push('n');
        self.raw(&n.to_le_bytes());
        self
    }

    pub fn text(mut self, t: &str) -> Ident {
        self.0.push('t');
        self.raw(&(t.len() as u32).to_le_bytes());
        self.0.push_str(t);
        self
    }

    pub fn done(self) -> String {
        self.0
    }
}

use crate::app::Emitted;
use crate::proto::ProtoEvent;
use crate::settings::Settings;
use rules::{RuleError, RuleSet};

/// The detectors of the analysis stage, built from the rules at start-up. They see every flow
/// start, application event and flow record, whichever worker produced it.
pub struct Detectors {
    pub protocol: protocol::ProtocolDetector,
    pub scan: scan::ScanDetector,
    pub lateral: lateral::LateralDetector,
}

impl Detectors {
    pub fn new(settings: &Settings, rules: &RuleSet) -> Result<Self, RuleError> {
        Ok(Detectors {
            protocol: protocol::ProtocolDetector::new(rules, settings.alert.reveal_secrets)?,
            scan: scan::ScanDetector::new(settings, rules)?,
            lateral: lateral::LateralDetector::new(settings, rules)?,
        })
    }

    /// One event from a worker; `gate` is the alert stage's (see [`Gate`]).
    pub fn on_event(&mut self, ev: &Emitted, gate: &mut dyn Gate, out: &mut Vec<Finding>) {
        match ev {
            Emitted::App {
                meta,
                ts,
                event: ProtoEvent::Smb(e),
                ..
            } => self.lateral.on_smb(meta, *ts, e),
            Emitted::App {
                meta,
                ts,
                dir,
                event,
            } => self.protocol.on_app(meta, *ts, *dir, event, gate, out),
            Emitted::Flow(r) => self.protocol.on_flow_end(r, out),
            Emitted::Started(_) | Emitted::Packet(_) | Emitted::Activity { .. } => {}
        }
        self.scan.on_event(ev, out);
        self.lateral.on_event(ev, &self.scan, out);
    }

    /// End of input: report what is still open.
    pub fn finish(&mut self, out: &mut Vec<Finding>) {
        while self.finish_some(out, usize::MAX) {}
    }

    /// End of input, in steps of at most `max` brute-force episodes (the one table that a
    /// hostile network fills with findings to make); true while some remain.
    pub fn finish_some(&mut self, out: &mut Vec<Finding>, max: usize) -> bool {
        if self.protocol.finish_some(out, max) {
            return true;
        }
        self.scan.finish(out);
        self.lateral.finish(&self.scan, out);
        false
    }
}

/// Each finding as one line, its kind and its evidence in order: two detectors' findings
/// compare equal exactly when these do.
#[cfg(test)]
pub(crate) fn described(v: &[Finding]) -> Vec<String> {
    v.iter()
        .map(|f| format!("{:?} {:?}", f.kind, f.evidence.iter().collect::<Vec<_>>()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::Ident;

    #[test]
    fn identifiers_are_equal_exactly_when_their_parts_are() {
        let v4: std::net::IpAddr = "198.18.0.10".parse().unwrap();
        let v6: std::net::IpAddr = "fd00::1:ff".parse().unwrap();
        let mapped: std::net::IpAddr = "::ffff:198.18.0.10".parse().unwrap();
        let id = |f: &dyn Fn(Ident) -> Ident| f(Ident::new()).done();
        assert_eq!(
            id(&|i| i.ip(v4).num(1883).text("rejected")),
            id(&|i| i.ip(v4).num(1883).text("rejected"))
        );
        // Each pair differs in one part, or only in where one part ends and the next begins.
        let pairs: [(String, String); 6] = [
            (id(&|i| i.ip(v4).num(1883)), id(&|i| i.ip(v4).num(1884))),
            (id(&|i| i.ip(v4)), id(&|i| i.ip(mapped))),
            (id(&|i| i.ip(v6).num(0)), id(&|i| i.ip(v6).num(u64::MAX))),
            (
                id(&|i| i.text("ab").text("c")),
                id(&|i| i.text("a").text("bc")),
            ),
            (id(&|i| i.text("t").text("")), id(&|i| i.text("").text("t"))),
            (id(&|i| i.num(52).text("x")), id(&|i| i.text("4").num(0))),
        ];
        for (a, b) in &pairs {
            assert_ne!(a, b);
        }
        // Addresses take their octets, numbers 8 bytes: 1 + 4 + 1 + 8 chars here.
        assert_eq!(id(&|i| i.ip(v4).num(7)).chars().count(), 14);
    }
}
