//! Wiring: builds the stages from validated settings, runs them over the inputs, and writes the
//! final statistics. `main.rs` only parses arguments and maps the result to an exit code.

use crate::alert::{flow_event, Alerter, EveWriter};
use crate::analysis::{Analysis, Learning};
use crate::capture::file::{CaptureError, CaptureFile, Next};
use crate::capture::RawFrame;
use crate::decode::Net;
use crate::decode::{self, Decoded, Decoder};
use crate::detect::learned::Model;
use crate::detect::rules::{RuleError, RuleSet};
use crate::detect::Finding;
use crate::flow::{FlowEvent, FlowTable};
use crate::proto::{Analyzer, ProtoEvent};
use crate::settings::{ConfigError, Settings};
use crate::stats::Stats;
use crate::time::Timestamp;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Done,
    Interrupted,
}

/// Errors that stop a run, by exit code.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// Bad configuration, rules, model or input (exit 2).
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("{0}")]
    Rules(#[from] RuleError),
    #[error("{0}")]
    Capture(#[from] CaptureError),
    #[error("{0}")]
    Usage(String),
    /// Failure while running (exit 1).
    #[error("{0}")]
    Runtime(String),
}

impl AppError {
    pub fn exit_code(&self) -> u8 {
        match self {
            AppError::Runtime(_) => 1,
            _ => 2,
        }
    }
}

/// Loads the rules: an explicit directory, else `./rules` when present, else the built-in set.
pub fn load_rules(dir: Option<&Path>) -> Result<RuleSet, RuleError> {
    match dir {
        Some(d) => RuleSet::load_dir(d),
        None if Path::new("rules").is_dir() => RuleSet::load_dir(Path::new("rules")),
        None => RuleSet::embedded(),
    }
}

/// What a worker hands to the analysis stage: flow starts, application events, flow records and
/// the packets that belong to no flow (ARP). All owned, so they can cross threads in batches; the
/// flow table writes them in place (no conversion, no move).
pub type Emitted = FlowEvent<ProtoEvent>;

/// Time spent per stage (bench mode).
#[derive(Clone, Copy, Debug, Default)]
pub struct StageTimes {
    pub decode: Duration,
    pub flow: Duration,
    pub analysis: Duration,
}

/// Packet-time clock: due once per second of packet time. Whoever sees every packet (the only
/// worker, or the reader in front of several) owns it and ticks the flow tables.
#[derive(Clone, Copy, Debug, Default)]
pub struct Clock {
    next: Timestamp,
}

impl Clock {
    /// True when `ts` enters a new second of packet time (the flow tables must tick first).
    pub fn due(&mut self, ts: Timestamp) -> bool {
        if ts >= self.next {
            self.next = Timestamp::from_secs(ts.secs() + 1);
            true
        } else {
            false
        }
    }
}

/// Tails up to this many events are put in order in place (a stable insertion sort, no
/// allocation): a packet that evicts a flow to make room for its own gives three or four.
const ORDER_IN_PLACE: usize = 16;

/// Orders the events of one packet (or tick), `v[from..]`, by flow id, keeping each flow's own
/// order, so that the order does not depend on how flows are sharded over workers. A few
/// events are sorted in place; more, by sorting small keys and moving each event once (events
/// are large). The common case, already in order, moves nothing.
fn order_events(v: &mut Vec<Emitted>, from: usize) {
    let Some(tail) = v.get_mut(from..) else {
        return;
    };
    if tail.len() < 2 || tail.is_sorted_by_key(Emitted::order_key) {
        return;
    }
    if tail.len() <= ORDER_IN_PLACE {
        tail.sort_by_key(Emitted::order_key);
        return;
    }
    let mut keys: Vec<(u64, u32)> = tail
        .iter()
        .enumerate()
        .map(|(i, e)| (e.order_key(), i as u32))
        .collect();
    keys.sort_unstable();
    let mut slots: Vec<Option<Emitted>> = v.drain(from..).map(Some).collect();
    v.extend(
        keys.iter()
            .filter_map(|&(_, i)| slots.get_mut(i as usize).and_then(Option::take)),
    );
}

impl FlowEvent<ProtoEvent> {
    /// The key of [`order_events`]: the flow id (0 for packets outside flows).
    pub fn order_key(&self) -> u64 {
        match self {
            Emitted::Started(m) => m.id.0,
            Emitted::App { meta, .. } | Emitted::Activity { meta, .. } => meta.id.0,
            Emitted::Flow(r) => r.meta.id.0,
            Emitted::Packet(_) => 0,
        }
    }
}

/// One worker's stages: decode -> flow (+ protocol analyzers). Owns its flow table shard.
pub struct Worker {
    pub decoder: Decoder,
    pub flows: FlowTable<Analyzer>,
    pub app_events: u64,
    /// Protocol anomalies by name (`mqtt.oversized_packet`...), before alert suppression.
    pub anomalies: std::collections::BTreeMap<&'static str, u64>,
    pub timing: Option<StageTimes>,
}

/// A worker's counters, as the `stats` event reports them (summed over workers).
#[derive(Clone, Debug, Default)]
pub struct WorkerCounters {
    pub decode: crate::decode::DecodeCounters,
    pub flow: crate::flow::FlowCounters,
    pub flows_active: u64,
    pub app_events: u64,
    pub anomalies: std::collections::BTreeMap<&'static str, u64>,
}

impl WorkerCounters {
    /// Adds another worker's counters.
    pub fn merge(&mut self, o: &WorkerCounters) {
        self.decode.merge(&o.decode);
        self.flow.merge(&o.flow);
        self.flows_active += o.flows_active;
        self.app_events += o.app_events;
        for (k, v) in &o.anomalies {
            *self.anomalies.entry(k).or_default() += v;
        }
    }
}

impl Worker {
    pub fn new(settings: &Settings) -> Self {
        Worker {
            decoder: Decoder::new(),
            flows: FlowTable::with_home(settings.flow, settings.home_net.clone()),
            app_events: 0,
            anomalies: Default::default(),
            timing: None,
        }
    }

    /// The counters for a `stats` event.
    pub fn counters(&self) -> WorkerCounters {
        WorkerCounters {
            decode: self.decoder.counters.clone(),
            flow: self.flows.counters,
            flows_active: self.flows.len() as u64,
            app_events: self.app_events,
            anomalies: self.anomalies.clone(),
        }
    }

    /// Advances packet time (flow expiry and activity windows).
    pub fn tick(&mut self, now: Timestamp, out: &mut Vec<Emitted>) {
        let from = out.len();
        self.flows.tick(now, out);
        self.hand_on(out, from);
    }

    /// [`Worker::tick`] in pieces of up to `max` flows; true while some remain (call again
    /// before the next frame).
    pub fn tick_some(&mut self, now: Timestamp, out: &mut Vec<Emitted>, max: usize) -> bool {
        let from = out.len();
        let more = self.flows.tick_some(now, out, max);
        self.hand_on(out, from);
        more
    }

    /// Runs one frame through the stages. The owner of the [`Clock`] ticks the worker before
    /// frames that enter a new second.
    pub fn frame(&mut self, frame: &RawFrame<'_>, out: &mut Vec<Emitted>) {
        let from = out.len();
        let t0 = self.timing.map(|_| Instant::now());
        let d = self.decoder.decode(frame);
        let t1 = t0.map(|_| Instant::now());
        if let Decoded::Packet(p) = d {
            if matches!(p.net, Net::Arp(_)) {
                out.push(Emitted::Packet(p));
            } else {
                // ICMP packets also go to the analysis stage: echo sweeps need the ICMP type,
                // which flow records do not keep.
                if matches!(p.transport(), Some(decode::Transport::Icmp { .. })) {
                    out.push(Emitted::Packet(p));
                }
                self.flows.observe(&p, decode::payload(frame, &p), out);
                self.hand_on(out, from);
            }
            if let (Some(t), Some(t1)) = (self.timing.as_mut(), t1) {
                t.flow += t1.elapsed();
            }
        }
        if let (Some(t), Some(t0), Some(t1)) = (self.timing.as_mut(), t0, t1) {
            t.decode += t1 - t0;
        }
    }

    /// The events of one frame, tick or drain chunk, `out[from..]`, as they leave the worker:
    /// in flow order (see [`order_events`]), application events and anomalies counted.
    fn hand_on(&mut self, out: &mut Vec<Emitted>, from: usize) {
        order_events(out, from);
        for ev in out.get(from..).unwrap_or(&[]) {
            if let FlowEvent::App { event, .. } = ev {
                self.app_events += 1;
                if let ProtoEvent::Anomaly { name, .. } = event {
                    *self.anomalies.entry(*name).or_default() += 1;
                }
            }
        }
    }

    /// End of input: every flow ends.
    pub fn finish(&mut self, out: &mut Vec<Emitted>) {
        let from = out.len();
        self.flows.drain(out);
        self.hand_on(out, from);
    }

    /// End of input in pieces: ends up to `max` flows (in flow id order); true while flows
    /// remain. Keeps the end of a large table from making a burst of events in memory.
    pub fn finish_some(&mut self, out: &mut Vec<Emitted>, max: usize) -> bool {
        let from = out.len();
        let more = self.flows.drain_some(out, max);
        self.hand_on(out, from);
        more
    }

    /// Latest packet time seen.
    pub fn now(&self) -> Timestamp {
        self.flows.now()
    }
}

/// Flows handled per piece when many end or report at once (a tick, the end of input).
pub const DRAIN_CHUNK: usize = 4096;

/// Output options of a run.
#[derive(Clone, Debug, Default)]
pub struct OutputOptions {
    /// `None` = standard output.
    pub path: Option<PathBuf>,
    /// Write `flow` events.
    pub flows: bool,
    /// Discard all output (bench).
    pub discard: bool,
    /// Rotation of the output file (`path` only).
    pub rotation: crate::alert::Rotation,
}

/// Opens the output of a run (a file is appended to, and rotated as asked).
fn open_writer(out: &OutputOptions) -> Result<EveWriter, AppError> {
    Ok(if out.discard {
        EveWriter::new(Box::new(std::io::sink()), "(discarded)")
    } else {
        match &out.path {
            Some(p) => EveWriter::to_file(p, out.rotation)
                .map_err(|e| AppError::Usage(format!("{}: {e}", p.display())))?,
            None => EveWriter::new(Box::new(std::io::stdout()), "standard output"),
        }
    })
}

/// The back end of the pipeline: the analysis stage, alert policy and the one writer. Fed with
/// the workers' events in a deterministic order.
pub struct Back {
    pub analysis: Analysis,
    findings: Vec<Finding>,
    new_devices: Vec<crate::device::DeviceProfile>,
    alerter: Alerter,
    pub writer: EveWriter,
    emit_flows: bool,
    pub stats: Stats,
}

impl Back {
    pub fn new(
        settings: &Settings,
        rules: RuleSet,
        out: &OutputOptions,
        model: Option<Model>,
        learning: Learning,
    ) -> Result<Self, AppError> {
        let writer = open_writer(out)?;
        let mut analysis = Analysis::new(settings, &rules, model, learning)?;
        analysis.devices.log_flows = out.flows;
        Ok(Back {
            analysis,
            findings: Vec::with_capacity(16),
            new_devices: Vec::new(),
            alerter: Alerter::new(rules, settings.alert.default_suppress_secs),
            writer,
            emit_flows: out.flows,
            stats: Stats::default(),
        })
    }

    /// The back end of a replay.
    pub fn for_replay(
        settings: &Settings,
        rules: RuleSet,
        opts: &ReplayOptions,
    ) -> Result<Self, AppError> {
        Back::new(
            settings,
            rules,
            &opts.output,
            opts.model.clone(),
            opts.learning,
        )
    }

    /// One worker event: analysis, then alerts and the events to write.
    pub fn consume(&mut self, e: &Emitted) {
        self.analysis.on_event(
            e,
            &mut self.alerter,
            &mut self.findings,
            &mut self.new_devices,
        );
        if let Emitted::Flow(r) = e {
            if self.emit_flows {
                self.writer.write(&flow_event(r));
            }
        }
        self.write_findings();
    }

    fn write_findings(&mut self) {
        // Most events bring nothing to write: no drain to set up and tear down then.
        if self.new_devices.is_empty()
            && self.findings.is_empty()
            && self.analysis.flow_windows.is_empty()
        {
            return;
        }
        for d in self.new_devices.drain(..) {
            self.writer.write(&crate::alert::device_event(&d));
        }
        if !self.analysis.flow_windows.is_empty() {
            let secs = self.analysis.devices.window_secs();
            for r in self.analysis.flow_windows.drain(..) {
                self.writer
                    .write(&crate::alert::flow_window_event(&r, secs));
            }
        }
        for f in self.findings.drain(..) {
            if let Some(v) = self.alerter.alert(&f) {
                self.writer.write(&v);
            }
        }
    }

    /// End of input for the detectors: what is still open is reported and written a step at
    /// a time, so that the findings of many open episodes are not all held at once.
    pub fn finish_detectors(&mut self) {
        loop {
            let more =
                self.analysis
                    .finish_some(&mut self.findings, &mut self.new_devices, FINISH_STEP);
            self.write_findings();
            if !more {
                break;
            }
        }
    }

    /// Writes a `stats` event with the workers' counters.
    pub fn write_stats(&mut self, now: Timestamp, first: Option<Timestamp>, w: &WorkerCounters) {
        self.stats.decode = w.decode.clone();
        self.stats.flow = w.flow;
        self.stats.flows_active = w.flows_active;
        self.stats.alerts = self.alerter.counters.clone();
        self.stats.alerts_suppressed = self.alerter.suppressed();
        self.stats.app_events = w.app_events;
        self.stats.app_anomalies = w.anomalies.clone();
        let a = &self.analysis;
        self.stats.devices = a.devices.counters;
        self.stats.state_evicted = [
            ("scan_sources", a.detectors.scan.evicted),
            ("login_episodes", a.detectors.protocol.evicted),
            ("lateral_tracking", a.detectors.lateral.evicted),
            ("alert_suppression", self.alerter.suppression_evicted()),
        ]
        .into_iter()
        .collect();
        let uptime = now.secs_since(first.unwrap_or(now));
        let ev = self.stats.event(now, uptime);
        self.writer.write(&ev);
        self.writer.flush();
    }

    /// Flushes and reports a write error.
    pub fn close(&mut self) -> Result<(), AppError> {
        self.writer.flush();
        match self.writer.take_error() {
            Some(e) => Err(AppError::Runtime(e.to_string())),
            None => Ok(()),
        }
    }
}

/// Open brute-force episodes reported and written per step at the end of input.
const FINISH_STEP: usize = 1024;

/// The single-threaded engine hands events to the back end after this many frames, or
/// [`BATCH_EVENTS`] events, whichever comes first: each stage's code and tables stay warm in
/// the cache over a run of frames.
const BATCH_FRAMES: usize = 256;
const BATCH_EVENTS: usize = 256;

/// The single-threaded engine: one worker, ticked by its own clock, and the back end.
pub struct Engine {
    pub worker: Worker,
    pub back: Back,
    /// Events of the frames since the last hand-over to the back end.
    emitted: Vec<Emitted>,
    /// Frames since that hand-over.
    pending_frames: usize,
    /// Gives back the pages of a mapped input behind the frame being read.
    release: Option<crate::capture::file::Release>,
    stats_interval: u64,
    next_stats: Option<Timestamp>,
    pub first_ts: Option<Timestamp>,
    clock: Clock,
}

impl Engine {
    pub fn new(
        settings: &Settings,
        rules: RuleSet,
        out: &OutputOptions,
        model: Option<Model>,
        learning: Learning,
    ) -> Result<Self, AppError> {
        let back = Back::new(settings, rules, out, model, learning)?;
        Ok(Engine::from_back(settings, back))
    }

    /// An engine (one worker, inline) around an opened back end.
    pub fn from_back(settings: &Settings, back: Back) -> Self {
        Engine {
            worker: Worker::new(settings),
            back,
            emitted: Vec::with_capacity(BATCH_EVENTS + 64),
            pending_frames: 0,
            release: None,
            stats_interval: 0,
            next_stats: None,
            first_ts: None,
            clock: Clock::default(),
        }
    }

    /// Writes a `stats` event every `secs` seconds of packet time (0 = only at the end).
    pub fn set_stats_interval(&mut self, secs: u64) {
        self.stats_interval = secs;
    }

    pub fn frame(&mut self, frame: &RawFrame<'_>) {
        if self.first_ts.is_none() {
            self.first_ts = Some(frame.ts);
        }
        if self.clock.due(frame.ts) {
            // Events of earlier frames first, then the tick's, in chunks.
            self.write_emitted();
            while self
                .worker
                .tick_some(frame.ts, &mut self.emitted, DRAIN_CHUNK)
            {
                self.write_emitted();
            }
            self.write_emitted();
        }
        self.worker.frame(frame, &mut self.emitted);
        self.pending_frames += 1;
        if self.pending_frames >= BATCH_FRAMES || self.emitted.len() >= BATCH_EVENTS {
            self.write_emitted();
        }
        if self.stats_interval > 0 {
            let now = self.worker.now();
            match self.next_stats {
                None => self.next_stats = Some(now.plus_secs(self.stats_interval)),
                Some(t) if now >= t => {
                    self.write_stats(now);
                    self.next_stats = Some(now.plus_secs(self.stats_interval));
                }
                _ => {}
            }
        }
    }

    /// Hands the pending events (each frame's or chunk's in order) to the back end.
    fn write_emitted(&mut self) {
        self.pending_frames = 0;
        if self.emitted.is_empty() {
            return;
        }
        let t0 = self.worker.timing.map(|_| Instant::now());
        // Read in place (events are large), then dropped together.
        for e in &self.emitted {
            self.back.consume(e);
        }
        self.emitted.clear();
        if let (Some(t), Some(t0)) = (self.worker.timing.as_mut(), t0) {
            t.analysis += t0.elapsed();
        }
    }

    /// Hands on the events of the frames seen so far and flushes the output (the input is
    /// idle, or a second has passed on a live link).
    pub fn flush(&mut self) {
        self.write_emitted();
        self.back.writer.flush();
    }

    pub fn write_stats(&mut self, now: Timestamp) {
        self.write_emitted();
        let c = self.worker.counters();
        self.back.write_stats(now, self.first_ts, &c);
    }

    /// Ends all flows, writes the final stats and flushes.
    pub fn finish(&mut self) -> Result<(), AppError> {
        self.write_emitted();
        while self.worker.finish_some(&mut self.emitted, DRAIN_CHUNK) {
            self.write_emitted();
        }
        self.write_emitted();
        self.back.finish_detectors();
        let now = self.worker.now();
        self.write_stats(now);
        self.back.close()
    }
}

/// Installs SIGINT/SIGTERM handling: the first signal sets the returned flag (the run stops
/// cleanly), a second one exits at once with 130.
pub fn stop_flag() -> Arc<AtomicBool> {
    let flag = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        // Order matters: the conditional exit fires only if the flag was already set.
        let _ = signal_hook::flag::register_conditional_shutdown(sig, 130, Arc::clone(&flag));
        let _ = signal_hook::flag::register(sig, Arc::clone(&flag));
    }
    flag
}

