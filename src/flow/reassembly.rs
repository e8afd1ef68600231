//! Per-direction TCP stream reassembly: hands the stream handler each byte once, in order.
//!
//! In-order segments are passed straight from the frame (no copy). Segments that arrive ahead of
//! a hole are kept in a small bounded buffer until the hole fills; when the buffer is full, or
//! the direction closes, the hole is reported as a gap and reassembly goes on after it. Only the
//! first `depth` bytes of each direction are delivered, unless the handler asks for the whole
//! stream.

use super::key::Direction;
use super::StreamHandler;

/// Limits of reassembly (per direction of each flow, except `memcap`).
#[derive(Clone, Copy, Debug)]
pub struct ReassemblyLimits {
    /// Bytes delivered per direction before inspection stops (0 = no limit). Default 1 MiB.
    pub depth: u64,
    /// Out-of-order bytes buffered per direction. Default 32 KiB.
    pub max_ooo_bytes: usize,
    /// Out-of-order segments buffered per direction. Default 16.
    pub max_ooo_segments: usize,
    /// Bytes that the out-of-order buffers and the protocol parsers' buffers of all TCP flows
    /// may hold together, over all workers (each of N holds 1/N). When a flow's buffers grow
    /// past it, the flows holding the most (by size class) are shed until the total is under
    /// it again: their buffers are released and nothing more of them is inspected (their
    /// packets are still counted). Default 64 MiB.
    pub memcap: usize,
}

impl Default for ReassemblyLimits {
    fn default() -> Self {
        ReassemblyLimits {
            depth: 1 << 20,
            max_ooo_bytes: 32 << 10,
            max_ooo_segments: 16,
            memcap: 64 << 20,
        }
    }
}

/// Counters of reassembly.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReassemblyCounters {
    /// Bytes handed to stream handlers.
    pub delivered_bytes: u64,
    /// Holes reported to handlers, and their bytes.
    pub gaps: u64,
    pub gap_bytes: u64,
    /// Segments buffered out of order.
    pub ooo_segments: u64,
    /// Times the out-of-order buffer was full and a hole was given up.
    pub ooo_overflows: u64,
    /// Directions that reached the depth limit.
    pub depth_reached: u64,
    /// Retransmitted or overlapping bytes dropped (already delivered).
    pub overlap_bytes: u64,
    /// Flows shed at the memcap, and the bytes their buffers held.
    pub memcap_flows: u64,
    pub memcap_bytes: u64,
    /// Most bytes held at once by stream buffers (summed over workers: each worker's peak).
    pub held_peak: u64,
}

impl ReassemblyCounters {
    pub fn merge(&mut self, o: &ReassemblyCounters) {
        self.delivered_bytes += o.delivered_bytes;
        self.gaps += o.gaps;
        self.gap_bytes += o.gap_bytes;
        self.ooo_segments += o.ooo_segments;
        self.ooo_overflows += o.ooo_overflows;
        self.depth_reached += o.depth_reached;
        self.overlap_bytes += o.overlap_bytes;
        self.memcap_flows += o.memcap_flows;
        self.memcap_bytes += o.memcap_bytes;
        self.held_peak += o.held_peak;
    }
}

#[derive(Clone, Copy, Debug)]
struct Seg {
    seq: u32,
    start: u32,
    len: u32,
}

/// State of one direction.
#[derive(Debug, Default)]
pub struct Stream {
    next_seq: u32,
    init: bool,
    delivered: u64,
    stopped: bool,
    pub gap_bytes: u64,
    ooo: Vec<Seg>,
    ooo_data: Vec<u8>,
}

/// Signed distance from `b` to `a` in sequence space.
fn seq_diff(a: u32, b: u32) -> i64 {
    i64::from(a.wrapping_sub(b) as i32)
}

impl Stream {
    /// Bytes allocated to the out-of-order buffer.
    pub fn held(&self) -> usize {
        self.ooo_data.capacity() + self.ooo.capacity() * std::mem::size_of::<Seg>()
    }

    /// Releases the out-of-order buffer (its bytes are never delivered) and stops delivery.
    pub fn shed(&mut self) {
        self.ooo = Vec::new();
        self.ooo_data = Vec::new();
        self.stopped = true;
    }

    /// The direction's SYN: the stream starts at `seq + 1`.
    pub fn on_syn(&mut self, seq: u32) {
        if !self.init {
            self.next_seq = seq.wrapping_add(1);
            self.init = true;
        }
    }

    /// A segment with `data` captured of `wire_len` payload bytes at `seq`.
    #[allow(clippy::too_many_arguments)]
    pub fn on_segment<H: StreamHandler>(
        &mut self,
        dir: Direction,
        seq: u32,
        data: &[u8],
        wire_len: u32,
        handler: &mut H,
        out: &mut Vec<H::Event>,
        limits: &ReassemblyLimits,
        c: &mut ReassemblyCounters,
    ) {
        if wire_len == 0 || self.stopped {
            return;
        }
        if !self.init {
            // Mid-stream pickup: start at the first segment seen.
            self.next_seq = seq;
            self.init = true;
        }
        let d = seq_diff(seq, self.next_seq);
        if d > 0 {
            self.buffer(dir, seq, data, wire_len, handler, out, limits, c);
            return;
        }
        // Trim what was already delivered.
        let skip = (-d) as u64;
        if skip >= u64::from(wire_len) {
            c.overlap_bytes += u64::from(wire_len);
            return;
        }
        c.overlap_bytes += skip;
        let skip = skip as usize;
        let cap = data.get(skip.min(data.len())..).unwrap_or(&[]);
        let wire_rest = wire_len - skip as u32;
        self.deliver(dir, cap, wire_rest, handler, out, limits, c);
        self.drain_ooo(dir, handler, out, limits, c);
    }

