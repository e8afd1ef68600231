//! Live capture through libpcap (the `pcap` crate): immediate mode, optional BPF filter,
//! snap length and promiscuous mode. Frames are borrowed from libpcap's buffer for the time of
//! one call and decoded in place. Kernel and interface drop counters go into the stats events.

use crate::app::{AppError, Engine, Outcome, OutputOptions};
use crate::detect::rules::RuleSet;
use crate::settings::Settings;
use crate::time::Timestamp;
use std::sync::atomic::{AtomicBool, Ordering};

/// Options of `tapwatch live`.
#[derive(Clone, Debug)]
pub struct LiveOptions {
    pub interface: String,
    pub filter: Option<String>,
    /// Bytes captured per packet.
    pub snaplen: i32,
    pub promisc: bool,
    pub model: Option<crate::detect::learned::Model>,
    pub learning: crate::analysis::Learning,
    /// Switch to this user once the capture and the output are open (`--user`).
    pub user: Option<String>,
    /// Worker threads (1: every stage on the capture thread).
    pub workers: usize,
}

fn err(iface: &str, e: pcap::Error) -> AppError {
    AppError::Usage(format!("{iface}: {e}"))
}

/// Captures until SIGINT/SIGTERM; flushes everything and writes the final stats on the way out.
pub fn run(
    settings: &Settings,
    rules: RuleSet,
    opts: &LiveOptions,
    out: &OutputOptions,
    quiet: bool,
    stop: &AtomicBool,
) -> Result<Outcome, AppError> {
    let iface = opts.interface.as_str();
    let mut cap = pcap::Capture::from_device(iface)
        .map_err(|e| err(iface, e))?
        .promisc(opts.promisc)
        .snaplen(opts.snaplen)
        .immediate_mode(true)
        .timeout(100)
        .buffer_size(32 << 20)
        .open()
        .map_err(|e| err(iface, e))?;
    if let Some(f) = &opts.filter {
        cap.filter(f, true)
            .map_err(|e| AppError::Usage(format!("BPF filter {f:?}: {e}")))?;
    }
    let link = cap.get_datalink().0 as u32;
    // libpcap keeps polling inside one read in immediate mode, so a watcher thread breaks the
    // loop when a stop signal arrives.
    let breaker = cap.breakloop_handle();
    let finished = std::sync::Arc::new(AtomicBool::new(false));
    std::thread::scope(|scope| {
        let fin = std::sync::Arc::clone(&finished);
        scope.spawn(move || {
            while !fin.load(Ordering::Relaxed) {
                if stop.load(Ordering::Relaxed) {
                    breaker.breakloop();
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        });
        let r = capture_loop(
            settings, rules, opts, out, quiet, stop, &mut cap, link, iface,
        );
        finished.store(true, Ordering::Relaxed);
        r
    })
}

#[allow(clippy::too_many_arguments)]
fn capture_loop(
    settings: &Settings,
    rules: RuleSet,
    opts: &LiveOptions,
    out: &OutputOptions,
    quiet: bool,
    stop: &AtomicBool,
    cap: &mut pcap::Capture<pcap::Active>,
    link: u32,
    iface: &str,
) -> Result<Outcome, AppError> {
    // Opens the output (before privileges are dropped).
    let back = crate::app::Back::new(settings, rules, out, opts.model.clone(), opts.learning)?;
    // The capture and the output file are open: nothing privileged is left to do.
    use crate::privilege::{drop_privileges, Dropped};
    match drop_privileges(opts.user.as_deref()).map_err(AppError::Usage)? {
        Dropped::StillRoot if !quiet => eprintln!(
            "tapwatch: capturing on {iface} as root; --user NAME (or capabilities) drops root once the capture is open"
        ),
        Dropped::User { name, uid, .. } if !quiet => {
            eprintln!("tapwatch: capturing on {iface} as user {name} (uid {uid}), no capabilities")
        }
        Dropped::Capabilities(c) if !quiet => eprintln!(
            "tapwatch: capturing on {iface}; dropped capabilities {}",
            c.join(",")
        ),
        _ => {}
    }
    if opts.workers > 1 {
        return capture_parallel(settings, back, opts, quiet, stop, cap, link, iface);
    }
    let mut engine = Engine::from_back(settings, back);
    engine.set_stats_interval(settings.stats_interval_secs);
    let started = std::time::Instant::now();
    let mut outcome = Outcome::Done;
    let mut frames: u64 = 0;
    // Alerts reach the output within a second (and at once when the link is idle), so a crash or
    // a kill -9 loses at most that much.
    let mut last_flush = std::time::Instant::now();
    loop {
        if stop.load(Ordering::Relaxed) {
            outcome = Outcome::Interrupted;
            break;
        }
        if engine.back.writer.closed {
            break;
        }
        match cap.next_packet() {
            Ok(p) => {
                frames += 1;
                engine.frame(&raw_frame(&p, link));
                if frames.is_multiple_of(16) && last_flush.elapsed().as_secs() >= 1 {
                    engine.flush();
                    last_flush = std::time::Instant::now();
                }
                if frames.is_multiple_of(1024) {
                    if let Ok(st) = cap.stats() {
                        engine.back.stats.capture.kernel_received = u64::from(st.received);
                        engine.back.stats.capture.kernel_drops = u64::from(st.dropped);
                        engine.back.stats.capture.if_drops = u64::from(st.if_dropped);
                    }
                }
            }
            Err(pcap::Error::TimeoutExpired) => {
                engine.flush();
                last_flush = std::time::Instant::now();
                continue;
            }
            Err(pcap::Error::NoMorePackets) => {
                if stop.load(Ordering::Relaxed) {
                    outcome = Outcome::Interrupted;
                }
                break;
            }
            Err(e) => {
                // Keep what was gathered: finish cleanly, then report.
                engine.finish()?;
                return Err(AppError::Runtime(format!("{iface}: {e}")));
            }
        }
    }
    if let Ok(st) = cap.stats() {
        engine.back.stats.capture.kernel_received = u64::from(st.received);
        engine.back.stats.capture.kernel_drops = u64::from(st.dropped);
        engine.back.stats.capture.if_drops = u64::from(st.if_dropped);
    }
    engine.back.stats.capture.frames = frames;
    engine.finish()?;
    if !quiet {
        eprint!(
            "{}",
            engine.back.stats.summary(started.elapsed().as_secs_f64())
        );
    }
    Ok(outcome)
}

/// A libpcap packet as a frame (borrowed for the call), stamped with its capture time.
fn raw_frame<'a>(p: &pcap::Packet<'a>, link: u32) -> crate::capture::RawFrame<'a> {
    crate::capture::RawFrame {
        ts: Timestamp::from_secs_nanos(
            p.header.ts.tv_sec.max(0) as u64,
            (p.header.ts.tv_usec.clamp(0, 999_999) as u32) * 1000,
        ),
        wire_len: p.header.len,
        link,
        bytes: p.data,
    }
}