/// Progress line on standard error (only when it is a terminal).
struct Progress {
    on: bool,
    started: Instant,
    last: Instant,
}

impl Progress {
    fn new(on: bool) -> Self {
        let now = Instant::now();
        Progress {
            on: on && std::io::stderr().is_terminal(),
            started: now,
            last: now,
        }
    }
    fn tick(&mut self, name: &str, done: u64, total: Option<u64>, packets: u64) {
        if !self.on || self.last.elapsed() < Duration::from_millis(250) {
            return;
        }
        self.last = Instant::now();
        let secs = self.started.elapsed().as_secs_f64().max(1e-9);
        let pct = total.map_or(String::new(), |t| {
            format!(" {:5.1}%", 100.0 * done as f64 / t.max(1) as f64)
        });
        eprint!(
            "\r{name}:{pct} {:.1} MB, {packets} packets, {:.0} packets/s   ",
            done as f64 / 1e6,
            packets as f64 / secs
        );
    }
    fn done(&self) {
        if self.on {
            eprint!("\r{:80}\r", "");
        }
    }
}

/// Options of `replay` and `bench`.
#[derive(Clone, Debug, Default)]
pub struct ReplayOptions {
    pub inputs: Vec<PathBuf>,
    pub output: OutputOptions,
    pub progress: bool,
    pub quiet: bool,
    pub bench: bool,
    pub model: Option<Model>,
    pub learning: Learning,
    /// Worker threads (1 = everything on one thread).
    pub workers: usize,
}

