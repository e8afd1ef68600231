//! Wiring: builds the stages from validated settings, runs them over the inputs, and writes the
//! final statistics. `main.rs` only parses arguments and maps the result to an exit code.

use crate::alert::{flow_event, Alerter, EveWriter};
use crate::capture::file::{CaptureError, CaptureFile, Next};
use crate::capture::RawFrame;
use crate::decode::{self, Decoded, Decoder};
use crate::decode::{Net, PacketSummary};
use crate::detect::rules::{RuleError, RuleSet};
use crate::detect::{Detectors, Finding};
use crate::flow::{Direction, FlowEvent, FlowMeta, FlowRecord, FlowTable};
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
/// the packets that belong to no flow (ARP). All owned, so they can cross threads in batches.
#[derive(Debug)]
pub enum Emitted {
    Started(FlowMeta),
    App {
        meta: FlowMeta,
        ts: Timestamp,
        dir: Direction,
        event: ProtoEvent,
    },
    /// A flow's packets and bytes in one activity window.
    Activity {
        meta: FlowMeta,
        window: Timestamp,
        fwd: (u64, u64),
        rev: (u64, u64),
    },
    Flow(FlowRecord),
    Packet(PacketSummary),
}

/// Time spent per stage (bench mode).
#[derive(Clone, Copy, Debug, Default)]
pub struct StageTimes {
    pub decode: Duration,
    pub flow: Duration,
    pub analysis: Duration,
}

/// One worker's stages: decode -> flow (+ protocol analyzers). Owns its flow table shard.
pub struct Worker {
    pub decoder: Decoder,
    pub flows: FlowTable<Analyzer>,
    events: Vec<FlowEvent<ProtoEvent>>,
    pub app_events: u64,
    pub timing: Option<StageTimes>,
}

impl Worker {
    pub fn new(settings: &Settings) -> Self {
        Worker {
            decoder: Decoder::new(),
            flows: FlowTable::new(settings.flow),
            events: Vec::with_capacity(64),
            app_events: 0,
            timing: None,
        }
    }

    /// Runs one frame through the stages.
    pub fn frame(&mut self, frame: &RawFrame<'_>, out: &mut Vec<Emitted>) {
        let t0 = self.timing.map(|_| Instant::now());
        let d = self.decoder.decode(frame);
        let t1 = t0.map(|_| Instant::now());
        if let Decoded::Packet(p) = d {
            if matches!(p.net, Net::Arp(_)) {
                out.push(Emitted::Packet(p));
            } else {
                self.flows
                    .observe(&p, decode::payload(frame, &p), &mut self.events);
                self.hand_on(out);
            }
            if let (Some(t), Some(t1)) = (self.timing.as_mut(), t1) {
                t.flow += t1.elapsed();
            }
        }
        if let (Some(t), Some(t0), Some(t1)) = (self.timing.as_mut(), t0, t1) {
            t.decode += t1 - t0;
        }
    }

    fn hand_on(&mut self, out: &mut Vec<Emitted>) {
        for ev in self.events.drain(..) {
            out.push(match ev {
                FlowEvent::Started(m) => Emitted::Started(m),
                FlowEvent::App {
                    meta,
                    ts,
                    dir,
                    event,
                } => {
                    self.app_events += 1;
                    Emitted::App {
                        meta,
                        ts,
                        dir,
                        event,
                    }
                }
                FlowEvent::Activity {
                    meta,
                    window,
                    fwd,
                    rev,
                } => Emitted::Activity {
                    meta,
                    window,
                    fwd,
                    rev,
                },
                FlowEvent::Ended(r) => Emitted::Flow(r),
            });
        }
    }

    /// End of input: every flow ends.
    pub fn finish(&mut self, out: &mut Vec<Emitted>) {
        self.flows.drain(&mut self.events);
        self.hand_on(out);
    }

    /// Latest packet time seen.
    pub fn now(&self) -> Timestamp {
        self.flows.now()
    }
}