fn kernel_stats(cap: &mut pcap::Capture<pcap::Active>, k: &crate::pipeline::KernelCounters) {
    if let Ok(st) = cap.stats() {
        k[0].store(u64::from(st.received), Ordering::Relaxed);
        k[1].store(u64::from(st.dropped), Ordering::Relaxed);
        k[2].store(u64::from(st.if_dropped), Ordering::Relaxed);
    }
}

/// The capture thread feeds N workers (each frame copied once, into the batch of its worker);
/// the back end writes alerts and periodic stats.
#[allow(clippy::too_many_arguments)]
fn capture_parallel(
    settings: &Settings,
    back: crate::app::Back,
    opts: &LiveOptions,
    quiet: bool,
    stop: &AtomicBool,
    cap: &mut pcap::Capture<pcap::Active>,
    link: u32,
    iface: &str,
) -> Result<Outcome, AppError> {
    use crate::app::{FrameSink, InputResult};
    let started = std::time::Instant::now();
    let kernel: crate::pipeline::KernelCounters = Default::default();
    let mut failure = None;
    let end = crate::pipeline::run_parallel(
        settings,
        back,
        opts.workers,
        settings.stats_interval_secs,
        Some(kernel.clone()),
        |sink: &mut dyn FrameSink| {
            let mut r = InputResult {
                outcome: Outcome::Done,
                capture: Default::default(),
                truncated: Vec::new(),
            };
            loop {
                if stop.load(Ordering::Relaxed) {
                    r.outcome = Outcome::Interrupted;
                    break;
                }
                if sink.output_closed() {
                    break;
                }
                match cap.next_packet() {
                    Ok(p) => {
                        r.capture.frames += 1;
                        sink.frame(&raw_frame(&p, link));
                        if r.capture.frames.is_multiple_of(1024) {
                            kernel_stats(cap, &kernel);
                        }
                    }
                    // A quiet link: hand on what is pending, so alerts are written.
                    Err(pcap::Error::TimeoutExpired) => {
                        kernel_stats(cap, &kernel);
                        sink.idle();
                    }
                    Err(pcap::Error::NoMorePackets) => {
                        if stop.load(Ordering::Relaxed) {
                            r.outcome = Outcome::Interrupted;
                        }
                        break;
                    }
                    Err(e) => {
                        // Keep what was gathered: finish cleanly, then report.
                        failure = Some(format!("{iface}: {e}"));
                        break;
                    }
                }
            }
            kernel_stats(cap, &kernel);
            r
        },
    )?;
    let mut back = end.back;
    back.stats.capture.frames = end.input.capture.frames;
    back.stats.capture.kernel_received = kernel[0].load(Ordering::Relaxed);
    back.stats.capture.kernel_drops = kernel[1].load(Ordering::Relaxed);
    back.stats.capture.if_drops = kernel[2].load(Ordering::Relaxed);
    back.write_stats(end.now, end.first_ts, &end.counters);
    back.close()?;
    if let Some(f) = failure {
        return Err(AppError::Runtime(f));
    }
    if !quiet {
        eprint!("{}", back.stats.summary(started.elapsed().as_secs_f64()));
    }
    Ok(end.input.outcome)
}