/// Result of a replay.
pub struct ReplayReport {
    pub outcome: Outcome,
    pub stats: Stats,
    pub wall: Duration,
    pub times: Option<StageTimes>,
    /// The analysis stage at the end (inventory, learner).
    pub analysis: Analysis,
    /// Packet time of the first and last packet.
    pub first_ts: Option<Timestamp>,
    pub last_ts: Timestamp,
    pub workers: usize,
    /// CPU time per thread (with workers; one worker runs on one thread).
    pub cpu: Option<crate::stats::ThreadCpu>,
}

/// What a replay's input loop reports.
pub struct InputResult {
    pub outcome: Outcome,
    pub capture: crate::capture::CaptureCounters,
    pub truncated: Vec<(String, u64)>,
}

/// The consumer of a replay's frames.
pub trait FrameSink {
    /// A new input begins; `map` is its memory map when it has one.
    fn input(&mut self, _map: Option<std::sync::Arc<memmap2::Mmap>>) {}
    fn frame(&mut self, frame: &RawFrame<'_>);
    /// Packets handed on so far (for progress).
    fn packets(&self) -> u64;
    /// The output was closed by its reader: stop quietly.
    fn output_closed(&self) -> bool;
    /// The input has nothing to read for now (a pipe): hand on what is pending.
    fn idle(&mut self) {}
}

/// Reads every input in order (one timeline), handing frames to `sink`; stops on a signal or
/// when the output is closed.
pub fn read_inputs(
    files: Vec<CaptureFile>,
    sink: &mut dyn FrameSink,
    progress: bool,
    stop: &AtomicBool,
) -> InputResult {
    let mut progress = Progress::new(progress);
    let mut r = InputResult {
        outcome: Outcome::Done,
        capture: Default::default(),
        truncated: Vec::new(),
    };
    'files: for mut f in files {
        let total = f.mapped_bytes().map(|m| m.len() as u64);
        sink.input(f.shared_map());
        let mut n: u64 = 0;
        loop {
            n += 1;
            if n.is_multiple_of(64) && stop.load(Ordering::Relaxed) {
                r.outcome = Outcome::Interrupted;
                capture_add(&mut r.capture, &f.counters);
                break 'files;
            }
            if n.is_multiple_of(4096) {
                progress.tick(f.path(), f.counters.file_bytes, total, sink.packets());
                if sink.output_closed() {
                    capture_add(&mut r.capture, &f.counters);
                    break 'files;
                }
            }
            match f.next_frame() {
                Ok(Next::Frame(fr)) => sink.frame(&fr),
                Ok(Next::End) => break,
                Ok(Next::Truncated { offset, missing }) => {
                    eprintln!(
                        "tapwatch: {}: file cut mid-record at byte {offset} ({missing} bytes missing); processed up to the cut",
                        f.path()
                    );
                    r.truncated.push((f.path().to_string(), offset));
                    break;
                }
                Err(e) if crate::capture::stream::is_idle(&e) => {
                    // A pipe with nothing to read for now: honour a stop, show what we have.
                    if stop.load(Ordering::Relaxed) {
                        r.outcome = Outcome::Interrupted;
                        capture_add(&mut r.capture, &f.counters);
                        break 'files;
                    }
                    sink.idle();
                    if sink.output_closed() {
                        capture_add(&mut r.capture, &f.counters);
                        break 'files;
                    }
                }
                Err(e) => {
                    // Corrupt structure mid-file: report, keep what was processed, go on with the
                    // next input.
                    eprintln!("tapwatch: {e}; skipping the rest of this input");
                    r.truncated
                        .push((f.path().to_string(), f.counters.file_bytes));
                    break;
                }
            }
        }
        capture_add(&mut r.capture, &f.counters);
    }
    progress.done();
    r
}

