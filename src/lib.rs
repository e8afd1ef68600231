//! tapwatch: a passive network anomaly-detection sensor for IoT and OT networks.
//!
//! The pipeline, one module per stage, each with one output type:
//!
//! ```text
//! capture (RawFrame, borrowed) -> decode (PacketSummary) -> flow (FlowEvent: started,
//! reassembled app data -> proto events, FlowRecord) -> detect (Finding) -> alert (EVE JSON)
//! ```
//!
//! Time comes from packet timestamps only ([`time`]). Every table and buffer is capped and
//! counts its evictions. [`app`] wires the stages; `main.rs` only parses arguments.
#![deny(unsafe_code)]

pub mod alert;
pub mod analysis;
#[cfg(feature = "analytics")]
pub mod analytics;
pub mod app;
pub mod capture;
pub mod cli;
pub mod decode;
pub mod detect;
pub mod device;
pub mod fast;
pub mod flow;
pub mod pipeline;
pub mod privilege;
pub mod proto;
pub mod settings;
pub mod stats;
pub mod time;