    #[allow(clippy::too_many_arguments)]
    fn deliver<H: StreamHandler>(
        &mut self,
        dir: Direction,
        data: &[u8],
        wire_len: u32,
        handler: &mut H,
        out: &mut Vec<H::Event>,
        limits: &ReassemblyLimits,
        c: &mut ReassemblyCounters,
    ) {
        self.next_seq = self.next_seq.wrapping_add(wire_len);
        if self.stopped {
            return;
        }
        let mut data = data;
        if limits.depth > 0 && !handler.wants_whole_stream() {
            let room = limits.depth.saturating_sub(self.delivered);
            if (data.len() as u64) > room {
                data = data.get(..room as usize).unwrap_or(&[]);
            }
            if room == 0 {
                self.stopped = true;
                c.depth_reached += 1;
                return;
            }
        }
        if !data.is_empty() {
            self.delivered += data.len() as u64;
            c.delivered_bytes += data.len() as u64;
            handler.on_data(dir, data, out);
        }
        let missing = u64::from(wire_len).saturating_sub(data.len() as u64);
        if missing > 0 && !(limits.depth > 0 && self.delivered >= limits.depth) {
            self.gap(dir, missing, handler, c);
        }
    }

    fn gap<H: StreamHandler>(
        &mut self,
        dir: Direction,
        len: u64,
        handler: &mut H,
        c: &mut ReassemblyCounters,
    ) {
        c.gaps += 1;
        c.gap_bytes += len;
        self.gap_bytes += len;
        handler.on_gap(dir, len);
    }

    #[allow(clippy::too_many_arguments)]
    fn buffer<H: StreamHandler>(
        &mut self,
        dir: Direction,
        seq: u32,
        data: &[u8],
        wire_len: u32,
        handler: &mut H,
        out: &mut Vec<H::Event>,
        limits: &ReassemblyLimits,
        c: &mut ReassemblyCounters,
    ) {
        if self.ooo.iter().any(|s| s.seq == seq) {
            c.overlap_bytes += u64::from(wire_len);
            return;
        }
        let full = self.ooo.len() >= limits.max_ooo_segments
            || self.ooo_data.len() + data.len() > limits.max_ooo_bytes
            || (data.len() as u32) < wire_len;
        if full {
            // Give up on the hole: deliver what is buffered (with gaps), then this segment.
            c.ooo_overflows += 1;
            self.flush(dir, handler, out, limits, c);
            let d = seq_diff(seq, self.next_seq);
            if d > 0 {
                self.gap(dir, d as u64, handler, c);
                self.next_seq = seq;
            }
            self.on_segment(dir, seq, data, wire_len, handler, out, limits, c);
            return;
        }
        c.ooo_segments += 1;
        let start = self.ooo_data.len() as u32;
        self.ooo_data.extend_from_slice(data);
        self.ooo.push(Seg {
            seq,
            start,
            len: data.len() as u32,
        });
    }

    /// Delivers buffered segments that have become contiguous.
    fn drain_ooo<H: StreamHandler>(
        &mut self,
        dir: Direction,
        handler: &mut H,
        out: &mut Vec<H::Event>,
        limits: &ReassemblyLimits,
        c: &mut ReassemblyCounters,
    ) {
        while !self.ooo.is_empty() {
            let next = self.next_seq;
            let Some(i) = self.ooo.iter().position(|s| seq_diff(s.seq, next) <= 0) else {
                break;
            };
            let s = self.ooo.swap_remove(i);
            let skip = (-seq_diff(s.seq, next)) as u64;
            if skip < u64::from(s.len) {
                let from = (s.start as u64 + skip) as usize;
                let to = (s.start + s.len) as usize;
                let seg = std::mem::take(&mut self.ooo_data);
                if let Some(bytes) = seg.get(from..to) {
                    self.deliver(dir, bytes, (to - from) as u32, handler, out, limits, c);
                }
                self.ooo_data = seg;
            } else {
                c.overlap_bytes += u64::from(s.len);
            }
        }
        if self.ooo.is_empty() {
            self.ooo_data.clear();
        }
    }

    /// Delivers everything buffered, reporting the holes in between as gaps.
    pub fn flush<H: StreamHandler>(
        &mut self,
        dir: Direction,
        handler: &mut H,
        out: &mut Vec<H::Event>,
        limits: &ReassemblyLimits,
        c: &mut ReassemblyCounters,
    ) {
        while !self.ooo.is_empty() {
            let next = self.next_seq;
            // The buffered segment closest after `next`.
            let Some((i, _)) = self
                .ooo
                .iter()
                .enumerate()
                .min_by_key(|(_, s)| seq_diff(s.seq, next))
            else {
                break;
            };
            let seq = self.ooo[i].seq;
            let d = seq_diff(seq, next);
            if d > 0 {
                self.gap(dir, d as u64, handler, c);
                self.next_seq = seq;
            }
            self.drain_ooo(dir, handler, out, limits, c);
        }
        self.ooo.clear();
        self.ooo_data.clear();
    }
}