impl FrameSink for Engine {
    fn input(&mut self, map: Option<std::sync::Arc<memmap2::Mmap>>) {
        self.release = map.map(crate::capture::file::Release::new);
    }
    fn frame(&mut self, frame: &RawFrame<'_>) {
        Engine::frame(self, frame);
        // Every frame before this one is done with (events own their data).
        if let Some(r) = self.release.as_mut() {
            if let Some(at) = r.offset_of(frame.bytes) {
                r.upto(at);
            }
        }
    }
    fn packets(&self) -> u64 {
        self.worker.decoder.counters.packets
    }
    fn output_closed(&self) -> bool {
        self.back.writer.closed
    }
    fn idle(&mut self) {
        self.flush();
    }
}

/// Replays capture files as one timeline, with `opts.workers` workers (1: all inline).
pub fn replay(
    settings: &Settings,
    rules: RuleSet,
    opts: &ReplayOptions,
    stop: &AtomicBool,
) -> Result<ReplayReport, AppError> {
    // Open everything first: a bad input is reported before any output is written.
    let mut files = Vec::with_capacity(opts.inputs.len());
    for p in &opts.inputs {
        files.push(crate::capture::stream::open_input(p)?);
    }
    if opts.workers > 1 {
        return crate::pipeline::replay_parallel(settings, rules, opts, files, stop);
    }
    let mut engine = Engine::from_back(settings, Back::for_replay(settings, rules, opts)?);
    if opts.bench {
        engine.worker.timing = Some(StageTimes::default());
    }
    let started = Instant::now();
    let input = read_inputs(files, &mut engine, opts.progress && !opts.quiet, stop);
    engine.back.stats.capture = input.capture;
    engine.back.stats.truncated_inputs = input.truncated;
    engine.finish()?;
    let wall = started.elapsed();
    report_end(opts, &engine.back, wall);
    let last_ts = engine.worker.now();
    Ok(ReplayReport {
        outcome: input.outcome,
        stats: engine.back.stats.clone(),
        wall,
        times: engine.worker.timing,
        first_ts: engine.first_ts,
        last_ts,
        workers: 1,
        analysis: engine.back.analysis,
        cpu: None,
    })
}

