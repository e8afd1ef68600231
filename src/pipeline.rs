//! Multi-worker runs (replay and live): one reader, N workers sharded by flow hash, one back
//! end.
//!
//! The reader walks the inputs and hands each worker, over a bounded crossbeam channel and in
//! batches, the positions of its frames in the shared memory map (no copy; frames of a stream
//! are copied once into the batch's buffer). Each worker owns its decoder, flow table and
//! protocol analyzers; no lock is taken on the packet path. The reader owns the packet-time
//! clock and sends every worker the same ticks, so flows expire at the same moments whatever
//! the sharding. The back end merges the workers' events by (packet sequence, flow id) — the
//! order the single-threaded engine uses — so one worker and N workers give the same alerts.

use crate::app::{
    read_inputs, report_end, AppError, Back, Clock, Emitted, FrameSink, InputResult, ReplayOptions,
    ReplayReport, Worker, WorkerCounters, DRAIN_CHUNK,
};
use crate::capture::file::{CaptureFile, Release};
use crate::capture::{prefetch, RawFrame};
use crate::decode::{shard_hash, shard_of};
use crate::detect::rules::RuleSet;
use crate::settings::Settings;
use crate::stats::ThreadCpu;
use crate::time::Timestamp;
use crossbeam_channel::{bounded, Receiver, Sender};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How many frames ahead a worker asks for a frame's bytes.
const PREFETCH_AHEAD: usize = 4;

/// Frames per batch sent to a worker.
const BATCH: usize = 512;
/// Pieces a worker keeps for reuse, and the events a reused piece keeps room for (a batch of
/// frames gives about one event per frame).
const SPARES: usize = 16;
const SPARE_EVENTS: usize = 2 * BATCH;
/// A batch of copied frames (a stream, live capture) goes as soon as its copies reach this many
/// bytes, so that queued batches hold at most `BATCH_QUEUE` MiB of frames per worker, whatever
/// the frame size (up to 64 KiB on a bridge).
const ARENA_MAX: usize = 1 << 20;
/// A batch's buffer of copies: up to the limit, plus one large frame.
const ARENA_CAPACITY: usize = ARENA_MAX + (64 << 10);
/// Batches queued per worker.
const BATCH_QUEUE: usize = 32;
/// Every this many frames, all workers get a mark so the back end can move on.
const MARK_EVERY: u64 = 8192;

#[derive(Clone, Copy)]
enum Item {
    /// A frame at `start..start+len` of the map (or of the batch's arena).
    Frame {
        seq: u64,
        ts: Timestamp,
        wire_len: u32,
        link: u32,
        start: usize,
        len: u32,
        arena: bool,
    },
    Tick {
        seq: u64,
        ts: Timestamp,
    },
    /// Nothing more before `seq` for this worker.
    Mark {
        seq: u64,
    },
}

struct Batch {
    map: Option<Arc<memmap2::Mmap>>,
    arena: Vec<u8>,
    items: Vec<Item>,
}

impl Batch {
    fn new(map: Option<Arc<memmap2::Mmap>>) -> Batch {
        Batch {
            map,
            arena: Vec::new(),
            items: Vec::with_capacity(BATCH),
        }
    }

    /// The bytes an item's `start..` refers to: the batch's copies or the shared mapping.
    fn data(&self, arena: bool) -> &[u8] {
        if arena {
            &self.arena
        } else {
            self.map.as_deref().map_or(&[][..], |m| &m[..])
        }
    }
}

/// A worker's events of one batch, and how far it got. The events stay where the worker wrote
/// them (they are large): the back end reads them in place.
struct Out {
    worker: usize,
    piece: Piece,
    watermark: u64,
    /// The worker's counters, sent with the batches that carry a tick (for periodic stats).
    counters: Option<Box<WorkerCounters>>,
    /// The worker's packet time.
    now: Timestamp,
}

