//! The bridge from the flow stage: one [`ProtoState`] per TCP flow, fed by reassembly.

use super::smb::SmbParser;
use super::{AppProto, ProtoEvent, ProtoLimits, ProtoState};
use crate::flow::{Direction, FlowMeta, StreamHandler};

/// Per-flow protocol analyzer, created for every TCP flow.
pub struct Analyzer {
    state: ProtoState,
    /// SMB / DCE-RPC parser: tried on every TCP flow (DCE/RPC runs on dynamic ports), it switches
    /// itself off on the first client bytes that are neither.
    smb: Option<SmbParser>,
    smb_events: Vec<super::smb::SmbEvent>,
}

impl StreamHandler for Analyzer {
    type Event = ProtoEvent;

    fn for_flow(meta: &FlowMeta) -> Option<Self> {
        Some(Analyzer {
            state: ProtoState::new(meta.responder.port, ProtoLimits::default()),
            smb: Some(SmbParser::new(meta.responder.port)),
            smb_events: Vec::new(),
        })
    }
    fn on_data(&mut self, dir: Direction, data: &[u8], out: &mut Vec<ProtoEvent>) {
        self.state.on_data(dir, data, out);
        if let Some(p) = self.smb.as_mut() {
            p.on_data(dir, data, &mut self.smb_events);
            out.extend(self.smb_events.drain(..).map(ProtoEvent::Smb));
            if !p.active() {
                self.smb = None;
            }
        }
    }
    fn on_gap(&mut self, dir: Direction, len: u64) {
        self.state.on_gap(dir, len);
        if let Some(p) = self.smb.as_mut() {
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
            + self.smb.as_ref().map_or(0, SmbParser::held)
            + self.smb_events.capacity() * std::mem::size_of::<super::smb::SmbEvent>()
    }
    /// Pending events go as at the flow's end; closing the state releases its buffers.
    fn shed(&mut self, out: &mut Vec<ProtoEvent>) {
        self.state.on_close(out);
        self.smb = None;
        self.smb_events = Vec::new();
    }
}