/// The summary and the analysis notes on standard error.
pub fn report_end(opts: &ReplayOptions, back: &Back, wall: Duration) {
    if !opts.quiet && !opts.bench {
        eprint!("{}", back.stats.summary(wall.as_secs_f64()));
    }
    if !opts.quiet {
        for n in &back.analysis.notes {
            eprintln!("tapwatch: {n}");
        }
    }
}

fn capture_add(a: &mut crate::capture::CaptureCounters, b: &crate::capture::CaptureCounters) {
    a.frames += b.frames;
    a.other_blocks += b.other_blocks;
    a.file_bytes += b.file_bytes;
}

/// Formats the `bench` report.
/// `peak_anon`: the run's peak anonymous memory ([`crate::stats::AnonPeak`]), if known.
/// `cores`: the cores the process may run on (its CPU affinity), to say how much of them the
/// threads used: with workers, the reader and the back end share the cores with the workers.
pub fn bench_report(r: &ReplayReport, peak_anon: Option<u64>, cores: usize) -> String {
    let secs = r.wall.as_secs_f64().max(1e-9);
    let pkts = r.stats.decode.packets;
    let bytes = r.stats.decode.bytes;
    let mut s = format!(
        "workers      {}\npackets      {pkts}\nbytes        {bytes}\nflows        {}\nalerts       {}\nwall time    {:.3} s\npackets/s    {:.0} ({:.2} Mpps)\nthroughput   {:.3} Gbit/s\n",
        r.workers,
        r.stats.flow.created,
        r.stats.alerts.written,
        secs,
        pkts as f64 / secs,
        pkts as f64 / secs / 1e6,
        bytes as f64 * 8.0 / secs / 1e9
    );
    if let Some(t) = r.times {
        let per = |d: Duration| d.as_nanos() as f64 / pkts.max(1) as f64;
        let staged = t.decode + t.flow + t.analysis;
        let other = r.wall.saturating_sub(staged);
        s += &format!(
            "per stage (ns/packet; timing adds overhead)\n  capture+other {:8.1}\n  decode        {:8.1}\n  flow+proto    {:8.1}\n  analysis      {:8.1}\n",
            per(other),
            per(t.decode),
            per(t.flow),
            per(t.analysis)
        );
    }
    if let Some(c) = &r.cpu {
        // Which thread bounds the run: the back end is one thread whatever the worker count.
        let share = |d: &Duration| {
            let t = d.as_secs_f64();
            format!("{t:.2} ({:.0} %)", 100.0 * t / secs)
        };
        let workers: Vec<String> = c.workers.iter().map(share).collect();
        s += &format!(
            "cpu (s)      reader {}, workers {}, back end {}\n",
            share(&c.reader),
            workers.join(" "),
            share(&c.back)
        );
        s += &c.cores_line(secs, cores);
        s.push('\n');
    }
    let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
    if let Some(rss) = crate::stats::peak_rss_bytes() {
        s += &format!("peak RSS     {:.1} MiB\n", mib(rss));
    }
    // The heap and stacks apart from the capture's mapped pages (given back as they are read).
    if let Some(anon) = peak_anon {
        s += &format!(
            "peak anon    {:.1} MiB (heap and stacks, sampled every 10 ms)\n",
            mib(anon)
        );
    }
    s
}