impl Out {
    /// A piece of worker `id`'s events, complete up to `watermark`.
    fn new(id: usize, piece: Piece, watermark: u64, w: &Worker) -> Out {
        Out {
            worker: id,
            piece,
            watermark,
            counters: None,
            now: w.now(),
        }
    }
}

/// The events a worker is collecting for its next [`Out`], in vectors the back end returns
/// for reuse: `keys[i]` is the (sequence, order key) of `events[i]`.
struct Piece {
    events: Vec<Emitted>,
    keys: Vec<(u64, u64)>,
}

impl Piece {
    /// A piece to fill: one the back end has read, emptied here (its events are dropped by
    /// the thread that allocated them, off the back end's thread), or a new one.
    fn new(spare: &Receiver<Piece>) -> Piece {
        match spare.try_recv() {
            Ok(mut p) => {
                p.events.clear();
                p.keys.clear();
                // A piece that carried a tick's many expiries goes back to a frame batch's size:
                // spares kept at their largest would hold a drain's worth each.
                p.events.shrink_to(SPARE_EVENTS);
                p.keys.shrink_to(SPARE_EVENTS);
                p
            }
            Err(_) => Piece {
                events: Vec::with_capacity(BATCH),
                keys: Vec::with_capacity(BATCH),
            },
        }
    }

    /// Keys the events from `from` on (those of one frame or tick, in flow order) `seq`.
    fn seal(&mut self, from: usize, seq: u64) {
        let keys = self.events.get(from..).unwrap_or(&[]).iter();
        self.keys.extend(keys.map(|e| (seq, e.order_key())));
    }
}

/// What a worker hands back when it ends.
struct WorkerEnd {
    counters: WorkerCounters,
    now: Timestamp,
    /// The worker thread's CPU time.
    cpu: Option<Duration>,
}

impl WorkerEnd {
    /// Called on the worker's thread, at its end.
    fn of(w: &Worker) -> WorkerEnd {
        WorkerEnd {
            counters: w.counters(),
            now: w.now(),
            cpu: crate::stats::thread_cpu(),
        }
    }
}

/// The reader side: shards frames into per-worker batches.
struct Reader {
    senders: Vec<Sender<Batch>>,
    /// Batches the workers are done with, to be filled again (their buffers keep capacity).
    recycled: Receiver<Batch>,
    pending: Vec<Batch>,
    /// The input's mapping (none for a stream), which gives the pages that every worker is
    /// done with back.
    release: Option<Release>,
    /// (sequence number, offset in the mapping) of a frame at each mark, oldest first.
    checkpoints: VecDeque<(u64, usize)>,
    /// Per worker: the sequence number up to which it is done with its frames' bytes.
    read: Arc<[AtomicU64]>,
    clock: Clock,
    seq: u64,
    first_ts: Option<Timestamp>,
    packets: Arc<AtomicU64>,
    closed: Arc<AtomicBool>,
}

impl Reader {
    fn new(
        senders: Vec<Sender<Batch>>,
        recycled: Receiver<Batch>,
        read: Arc<[AtomicU64]>,
        closed: Arc<AtomicBool>,
    ) -> Reader {
        Reader {
            pending: senders.iter().map(|_| Batch::new(None)).collect(),
            senders,
            recycled,
            release: None,
            checkpoints: VecDeque::new(),
            read,
            clock: Clock::default(),
            seq: 0,
            first_ts: None,
            packets: Arc::new(AtomicU64::new(0)),
            closed,
        }
    }

    fn send(&mut self, w: usize) {
        if self.pending[w].items.is_empty() {
            return;
        }
        let fresh = match self.recycled.try_recv() {
            Ok(mut b) => {
                b.items.clear();
                b.arena.clear();
                b.map = self.map();
                b
            }
            Err(_) => Batch::new(self.map()),
        };
        let b = std::mem::replace(&mut self.pending[w], fresh);
        // A worker that ended early (panic) closes its channel; nothing to do then.
        let _ = self.senders[w].send(b);
    }
    /// The input's mapping, shared with the batches.
    fn map(&self) -> Option<Arc<memmap2::Mmap>> {
        self.release.as_ref().map(|r| Arc::clone(r.map()))
    }

