//! The bridge from the flow stage: one [`ProtoState`] per TCP flow, fed by reassembly.

use super::{AppProto, ProtoEvent, ProtoLimits, ProtoState};
use crate::flow::{Direction, FlowMeta, StreamHandler};

/// Per-flow protocol analyzer, created for every TCP flow.
pub struct Analyzer {
    state: ProtoState,
}

impl StreamHandler for Analyzer {
    type Event = ProtoEvent;

    fn for_flow(meta: &FlowMeta) -> Option<Self> {
        Some(Analyzer {
            state: ProtoState::new(meta.responder.port, ProtoLimits::default()),
        })
    }
    fn on_data(&mut self, dir: Direction, data: &[u8], out: &mut Vec<ProtoEvent>) {
        self.state.on_data(dir, data, out);
    }
    fn on_gap(&mut self, dir: Direction, len: u64) {
        self.state.on_gap(dir, len);
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
}