/// Loads a model: an explicit file, else `models/default.json` when present, else none.
pub fn load_model(path: Option<&Path>) -> Result<Option<Model>, AppError> {
    let p = match path {
        Some(p) => p.to_path_buf(),
        None => {
            let d = Path::new("models/default.json");
            if !d.is_file() {
                return Ok(None);
            }
            d.to_path_buf()
        }
    };
    Model::load(&p)
        .map(Some)
        .map_err(|e| AppError::Usage(e.to_string()))
}

fn sha256_file(p: &Path) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    if let Ok(mut f) = std::fs::File::open(p) {
        use std::io::Read;
        let mut buf = vec![0u8; 1 << 16];
        while let Ok(n) = f.read(&mut buf) {
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Replays captures on one worker with the output discarded (for `train` and `inventory`).
fn quiet_replay(
    settings: &Settings,
    rules: RuleSet,
    files: &[PathBuf],
    learning: Learning,
    stop: &AtomicBool,
) -> Result<ReplayReport, AppError> {
    let opts = ReplayOptions {
        inputs: files.to_vec(),
        output: OutputOptions {
            discard: true,
            ..Default::default()
        },
        progress: true,
        quiet: true,
        bench: false,
        model: None,
        learning,
        workers: 1,
    };
    replay(settings, rules, &opts, stop)
}

/// Replays captures with every window gathered (no detection output).
pub fn collect(
    settings: &Settings,
    rules: RuleSet,
    files: &[PathBuf],
    stop: &AtomicBool,
) -> Result<ReplayReport, AppError> {
    quiet_replay(settings, rules, files, Learning::Collect, stop)
}

/// `tapwatch train`.
pub fn train(
    settings: &Settings,
    rules: RuleSet,
    a: &crate::cli::TrainArgs,
    stop: &AtomicBool,
) -> Result<Outcome, AppError> {
    use crate::detect::learned::{self, Calibration, CaptureRef, Provenance, ScorerKind};
    let kind = ScorerKind::parse(&a.kind)
        .ok_or_else(|| AppError::Usage(format!("--kind {:?}: expected kmeans or gmm", a.kind)))?;
    if !(0.5..1.0).contains(&a.quantile) || a.margin < 1.0 {
        return Err(AppError::Usage(
            "--quantile must be in [0.5, 1) and --margin at least 1".into(),
        ));
    }
    let g = gather(settings, rules, a, stop)?;
    let learner = &g.learner;
    let captures = a
        .files
        .iter()
        .map(|p| CaptureRef {
            path: p.display().to_string(),
            sha256: sha256_file(p),
            packets: 0,
        })
        .collect::<Vec<_>>();
    let prov = Provenance {
        captures,
        first_packet: g.first.rfc3339().to_string(),
        last_packet: g.last.rfc3339().to_string(),
        trained_at: wall_clock_rfc3339(),
        tapwatch_version: env!("CARGO_PKG_VERSION").into(),
        windows: learner.all.len() as u64,
        devices: 0,
    };
    let (mut model, scores) = learned::train(
        learner,
        settings.device.window_secs,
        kind,
        Calibration {
            quantile: a.quantile,
            margin: a.margin,
        },
        prov,
    )
    .map_err(AppError::Runtime)?;
    model.provenance.devices = model.baselines.devices.len() as u64;
    if let Some(c) = model.provenance.captures.first_mut() {
        c.packets = g.packets;
    }
    model
        .save(&a.output)
        .map_err(|e| AppError::Runtime(e.to_string()))?;
    if let (Some(eval), Some(truth)) = (&a.evaluate, &a.truth) {
        let rules = load_rules(a.common.rules.as_deref())?;
        let e = collect(settings, rules, std::slice::from_ref(eval), stop)?;
        let windows = e
            .analysis
            .learner
            .as_ref()
            .and_then(|l| l.kept.clone())
            .unwrap_or_default();
        let labels = label_windows(&windows, truth, settings.device.window_secs)?;
        let ev = learned::evaluate(&model, &windows, &labels);
        println!(
            "model={} windows={} attack_windows={} flagged={} true_flagged={} precision={:.3} recall={:.3} auc={:.3}",
            model.scorer.name(),
            ev.windows,
            ev.positives,
            ev.flagged,
            ev.true_flagged,
            ev.precision,
            ev.recall,
            ev.auc
        );
    }
    let above = scores.iter().filter(|s| **s > model.threshold).count();
    eprintln!(
        "tapwatch: trained {} on {} windows of {} devices ({} {}, {} .. {}); threshold {:.3} ({} of {} training windows above it); wrote {}",
        model.scorer.name(),
        learner.all.len(),
        model.baselines.devices.len(),
        g.packets,
        if a.flows { "flow log rows" } else { "packets" },
        model.provenance.first_packet,
        model.provenance.last_packet,
        model.threshold,
        above,
        scores.len(),
        a.output.display()
    );
    if learner.devices_skipped > 0 {
        eprintln!(
            "tapwatch: {} windows of devices beyond device.max_devices ({}) trained the model but made no baseline",
            learner.devices_skipped, settings.device.max_devices
        );
    }
    Ok(g.outcome)
}

/// What training learns from: windows gathered from captures or from a flow log.
pub struct Gathered {
    pub learner: crate::device::baseline::Learner,
    /// Packets (captures) or rows (flow log) read.
    pub packets: u64,
    pub first: Timestamp,
    pub last: Timestamp,
    pub outcome: Outcome,
}

/// Gathers the training windows of `tapwatch train` (captures, or flow logs with `--flows`).
pub fn gather(
    settings: &Settings,
    rules: RuleSet,
    a: &crate::cli::TrainArgs,
    stop: &AtomicBool,
) -> Result<Gathered, AppError> {
    if a.flows {
        return gather_flow_log(settings, &a.files);
    }
    let mut r = collect(settings, rules, &a.files, stop)?;
    let Some(learner) = r.analysis.learner.take() else {
        return Err(AppError::Runtime("no learner".into()));
    };
    Ok(Gathered {
        learner,
        packets: r.stats.decode.packets,
        first: r.first_ts.unwrap_or_default(),
        last: r.last_ts,
        outcome: r.outcome,
    })
}

#[cfg(feature = "analytics")]
fn gather_flow_log(settings: &Settings, files: &[PathBuf]) -> Result<Gathered, AppError> {
    let (learner, f) = crate::analytics::learner_from_flow_log(files, &settings.device)
        .map_err(|e| AppError::Usage(e.to_string()))?;
    if f.window_secs != settings.device.window_secs {
        return Err(AppError::Usage(format!(
            "the flow log has {} s windows, the config {} s: train with the window length the log was written with",
            f.window_secs, settings.device.window_secs
        )));
    }
    Ok(Gathered {
        learner,
        packets: f.rows,
        first: f.first,
        last: f.last,
        outcome: Outcome::Done,
    })
}

#[cfg(not(feature = "analytics"))]
fn gather_flow_log(_: &Settings, _: &[PathBuf]) -> Result<Gathered, AppError> {
    Err(AppError::Usage(NO_ANALYTICS.into()))
}

/// The message for analytics commands in a build without them.
pub const NO_ANALYTICS: &str = "this tapwatch was built without the `analytics` feature (polars): rebuild with `cargo build --release --features analytics`";

/// `tapwatch report`.
#[cfg(feature = "analytics")]
pub fn report(a: &crate::cli::ReportArgs) -> Result<Outcome, AppError> {
    let r = crate::analytics::report(&a.files, &a.output_dir)
        .map_err(|e| AppError::Usage(e.to_string()))?;
    eprintln!(
        "tapwatch: report of {} devices and {} alerts in {}",
        r.devices,
        r.alerts,
        a.output_dir.display()
    );
    for f in &r.files {
        println!("{}", f.display());
    }
    Ok(Outcome::Done)
}

/// `tapwatch report` in a build without analytics.
#[cfg(not(feature = "analytics"))]
pub fn report(_: &crate::cli::ReportArgs) -> Result<Outcome, AppError> {
    Err(AppError::Usage(NO_ANALYTICS.into()))
}

/// Wall-clock time for provenance only (never for detection).
fn wall_clock_rfc3339() -> String {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    Timestamp::from_secs(d.as_secs()).rfc3339().to_string()
}

/// `tapwatch inventory`.
pub fn inventory(
    settings: &Settings,
    rules: RuleSet,
    files: &[PathBuf],
    json: bool,
    stop: &AtomicBool,
) -> Result<Outcome, AppError> {
    let r = quiet_replay(settings, rules, files, Learning::Frozen, stop)?;
    let mut out = std::io::stdout().lock();
    let devs = r.analysis.devices.inventory();
    let res = if json {
        devs.iter().try_for_each(|d| {
            serde_json::to_writer(&mut out, d)
                .map_err(std::io::Error::from)
                .and_then(|_| out.write_all(b"\n"))
        })
    } else {
        (|| {
            writeln!(
                out,
                "{:<19} {:<17} {:<26} {:<20} {:<24} SERVICES OFFERED / MQTT / SNI",
                "DEVICE", "MAC", "IPS", "FIRST SEEN", "PROTOCOLS"
            )?;
            for d in &devs {
                let ips: Vec<String> = d.ips.items.iter().map(|i| i.to_string()).collect();
                let mut extra: Vec<String> = d.services_offered.items.iter().cloned().collect();
                extra.extend(
                    d.mqtt_client_ids
                        .items
                        .iter()
                        .map(|c| format!("client_id={c}")),
                );
                extra.extend(
                    d.mqtt_topics
                        .items
                        .iter()
                        .take(3)
                        .map(|t| format!("topic={t}")),
                );
                extra.extend(d.tls_sni.items.iter().take(3).map(|t| format!("sni={t}")));
                writeln!(
                    out,
                    "{:<19} {:<17} {:<26} {:<20} {:<24} {}",
                    d.id.to_string(),
                    d.mac.clone().unwrap_or_else(|| "-".into()),
                    ips.join(","),
                    d.first_seen.rfc3339().to_string().get(..19).unwrap_or(""),
                    d.protocols
                        .items
                        .iter()
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(","),
                    extra.join(" ")
                )?;
            }
            Ok(())
        })()
    };
    match res {
        Ok(()) => Ok(r.outcome),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(r.outcome),
        Err(e) => Err(AppError::Runtime(format!("standard output: {e}"))),
    }
}

/// Labels device windows from a lab truth file: true when the window's device is the source
/// of an attack-phase event that overlaps the window.
pub fn label_windows(
    windows: &[crate::device::WindowVector],
    truth: &Path,
    window_secs: u64,
) -> Result<Vec<bool>, AppError> {
    let text = std::fs::read_to_string(truth)
        .map_err(|e| AppError::Usage(format!("{}: {e}", truth.display())))?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| AppError::Usage(format!("{}: {e}", truth.display())))?;
    let attack_start = v["phases"]
        .as_array()
        .and_then(|p| p.iter().find(|x| x["name"] == "attack"))
        .and_then(|p| p["start"].as_f64())
        .unwrap_or(f64::MAX);
    let events: Vec<(std::net::IpAddr, f64, f64)> = v["events"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|e| {
                    let src = e["src"].as_str()?.parse().ok()?;
                    let start = e["start"].as_f64()?;
                    let end = e["end"].as_f64()?;
                    (start >= attack_start).then_some((src, start, end))
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(windows
        .iter()
        .map(|w| {
            let ws = w.window.as_secs_f64();
            let we = ws + window_secs as f64;
            w.ip.is_some_and(|ip| {
                events
                    .iter()
                    .any(|(src, s, e)| *src == ip && *s < we && *e >= ws)
            })
        })
        .collect())
}