/// Output options of a run.
#[derive(Clone, Debug, Default)]
pub struct OutputOptions {
    /// `None` = standard output.
    pub path: Option<PathBuf>,
    /// Write `flow` events.
    pub flows: bool,
    /// Discard all output (bench).
    pub discard: bool,
}

/// The single-threaded engine: a worker plus the writer.
pub struct Engine {
    pub worker: Worker,
    pub detectors: Detectors,
    findings: Vec<Finding>,
    alerter: Alerter,
    pub writer: EveWriter,
    emit_flows: bool,
    emitted: Vec<Emitted>,
    stats_interval: u64,
    next_stats: Option<Timestamp>,
    first_ts: Option<Timestamp>,
    pub stats: Stats,
}

impl Engine {
    pub fn new(settings: &Settings, rules: RuleSet, out: &OutputOptions) -> Result<Self, AppError> {
        let (sink, target): (Box<dyn Write + Send>, String) = if out.discard {
            (Box::new(std::io::sink()), "(discarded)".into())
        } else {
            match &out.path {
                Some(p) => {
                    let f = std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(p)
                        .map_err(|e| AppError::Usage(format!("{}: {e}", p.display())))?;
                    (Box::new(f), p.display().to_string())
                }
                None => (Box::new(std::io::stdout()), "standard output".into()),
            }
        };
        Ok(Engine {
            worker: Worker::new(settings),
            detectors: Detectors::new(settings, &rules)?,
            findings: Vec::with_capacity(16),
            alerter: Alerter::new(rules, settings.alert.default_suppress_secs),
            writer: EveWriter::new(sink, &target),
            emit_flows: out.flows,
            emitted: Vec::with_capacity(64),
            stats_interval: 0,
            next_stats: None,
            first_ts: None,
            stats: Stats::default(),
        })
    }

    /// Writes a `stats` event every `secs` seconds of packet time (0 = only at the end).
    pub fn set_stats_interval(&mut self, secs: u64) {
        self.stats_interval = secs;
    }