    /// At a mark (frame `seq`, at offset `at` of the mapping): gives back the mapped pages
    /// before the latest earlier mark that every worker has read past.
    fn give_back(&mut self, seq: u64, at: usize) {
        let Some(r) = self.release.as_mut() else {
            return;
        };
        self.checkpoints.push_back((seq, at));
        let done = self
            .read
            .iter()
            .map(|a| a.load(Ordering::Acquire))
            .min()
            .unwrap_or(0);
        let mut upto = None;
        while let Some(&(s, at)) = self.checkpoints.front() {
            if s > done {
                break;
            }
            upto = Some(at);
            self.checkpoints.pop_front();
        }
        if let Some(at) = upto {
            r.upto(at);
        }
    }

    fn flush_all(&mut self, mark: Option<u64>) {
        for w in 0..self.pending.len() {
            if let Some(seq) = mark {
                self.pending[w].items.push(Item::Mark { seq });
            }
            self.send(w);
        }
    }
}

impl FrameSink for Reader {
    fn input(&mut self, map: Option<Arc<memmap2::Mmap>>) {
        // Batches never mix inputs.
        self.flush_all(None);
        self.release = map.map(Release::new);
        self.checkpoints.clear();
        let map = self.map();
        for b in &mut self.pending {
            b.map = map.clone();
        }
    }

    fn frame(&mut self, f: &RawFrame<'_>) {
        self.seq += 1;
        if self.first_ts.is_none() {
            self.first_ts = Some(f.ts);
        }
        if self.clock.due(f.ts) {
            let seq = 2 * self.seq;
            for b in &mut self.pending {
                b.items.push(Item::Tick { seq, ts: f.ts });
            }
            self.flush_all(None);
        }
        // A mapped frame is read in place, at its offset; any other is copied.
        let mapped = self.release.as_ref().and_then(|r| r.offset_of(f.bytes));
        let w = shard_of(shard_hash(f.link, f.bytes), self.senders.len());
        let seq = 2 * self.seq + 1;
        let item = match mapped {
            Some(start) => Item::Frame {
                seq,
                ts: f.ts,
                wire_len: f.wire_len,
                link: f.link,
                start,
                len: f.bytes.len() as u32,
                arena: false,
            },
            None => {
                let b = &mut self.pending[w];
                let start = b.arena.len();
                if b.arena.capacity() == 0 {
                    // Reserved once: growth by doubling would hold up to twice the limit.
                    b.arena.reserve_exact(ARENA_CAPACITY);
                }
                b.arena.extend_from_slice(f.bytes);
                Item::Frame {
                    seq,
                    ts: f.ts,
                    wire_len: f.wire_len,
                    link: f.link,
                    start,
                    len: f.bytes.len() as u32,
                    arena: true,
                }
            }
        };
        self.pending[w].items.push(item);
        if self.pending[w].items.len() >= BATCH || self.pending[w].arena.len() >= ARENA_MAX {
            self.send(w);
        }
        if self.seq.is_multiple_of(MARK_EVERY) {
            self.flush_all(Some(seq));
            if let Some(at) = mapped {
                self.give_back(seq, at);
            }
        }
        self.packets.store(self.seq, Ordering::Relaxed);
    }

    fn packets(&self) -> u64 {
        self.packets.load(Ordering::Relaxed)
    }

    fn output_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }

    fn idle(&mut self) {
        // Hand on the pending frames with a mark, so the back end can write their events.
        let seq = self.seq;
        self.flush_all(Some(seq));
    }
}

/// The settings of one of `n` workers: the flow table cap and the stream memcap are the
/// sensor's totals, so each shard holds its share of them (flows are spread evenly by hash).
fn shard_settings(settings: &Settings, n: usize) -> Settings {
    let share = |total: usize| total.div_ceil(n.max(1)).max(1);
    let mut s = settings.clone();
    s.flow.max_flows = share(settings.flow.max_flows);
    s.flow.reassembly.memcap = share(settings.flow.reassembly.memcap);
    s
}

