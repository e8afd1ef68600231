//! The bridge from the flow stage: one [`ProtoState`] per TCP flow, fed by reassembly.

use super::smb::SmbParser;
use super::{AppProto, ProtoEvent, ProtoLimits, ProtoState};
use crate::flow::{Direction, FlowMeta, StreamHandler};

/// Per-flow protocol analyzer, created for every TCP flow (it sits in the flow table's entry:
/// what a flow that never carries data costs).
pub struct Analyzer {
    state: ProtoState,
    /// SMB / DCE-RPC parsing: tried on every TCP flow (DCE/RPC runs on dynamic ports).
    smb: Smb,
    smb_events: Vec<super::smb::SmbEvent>,
}

/// Where a flow's SMB / DCE-RPC parsing is.
enum Smb {
    /// No client byte yet; the responder's port.
    Untried(u16),
    /// The first client bytes were or may be SMB or DCE/RPC: a parser (boxed: 120 bytes that
    /// most flows never need).
    Parsing(Box<SmbParser>),
    /// Neither (decided on the first client bytes), or the parser gave up.
    Off,
}

impl StreamHandler for Analyzer {
    type Event = ProtoEvent;

    fn for_flow(meta: &FlowMeta) -> Option<Self> {
        Some(Analyzer {
            state: ProtoState::new(meta.responder.port, ProtoLimits::default()),
            smb: Smb::Untried(meta.responder.port),
            smb_events: Vec::new(),
        })
    }
    fn on_data(&mut self, dir: Direction, data: &[u8], out: &mut Vec<ProtoEvent>) {
        self.state.on_data(dir, data, out);
        // The parser reads only the client's side; most flows are found to be neither SMB nor
        // DCE/RPC on their first client bytes, without one.
        if let Smb::Untried(port) = self.smb {
            if dir == Direction::Forward && !data.is_empty() {
                self.smb = if SmbParser::rejects(port, data) {
                    Smb::Off
                } else {
                    Smb::Parsing(Box::new(SmbParser::new(port)))
                };
            }
        }
        if let Smb::Parsing(p) = &mut self.smb {
            p.on_data(dir, data, &mut self.smb_events);
            out.extend(self.smb_events.drain(..).map(ProtoEvent::Smb));
            if !p.active() {
                self.smb = Smb::Off;
            }
        }
    }
    fn on_gap(&mut self, dir: Direction, len: u64) {
        self.state.on_gap(dir, len);
        // (A parser that has seen no client byte ignores a gap.)
        if let Smb::Parsing(p) = &mut self.smb {
            p.on_gap(dir);
        }
    }
    fn on_close(&mut self, out: &mut Vec<ProtoEvent>) {
        self.state.on_close(out);
    }
    fn app_name(&self) -> &'static str {
        self.state.app().as_str()
    }
    /// MQTT sessions last for days and every PUBLISH matters (rates, topic policy): MQTT flows
    /// are inspected beyond the reassembly depth. The parser's own buffers stay bounded.
    fn wants_whole_stream(&self) -> bool {
        matches!(self.state.app(), AppProto::Mqtt | AppProto::MqttWs)
    }
    fn roles_swapped(&self) -> bool {
        self.state.roles_swapped()
    }
    fn held(&self) -> usize {
        self.state.held()
            + match &self.smb {
                Smb::Parsing(p) => p.held(),
                Smb::Untried(_) | Smb::Off => 0,
            }
            + self.smb_events.capacity() * std::mem::size_of::<super::smb::SmbEvent>()
    }
    /// Pending events go as at the flow's end; closing the state releases its buffers.
    fn shed(&mut self, out: &mut Vec<ProtoEvent>) {
        self.state.on_close(out);
        self.smb = Smb::Off;
        self.smb_events = Vec::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::{Endpoint, FlowId};
    use crate::time::Timestamp;

    fn analyzer(port: u16) -> Analyzer {
        let end = |ip: &str, port| Endpoint {
            ip: ip.parse().unwrap(),
            port,
        };
        let meta = FlowMeta {
            id: FlowId(1),
            initiator: end("198.18.0.5", 40_000),
            responder: end("198.18.0.9", port),
            proto: 6,
            vlan: Default::default(),
            vni: None,
            first: Timestamp::from_secs(1),
            initiator_mac: None,
            responder_mac: None,
            local: 0,
        };
        Analyzer::for_flow(&meta).unwrap()
    }

    /// A flow is tried for SMB / DCE-RPC on its first client bytes, and a parser is made only
    /// for one that may be either; the server's bytes decide nothing.
    #[test]
    fn an_smb_parser_is_made_only_for_flows_that_may_carry_smb() {
        let mut out = Vec::new();
        let mut web = analyzer(80);
        web.on_data(Direction::Reverse, b"HTTP/1.1 200 OK\r\n\r\n", &mut out);
        assert!(matches!(web.smb, Smb::Untried(80)));
        web.on_data(
            Direction::Forward,
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
            &mut out,
        );
        assert!(matches!(web.smb, Smb::Off));
        // SMB2 NEGOTIATE's first bytes (NetBIOS length, then the SMB2 magic).
        let negotiate = [0, 0, 0, 0x66, 0xfe, b'S', b'M', b'B', 64, 0, 0, 0];
        let mut smb = analyzer(445);
        smb.on_data(Direction::Forward, &negotiate, &mut out);
        assert!(matches!(smb.smb, Smb::Parsing(_)));
        // Too few bytes to tell: a parser gathers more.
        let mut short = analyzer(49_700);
        short.on_data(Direction::Forward, b"\x05\x00", &mut out);
        assert!(matches!(short.smb, Smb::Parsing(_)));
    }
}
