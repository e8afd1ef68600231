//! Protocol stage (being written): analyzers of MQTT, HTTP, Telnet, FTP and TLS plug into the
//! flow stage's [`StreamHandler`](crate::flow::StreamHandler).

use crate::flow::{Direction, FlowMeta, StreamHandler};

/// Events of the protocol analyzers.
#[derive(Debug, Clone)]
pub enum ProtoEvent {}

/// Per-flow analyzer.
pub struct Analyzer;

impl StreamHandler for Analyzer {
    type Event = ProtoEvent;
    fn for_flow(_: &FlowMeta) -> Option<Self> {
        None
    }
    fn on_data(&mut self, _: Direction, _: &[u8], _: &mut Vec<ProtoEvent>) {}
    fn on_gap(&mut self, _: Direction, _: u64) {}
    fn on_close(&mut self, _: &mut Vec<ProtoEvent>) {}
    fn app_name(&self) -> &'static str {
        "unknown"
    }
}