/// A worker's channels: batches in, pieces out, batches and pieces back for reuse; and how far
/// it has read.
struct Links<'a> {
    rx: Receiver<Batch>,
    tx: Sender<Out>,
    recycle: Sender<Batch>,
    spare: Receiver<Piece>,
    /// The sequence number up to which the worker is done with its frames' bytes (the reader
    /// gives the mapped pages before them back).
    read: &'a AtomicU64,
}

fn run_worker(id: usize, settings: &Settings, stats: bool, links: Links<'_>) -> WorkerEnd {
    let Links {
        rx,
        tx,
        recycle,
        spare,
        read,
    } = links;
    let mut w = Worker::new(settings);
    // The last sequence number whose events are all handed on.
    let mut watermark = 0;
    for batch in rx {
        let mut out = Piece::new(&spare);
        let mut ticked = false;
        for (i, item) in batch.items.iter().enumerate() {
            // The frame a few items ahead was last touched by the reader, on another core:
            // ask for its first bytes now, so that they are here when it is decoded.
            if let Some(&Item::Frame { start, arena, .. }) = batch.items.get(i + PREFETCH_AHEAD) {
                let data = batch.data(arena);
                // Headers and the start of the payload: two cache lines.
                prefetch(data.get(start..).unwrap_or(&[]));
                prefetch(data.get(start + 64..).unwrap_or(&[]));
            }
            let seq = match *item {
                Item::Frame {
                    seq,
                    ts,
                    wire_len,
                    link,
                    start,
                    len,
                    arena,
                } => {
                    let bytes = batch.data(arena).get(start..start + len as usize);
                    let bytes = bytes.unwrap_or(&[]);
                    let from = out.events.len();
                    w.frame(
                        &RawFrame {
                            ts,
                            wire_len,
                            link,
                            bytes,
                        },
                        &mut out.events,
                    );
                    out.seal(from, seq);
                    seq
                }
                Item::Tick { seq, ts } => {
                    // A tick of many flows goes on in pieces, each marked as not yet complete.
                    loop {
                        let from = out.events.len();
                        let more = w.tick_some(ts, &mut out.events, DRAIN_CHUNK);
                        out.seal(from, seq);
                        if !more {
                            break;
                        }
                        let piece = std::mem::replace(&mut out, Piece::new(&spare));
                        if tx.send(Out::new(id, piece, watermark, &w)).is_err() {
                            return WorkerEnd::of(&w);
                        }
                    }
                    ticked = true;
                    seq
                }
                Item::Mark { seq } => seq,
            };
            watermark = seq;
        }
        read.store(watermark, Ordering::Release);
        // The batch goes back to the reader for reuse (dropped if the reader has enough).
        let _ = recycle.try_send(batch);
        let mut done = Out::new(id, out, watermark, &w);
        done.counters = (stats && ticked).then(|| Box::new(w.counters()));
        if tx.send(done).is_err() {
            break;
        }
    }
    // The end of input in pieces, each in flow id order; only the last one says "done".
    loop {
        let mut piece = Piece::new(&spare);
        let more = w.finish_some(&mut piece.events, DRAIN_CHUNK);
        piece.seal(0, u64::MAX);
        let sent = tx.send(Out::new(
            id,
            piece,
            if more { u64::MAX - 1 } else { u64::MAX },
            &w,
        ));
        if !more || sent.is_err() {
            break;
        }
    }
    WorkerEnd::of(&w)
}

/// Merges the workers' events in (sequence, flow id) order as far as every worker has got.
/// Each worker's pieces wait in a queue, read in place from a cursor; a piece read to its end
/// goes back to its worker, which drops its events when it reuses it.
struct Merger {
    queues: Vec<VecDeque<Out>>,
    /// Position in the front piece of each queue.
    cursor: Vec<usize>,
    watermark: Vec<u64>,
    spare: Vec<Sender<Piece>>,
}