    pub fn frame(&mut self, frame: &RawFrame<'_>) {
        if self.first_ts.is_none() {
            self.first_ts = Some(frame.ts);
        }
        self.worker.frame(frame, &mut self.emitted);
        if !self.emitted.is_empty() {
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

    fn write_emitted(&mut self) {
        let t0 = self.worker.timing.map(|_| Instant::now());
        for e in self.emitted.drain(..) {
            self.detectors.on_event(&e, &mut self.findings);
            if let Emitted::Flow(r) = &e {
                if self.emit_flows {
                    self.writer.write(&flow_event(r));
                }
            }
            for f in self.findings.drain(..) {
                if let Some(v) = self.alerter.alert(&f) {
                    self.writer.write(&v);
                }
            }
        }
        if let (Some(t), Some(t0)) = (self.worker.timing.as_mut(), t0) {
            t.analysis += t0.elapsed();
        }
    }

    fn finish_detectors(&mut self) {
        self.detectors.finish(&mut self.findings);
        for f in self.findings.drain(..) {
            if let Some(v) = self.alerter.alert(&f) {
                self.writer.write(&v);
            }
        }
    }

    fn collect_stats(&mut self) {
        self.stats.decode = self.worker.decoder.counters.clone();
        self.stats.flow = self.worker.flows.counters;
        self.stats.flows_active = self.worker.flows.len() as u64;
        self.stats.alerts = self.alerter.counters.clone();
        self.stats.alerts_suppressed = self.alerter.suppressed();
        self.stats.app_events = self.worker.app_events;
    }

    pub fn write_stats(&mut self, now: Timestamp) {
        self.collect_stats();
        let uptime = now.secs_since(self.first_ts.unwrap_or(now));
        let ev = self.stats.event(now, uptime);
        self.writer.write(&ev);
        self.writer.flush();
    }

    /// Ends all flows, writes the final stats and flushes.
    pub fn finish(&mut self) -> Result<(), AppError> {
        self.worker.finish(&mut self.emitted);
        self.write_emitted();
        self.finish_detectors();
        let now = self.worker.now();
        self.write_stats(now);
        self.writer.flush();
        match self.writer.take_error() {
            Some(e) => Err(AppError::Runtime(e.to_string())),
            None => Ok(()),
        }
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
}

/// Result of a replay.
pub struct ReplayReport {
    pub outcome: Outcome,
    pub stats: Stats,
    pub wall: Duration,
    pub times: Option<StageTimes>,
}

/// Replays capture files as one timeline.
pub fn replay(
    settings: &Settings,
    rules: RuleSet,
    opts: &ReplayOptions,
    stop: &AtomicBool,
) -> Result<ReplayReport, AppError> {
    // Open everything first: a bad input is reported before any output is written.
    let mut files = Vec::with_capacity(opts.inputs.len());
    for p in &opts.inputs {
        files.push(CaptureFile::open(p)?);
    }
    let mut engine = Engine::new(settings, rules, &opts.output)?;
    if opts.bench {
        engine.worker.timing = Some(StageTimes::default());
    }
    let started = Instant::now();
    let mut progress = Progress::new(opts.progress && !opts.quiet);
    let mut outcome = Outcome::Done;
    let mut capture = crate::capture::CaptureCounters::default();
    let mut truncated = Vec::new();
    'files: for mut f in files {
        let total = f.mapped_bytes().map(|m| m.len() as u64);
        let mut n: u64 = 0;
        loop {
            n += 1;
            if n.is_multiple_of(4096) {
                if stop.load(Ordering::Relaxed) {
                    outcome = Outcome::Interrupted;
                    capture_add(&mut capture, &f.counters);
                    break 'files;
                }
                progress.tick(
                    f.path(),
                    f.counters.file_bytes,
                    total,
                    engine.worker.decoder.counters.packets,
                );
                if engine.writer.closed {
                    // The reader of our output went away (`| head`): stop quietly.
                    capture_add(&mut capture, &f.counters);
                    break 'files;
                }
            }
            match f.next_frame() {
                Ok(Next::Frame(fr)) => engine.frame(&fr),
                Ok(Next::End) => break,
                Ok(Next::Truncated { offset, missing }) => {
                    eprintln!(
                        "tapwatch: {}: file cut mid-record at byte {offset} ({missing} bytes missing); processed up to the cut",
                        f.path()
                    );
                    truncated.push((f.path().to_string(), offset));
                    break;
                }
                Err(e) => {
                    // Corrupt structure mid-file: report, keep what was processed, go on with the
                    // next input.
                    eprintln!("tapwatch: {e}; skipping the rest of this input");
                    truncated.push((f.path().to_string(), f.counters.file_bytes));
                    break;
                }
            }
        }
        capture_add(&mut capture, &f.counters);
    }
    progress.done();
    engine.stats.capture = capture;
    engine.stats.truncated_inputs = truncated;
    engine.finish()?;
    let wall = started.elapsed();
    if !opts.quiet && !opts.bench {
        eprint!("{}", engine.stats.summary(wall.as_secs_f64()));
    }
    Ok(ReplayReport {
        outcome,
        stats: engine.stats.clone(),
        wall,
        times: engine.worker.timing,
    })
}

fn capture_add(a: &mut crate::capture::CaptureCounters, b: &crate::capture::CaptureCounters) {
    a.frames += b.frames;
    a.other_blocks += b.other_blocks;
    a.file_bytes += b.file_bytes;
}

/// Formats the `bench` report.
pub fn bench_report(r: &ReplayReport) -> String {
    let secs = r.wall.as_secs_f64().max(1e-9);
    let pkts = r.stats.decode.packets;
    let bytes = r.stats.decode.bytes;
    let mut s = format!(
        "packets      {pkts}\nbytes        {bytes}\nflows        {}\nalerts       {}\nwall time    {:.3} s\npackets/s    {:.0} ({:.2} Mpps)\nthroughput   {:.3} Gbit/s\n",
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
    if let Some(rss) = crate::stats::peak_rss_bytes() {
        s += &format!("peak RSS     {:.1} MiB\n", rss as f64 / (1u64 << 20) as f64);
    }
    s
}