impl Merger {
    /// The key of worker `w`'s next event, dropping the pieces read to their end.
    fn front(&mut self, w: usize) -> Option<(u64, u64)> {
        loop {
            let q = &mut self.queues[w];
            let o = q.front()?;
            if let Some(&k) = o.piece.keys.get(self.cursor[w]) {
                return Some(k);
            }
            if let Some(o) = q.pop_front() {
                self.cursor[w] = 0;
                // Dropped here only when the worker holds enough spares.
                let _ = self.spare[w].try_send(o.piece);
            }
        }
    }

    /// Hands the back end every event that no worker can still precede. The worker with the
    /// least next key goes on for as long as its keys stay below every other worker's next
    /// key, and within what the workers with nothing queued have vouched for (their
    /// watermarks): one look at the others per run of events, not per event.
    fn pump(&mut self, back: &mut Back) {
        loop {
            // One look at every worker: the least next key (worker `w`), the least next key of
            // the others with events queued (`below`), and the least watermark of those with
            // none (`upto`: each has sent all its events up to it, and may send more after).
            let mut next: Option<(usize, (u64, u64))> = None;
            let mut below = (u64::MAX, u64::MAX);
            let mut upto = u64::MAX;
            for i in 0..self.queues.len() {
                match (self.front(i), next) {
                    (Some(k), Some((_, m))) if k >= m => below = below.min(k),
                    (Some(k), _) => {
                        if let Some((_, m)) = next {
                            below = below.min(m);
                        }
                        next = Some((i, k));
                    }
                    (None, _) => upto = upto.min(self.watermark[i]),
                }
            }
            let Some((w, _)) = next else { return };
            let mut moved = false;
            // Through w's pieces, a run of keys at a time.
            while self.front(w).is_some() {
                let c = self.cursor[w];
                let Some(o) = self.queues[w].front() else {
                    break;
                };
                let keys = o.piece.keys.get(c..).unwrap_or(&[]);
                let run = keys
                    .iter()
                    .take_while(|&&k| k < below && k.0 <= upto)
                    .count();
                for e in o.piece.events.get(c..c + run).unwrap_or(&[]) {
                    back.consume(e);
                }
                self.cursor[w] = c + run;
                moved |= run > 0;
                if run < keys.len() {
                    break;
                }
            }
            if !moved {
                return;
            }
        }
    }
}

/// Kernel capture counters shared by a live reader with the back end: received, dropped by the
/// kernel, dropped by the interface.
pub type KernelCounters = Arc<[AtomicU64; 3]>;

/// How a parallel run ended.
pub struct ParallelEnd {
    pub input: InputResult,
    pub back: Back,
    pub counters: WorkerCounters,
    pub first_ts: Option<Timestamp>,
    pub now: Timestamp,
    /// CPU time per thread, where the system tells it.
    pub cpu: Option<ThreadCpu>,
}

/// Runs `n` workers and the back end while `feed` hands frames to the reader side (in the
/// calling thread). With `stats_interval` > 0 the back end writes a `stats` event every that
/// many seconds of packet time, with the workers' latest counters and `kernel`'s.
pub fn run_parallel(
    settings: &Settings,
    mut back: Back,
    n: usize,
    stats_interval: u64,
    kernel: Option<KernelCounters>,
    feed: impl FnOnce(&mut dyn FrameSink) -> InputResult,
) -> Result<ParallelEnd, AppError> {
    let n = n.max(1);
    let closed = Arc::new(AtomicBool::new(false));
    let (out_tx, out_rx) = bounded::<Out>(32 * n);
    let mut senders = Vec::with_capacity(n);
    let mut receivers = Vec::with_capacity(n);
    for _ in 0..n {
        let (tx, rx) = bounded::<Batch>(BATCH_QUEUE);
        senders.push(tx);
        receivers.push(rx);
    }
    let (recycle_tx, recycled) = bounded::<Batch>((BATCH_QUEUE + 2) * n);
    let (spare_tx, spare_rx): (Vec<_>, Vec<_>) = (0..n).map(|_| bounded::<Piece>(SPARES)).unzip();
    let shard = &shard_settings(settings, n);
    let stats = stats_interval > 0;
    let read: Arc<[AtomicU64]> = (0..n).map(|_| AtomicU64::new(0)).collect();
    let (input, ends, back, first_ts, reader_cpu) = std::thread::scope(|scope| {
        let workers: Vec<_> = receivers
            .into_iter()
            .zip(spare_rx)
            .enumerate()
            .map(|(id, (rx, spare))| {
                let links = Links {
                    rx,
                    tx: out_tx.clone(),
                    recycle: recycle_tx.clone(),
                    spare,
                    read: &read[id],
                };
                scope.spawn(move || run_worker(id, shard, stats, links))
            })
            .collect();
        drop(out_tx);
        drop(recycle_tx);
        let closed_b = Arc::clone(&closed);
        let back_thread = scope.spawn(move || {
            let mut m = Merger {
                queues: (0..n).map(|_| VecDeque::new()).collect(),
                cursor: vec![0; n],
                watermark: vec![0; n],
                spare: spare_tx,
            };
            let mut flushed = Instant::now();
            let mut latest: Vec<WorkerCounters> = vec![WorkerCounters::default(); n];
            let (mut first, mut next_stats) = (None::<Timestamp>, None::<Timestamp>);
            for mut o in out_rx.iter() {
                let wk = o.worker;
                m.watermark[wk] = o.watermark;
                let counters = o.counters.take();
                let now = o.now;
                m.queues[wk].push_back(o);
                m.pump(&mut back);
                if let Some(c) = counters {
                    latest[wk] = *c;
                    first.get_or_insert(now);
                    match next_stats {
                        None => next_stats = Some(now.plus_secs(stats_interval)),
                        Some(t) if now >= t => {
                            let mut sum = WorkerCounters::default();
                            latest.iter().for_each(|c| sum.merge(c));
                            if let Some(k) = &kernel {
                                let cap = &mut back.stats.capture;
                                cap.kernel_received = k[0].load(Ordering::Relaxed);
                                cap.kernel_drops = k[1].load(Ordering::Relaxed);
                                cap.if_drops = k[2].load(Ordering::Relaxed);
                            }
                            back.write_stats(now, first, &sum);
                            next_stats = Some(now.plus_secs(stats_interval));
                        }
                        _ => {}
                    }
                }
                // A slow input (a pipe, a quiet link): what is written shows within a fraction
                // of a second.
                if out_rx.is_empty() && flushed.elapsed().as_millis() >= 200 {
                    back.writer.flush();
                    flushed = Instant::now();
                }
                if back.writer.closed {
                    closed_b.store(true, Ordering::Relaxed);
                }
            }
            m.watermark.iter_mut().for_each(|w| *w = u64::MAX);
            m.pump(&mut back);
            (back, crate::stats::thread_cpu())
        });
        let reader_start = crate::stats::thread_cpu();
        let mut reader = Reader::new(senders, recycled, Arc::clone(&read), Arc::clone(&closed));
        let input = feed(&mut reader);
        reader.flush_all(None);
        let first_ts = reader.first_ts;
        drop(reader);
        let reader_cpu = crate::stats::thread_cpu()
            .zip(reader_start)
            .map(|(end, start)| end.saturating_sub(start));
        let ends: Vec<WorkerEnd> = workers.into_iter().filter_map(|h| h.join().ok()).collect();
        let back = back_thread.join();
        (input, ends, back, first_ts, reader_cpu)
    });
    let Ok((mut back, back_cpu)) = back else {
        return Err(AppError::Runtime("the analysis thread failed".into()));
    };
    if ends.len() != n {
        return Err(AppError::Runtime("a worker thread failed".into()));
    }
    back.finish_detectors();
    let mut counters = WorkerCounters::default();
    let mut now = Timestamp::ZERO;
    for e in &ends {
        counters.merge(&e.counters);
        now = now.max(e.now);
    }
    let workers_cpu: Option<Vec<Duration>> = ends.iter().map(|e| e.cpu).collect();
    let cpu = match (reader_cpu, workers_cpu, back_cpu) {
        (Some(reader), Some(workers), Some(back)) => Some(ThreadCpu {
            reader,
            workers,
            back,
        }),
        _ => None,
    };
    Ok(ParallelEnd {
        input,
        back,
        counters,
        first_ts,
        now,
        cpu,
    })
}

/// Replays `files` with `opts.workers` workers.
pub fn replay_parallel(
    settings: &Settings,
    rules: RuleSet,
    opts: &ReplayOptions,
    files: Vec<CaptureFile>,
    stop: &AtomicBool,
) -> Result<ReplayReport, AppError> {
    let back = Back::for_replay(settings, rules, opts)?;
    let started = Instant::now();
    let progress = opts.progress && !opts.quiet;
    let end = run_parallel(settings, back, opts.workers, 0, None, |sink| {
        read_inputs(files, sink, progress, stop)
    })?;
    let mut back = end.back;
    back.stats.capture = end.input.capture;
    back.stats.truncated_inputs = end.input.truncated;
    back.write_stats(end.now, end.first_ts, &end.counters);
    back.close()?;
    let wall = started.elapsed();
    report_end(opts, &back, wall);
    Ok(ReplayReport {
        outcome: end.input.outcome,
        stats: back.stats.clone(),
        wall,
        times: None,
        first_ts: end.first_ts,
        last_ts: end.now,
        workers: opts.workers.max(1),
        analysis: back.analysis,
        cpu: end.cpu,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Copied frames (a stream, live capture) go on in batches of at most 512 frames or 1 MiB of
    /// copies, whichever comes first, in buffers that never grow past the limit plus one frame.
    #[test]
    fn batches_of_copied_frames_are_bounded_in_bytes() {
        let (tx, rx) = bounded::<Batch>(1024);
        let (_recycle_tx, recycled) = bounded::<Batch>(1);
        let read: Arc<[AtomicU64]> = Arc::new([AtomicU64::new(0)]);
        let mut reader = Reader::new(vec![tx], recycled, read, Arc::new(AtomicBool::new(false)));
        // 600 frames of 32 KiB (18.75 MiB), then 600 small ones.
        let big = vec![0u8; 32 << 10];
        let small = vec![0u8; 60];
        for bytes in (0..1200).map(|i| if i < 600 { &big } else { &small }) {
            reader.frame(&RawFrame {
                ts: Timestamp::from_secs(1_000),
                wire_len: bytes.len() as u32,
                link: crate::capture::linktype::ETHERNET,
                bytes,
            });
        }
        reader.flush_all(None);
        drop(reader);
        let batches: Vec<Batch> = rx.iter().collect();
        let frames = |b: &Batch| {
            b.items
                .iter()
                .filter(|i| matches!(i, Item::Frame { .. }))
                .count()
        };
        assert_eq!(batches.iter().map(frames).sum::<usize>(), 1200);
        for b in &batches {
            assert!(frames(b) <= BATCH, "{} frames", frames(b));
            assert!(
                b.arena.len() < ARENA_MAX + (32 << 10),
                "{} bytes",
                b.arena.len()
            );
            assert!(b.arena.capacity() <= ARENA_CAPACITY);
        }
        // The large frames went 32 a batch (1 MiB), the small ones 512 a batch.
        assert!(batches
            .iter()
            .any(|b| frames(b) == 32 && b.arena.len() == ARENA_MAX));
        assert!(batches.iter().any(|b| frames(b) == BATCH));
    }
}
