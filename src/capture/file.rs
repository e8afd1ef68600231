//! Offline capture files: classic pcap (either byte order, micro- or nanosecond) and pcapng
//! (several sections and interfaces, each with its own link type and timestamp resolution).
//!
//! The format is detected from the magic bytes, never from the file name. Files are memory-mapped
//! and frames are handed on as slices of the mapping; standard input (`-`) is read through a
//! bounded refill buffer instead. A file cut in the middle of a record yields every complete record
//! and then [`Next::Truncated`], so the caller can report the cut and carry on.

use super::{CaptureCounters, RawFrame};
use crate::time::Timestamp;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

/// Largest record or block accepted (bytes). Larger ones are reported as corrupt.
pub const MAX_RECORD: usize = 16 << 20;

/// Why a capture input cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a capture file (magic bytes {magic}, expected pcap or pcapng)")]
    NotCapture { path: String, magic: String },
    #[error("{path}: truncated file header ({len} bytes)")]
    TruncatedHeader { path: String, len: usize },
    #[error("{path}: corrupt capture at byte offset {offset}: {reason}")]
    Corrupt {
        path: String,
        offset: u64,
        reason: String,
    },
}

/// The detected container format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Pcap,
    PcapNg,
}

/// Detects the format from the first four bytes.
pub fn detect_format(head: &[u8]) -> Option<Format> {
    match head.get(..4)? {
        [0xd4, 0xc3, 0xb2, 0xa1]
        | [0xa1, 0xb2, 0xc3, 0xd4]
        | [0x4d, 0x3c, 0xb2, 0xa1]
        | [0xa1, 0xb2, 0x3c, 0x4d] => Some(Format::Pcap),
        [0x0a, 0x0d, 0x0d, 0x0a] => Some(Format::PcapNg),
        _ => None,
    }
}

#[derive(Clone, Copy, Debug)]
struct Iface {
    link: u32,
    snaplen: u32,
    /// Timestamp units per second.
    units_per_sec: u64,
    /// Seconds added to every timestamp (if_tsoffset).
    offset_secs: i64,
}

/// Parser state of the format (shared by the mapped and the streaming reader).
#[derive(Debug)]
enum State {
    Pcap {
        big_endian: bool,
        nanos: bool,
        link: u32,
    },
    PcapNg {
        big_endian: bool,
        ifaces: Vec<Iface>,
    },
}

/// Result of parsing at one position of the buffer.
enum Step {
    /// A frame: (timestamp, wire length, link type, data start, data end), and the bytes consumed.
    Frame(Timestamp, u32, u32, usize, usize, usize),
    /// A non-packet block of this many bytes.
    Skip(usize),
    /// This many bytes are needed in total (from the current position) to go on.
    Need(usize),
    Corrupt(String),
}

fn rd_u16(b: &[u8], at: usize, be: bool) -> Option<u16> {
    let s: [u8; 2] = b.get(at..at + 2)?.try_into().ok()?;
    Some(if be {
        u16::from_be_bytes(s)
    } else {
        u16::from_le_bytes(s)
    })
}
fn rd_u32(b: &[u8], at: usize, be: bool) -> Option<u32> {
    let s: [u8; 4] = b.get(at..at + 4)?.try_into().ok()?;
    Some(if be {
        u32::from_be_bytes(s)
    } else {
        u32::from_le_bytes(s)
    })
}

impl State {
    /// Parses the file header at the start of `b`. Returns the state and the header length.
    fn from_header(b: &[u8], path: &str) -> Result<(State, usize), CaptureError> {
        let fmt = detect_format(b).ok_or_else(|| {
            if b.len() < 4 {
                CaptureError::TruncatedHeader {
                    path: path.into(),
                    len: b.len(),
                }
            } else {
                CaptureError::NotCapture {
                    path: path.into(),
                    magic: b.iter().take(4).map(|x| format!("{x:02x}")).collect(),
                }
            }
        })?;
        match fmt {
            Format::Pcap => {
                if b.len() < 24 {
                    return Err(CaptureError::TruncatedHeader {
                        path: path.into(),
                        len: b.len(),
                    });
                }
                let big_endian = b[0] == 0xa1;
                let nanos = matches!(b[..4], [0x4d, 0x3c, 0xb2, 0xa1] | [0xa1, 0xb2, 0x3c, 0x4d]);
                // The upper bits of the link-type field carry FCS information.
                let link = rd_u32(b, 20, big_endian).unwrap_or(0) & 0x03ff_ffff;
                Ok((
                    State::Pcap {
                        big_endian,
                        nanos,
                        link,
                    },
                    24,
                ))
            }
            Format::PcapNg => {
                // The section header is an ordinary block: let the block parser handle it.
                if b.len() < 12 {
                    return Err(CaptureError::TruncatedHeader {
                        path: path.into(),
                        len: b.len(),
                    });
                }
                let mut st = State::PcapNg {
                    big_endian: false,
                    ifaces: Vec::new(),
                };
                match st.step(b) {
                    Step::Skip(n) => Ok((st, n)),
                    Step::Need(_) => Err(CaptureError::TruncatedHeader {
                        path: path.into(),
                        len: b.len(),
                    }),
                    Step::Corrupt(reason) => Err(CaptureError::Corrupt {
                        path: path.into(),
                        offset: 0,
                        reason,
                    }),
                    Step::Frame(..) => Err(CaptureError::Corrupt {
                        path: path.into(),
                        offset: 0,
                        reason: "pcapng file does not start with a section header".into(),
                    }),
                }
            }
        }
    }

    fn step(&mut self, b: &[u8]) -> Step {
        match self {
            State::Pcap {
                big_endian,
                nanos,
                link,
            } => {
                let be = *big_endian;
                let (Some(sec), Some(frac), Some(incl), Some(orig)) = (
                    rd_u32(b, 0, be),
                    rd_u32(b, 4, be),
                    rd_u32(b, 8, be),
                    rd_u32(b, 12, be),
                ) else {
                    return Step::Need(16);
                };
                let incl = incl as usize;
                if incl > MAX_RECORD {
                    return Step::Corrupt(format!("record length {incl} exceeds {MAX_RECORD}"));
                }
                if b.len() < 16 + incl {
                    return Step::Need(16 + incl);
                }
                let nsec = if *nanos {
                    frac.min(999_999_999)
                } else {
                    frac.min(999_999).saturating_mul(1000)
                };
                Step::Frame(
                    Timestamp::from_secs_nanos(u64::from(sec), nsec),
                    orig,
                    *link,
                    16,
                    16 + incl,
                    16 + incl,
                )
            }
            State::PcapNg { big_endian, ifaces } => {
                let Some(btype_le) = rd_u32(b, 0, false) else {
                    return Step::Need(12);
                };
                if btype_le == 0x0A0D_0D0A {
                    // Section header: learn the byte order from the byte-order magic.
                    let Some(bom) = b.get(8..12) else {
                        return Step::Need(12);
                    };
                    let be = match bom {
                        [0x1a, 0x2b, 0x3c, 0x4d] => true,
                        [0x4d, 0x3c, 0x2b, 0x1a] => false,
                        _ => return Step::Corrupt("bad pcapng byte-order magic".into()),
                    };
                    *big_endian = be;
                    ifaces.clear();
                }
                let be = *big_endian;
                let (Some(btype), Some(blen)) = (rd_u32(b, 0, be), rd_u32(b, 4, be)) else {
                    return Step::Need(12);
                };
                let blen = blen as usize;
                if blen < 12 || !blen.is_multiple_of(4) || blen > MAX_RECORD {
                    return Step::Corrupt(format!("bad block length {blen}"));
                }
                let Some(block) = b.get(..blen) else {
                    return Step::Need(blen);
                };
                let body = &block[8..blen - 4];
                match btype {
                    // Interface description block.
                    1 => {
                        let (Some(link), Some(snaplen)) =
                            (rd_u16(body, 0, be), rd_u32(body, 4, be))
                        else {
                            return Step::Corrupt("short interface description block".into());
                        };
                        let mut iface = Iface {
                            link: u32::from(link),
                            snaplen,
                            units_per_sec: 1_000_000,
                            offset_secs: 0,
                        };
                        let mut opt = 8;
                        while let (Some(code), Some(len)) =
                            (rd_u16(body, opt, be), rd_u16(body, opt + 2, be))
                        {
                            let len = usize::from(len);
                            let val = body.get(opt + 4..opt + 4 + len).unwrap_or(&[]);
                            match code {
                                0 => break,
                                9 => {
                                    if let Some(&r) = val.first() {
                                        let exp = u32::from(r & 0x7f).min(19);
                                        iface.units_per_sec = if r & 0x80 != 0 {
                                            2u64.saturating_pow(exp)
                                        } else {
                                            10u64.saturating_pow(exp)
                                        }
                                        .max(1);
                                    }
                                }
                                14 if val.len() == 8 => {
                                    let mut a = [0u8; 8];
                                    a.copy_from_slice(val);
                                    iface.offset_secs = if be {
                                        i64::from_be_bytes(a)
                                    } else {
                                        i64::from_le_bytes(a)
                                    };
                                }
                                _ => {}
                            }
                            opt += 4 + len.div_ceil(4) * 4;
                        }
                        if ifaces.len() < 4096 {
                            ifaces.push(iface);
                        }
                        Step::Skip(blen)
                    }
                    // Enhanced packet block.
                    6 => {
                        let (Some(ifid), Some(hi), Some(lo), Some(cap), Some(orig)) = (
                            rd_u32(body, 0, be),
                            rd_u32(body, 4, be),
                            rd_u32(body, 8, be),
                            rd_u32(body, 12, be),
                            rd_u32(body, 16, be),
                        ) else {
                            return Step::Corrupt("short enhanced packet block".into());
                        };
                        let Some(iface) = ifaces.get(ifid as usize) else {
                            return Step::Corrupt(format!(
                                "packet for undeclared interface {ifid}"
                            ));
                        };
                        let cap = cap as usize;
                        if 20 + cap > body.len() {
                            return Step::Corrupt("packet data overruns its block".into());
                        }
                        let ts = pcapng_ts(iface, (u64::from(hi) << 32) | u64::from(lo));
                        Step::Frame(ts, orig, iface.link, 8 + 20, 8 + 20 + cap, blen)
                    }
                    // Simple packet block: interface 0, no timestamp.
                    3 => {
                        let Some(orig) = rd_u32(body, 0, be) else {
                            return Step::Corrupt("short simple packet block".into());
                        };
                        let Some(iface) = ifaces.first() else {
                            return Step::Corrupt("packet before any interface".into());
                        };
                        let mut cap = (orig as usize).min(body.len() - 4);
                        if iface.snaplen > 0 {
                            cap = cap.min(iface.snaplen as usize);
                        }
                        Step::Frame(Timestamp::ZERO, orig, iface.link, 12, 12 + cap, blen)
                    }
                    // Obsolete packet block.
                    2 => {
                        let (Some(ifid), Some(hi), Some(lo), Some(cap), Some(orig)) = (
                            rd_u16(body, 0, be),
                            rd_u32(body, 4, be),
                            rd_u32(body, 8, be),
                            rd_u32(body, 12, be),
                            rd_u32(body, 16, be),
                        ) else {
                            return Step::Corrupt("short packet block".into());
                        };
                        let Some(iface) = ifaces.get(usize::from(ifid)) else {
                            return Step::Corrupt(format!(
                                "packet for undeclared interface {ifid}"
                            ));
                        };
                        let cap = cap as usize;
                        if 20 + cap > body.len() {
                            return Step::Corrupt("packet data overruns its block".into());
                        }
                        let ts = pcapng_ts(iface, (u64::from(hi) << 32) | u64::from(lo));
                        Step::Frame(ts, orig, iface.link, 28, 28 + cap, blen)
                    }
                    _ => Step::Skip(blen),
                }
            }
        }
    }
}

fn pcapng_ts(iface: &Iface, raw: u64) -> Timestamp {
    let ups = iface.units_per_sec;
    // The usual resolutions (microseconds, the default, and nanoseconds) divide by constants
    // (multiplies); any other takes the general division.
    let (secs, nanos) = match ups {
        1_000_000 => (raw / 1_000_000, (raw % 1_000_000) as u32 * 1_000),
        1_000_000_000 => (raw / 1_000_000_000, (raw % 1_000_000_000) as u32),
        _ => (
            raw / ups,
            (u128::from(raw % ups) * 1_000_000_000 / u128::from(ups)) as u32,
        ),
    };
    let secs = (secs as i64).saturating_add(iface.offset_secs).max(0) as u64;
    Timestamp::from_secs_nanos(secs, nanos)
}

/// What the reader found next.
pub enum Next<'a> {
    Frame(RawFrame<'a>),
    /// End of input.
    End,
    /// The input ends in the middle of a record; `missing` bytes of it are absent.
    Truncated {
        offset: u64,
        missing: usize,
    },
}

enum Source {
    Mapped(std::sync::Arc<memmap2::Mmap>),
    Stream {
        input: Box<dyn Read + Send>,
        buf: Vec<u8>,
        start: usize,
        end: usize,
        eof: bool,
    },
}

/// A capture file (or standard input) being read.
pub struct CaptureFile {
    path: String,
    source: Source,
    state: State,
    /// Offset of the parse position in the input.
    pos: u64,
    /// Position inside the mapping (mapped source only).
    map_pos: usize,
    /// The mapping is paged in up to here (mapped source only): see [`POPULATE_CHUNK`].
    populated: usize,
    /// The cache has been asked for the mapping's bytes up to here: see [`READ_AHEAD`].
    ahead: usize,
    pub counters: CaptureCounters,
}

/// A mapped capture is paged in this many bytes at a time, ahead of the reader, with one
/// `madvise(MADV_POPULATE_READ)` (Linux 5.14+; ignored where unsupported) instead of a page
/// fault every few pages.
const POPULATE_CHUNK: usize = 8 << 20;

/// A mapped capture's bytes are asked into the cache this far (bytes) ahead of the frame just
/// read, a line at a time: a few frames on, their record and packet headers are there when read
/// (the hardware's own prefetch stops at each page's end).
const READ_AHEAD: usize = 2048;

impl CaptureFile {
    /// Opens `path` (`-` for standard input) and reads its header.
    pub fn open(path: &Path) -> Result<Self, CaptureError> {
        let name = path.display().to_string();
        if name == "-" {
            return Self::from_reader("-", Box::new(std::io::stdin()));
        }
        let io = |source| CaptureError::Io {
            path: name.clone(),
            source,
        };
        let file = File::open(path).map_err(io)?;
        let meta = file.metadata().map_err(io)?;
        if meta.is_dir() {
            return Err(io(std::io::Error::other("is a directory")));
        }
        if !meta.is_file() {
            // FIFOs, character devices: stream them.
            return Self::from_reader(&name, Box::new(file));
        }
        if meta.len() == 0 {
            return Err(CaptureError::TruncatedHeader { path: name, len: 0 });
        }
        let map = map_file(&file).map_err(io)?;
        let (state, hdr) = State::from_header(&map, &name)?;
        Ok(CaptureFile {
            path: name,
            source: Source::Mapped(std::sync::Arc::new(map)),
            state,
            pos: hdr as u64,
            map_pos: hdr,
            populated: 0,
            ahead: 0,
            counters: CaptureCounters {
                file_bytes: hdr as u64,
                ..Default::default()
            },
        })
    }

    /// Reads a capture from any byte stream (a pipe, standard input).
    pub fn from_reader(name: &str, mut input: Box<dyn Read + Send>) -> Result<Self, CaptureError> {
        let mut buf = vec![0u8; 1 << 20];
        let mut end = 0;
        // Read enough for any file header (pcapng SHBs may carry options).
        while end < 64 {
            match input.read(&mut buf[end..]) {
                Ok(0) => break,
                Ok(n) => end += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(source) => {
                    return Err(CaptureError::Io {
                        path: name.into(),
                        source,
                    })
                }
            }
        }
        let (state, hdr) = State::from_header(&buf[..end], name)?;
        Ok(CaptureFile {
            path: name.into(),
            source: Source::Stream {
                input,
                buf,
                start: hdr,
                end,
                eof: false,
            },
            state,
            pos: hdr as u64,
            map_pos: 0,
            populated: 0,
            ahead: 0,
            counters: CaptureCounters {
                file_bytes: hdr as u64,
                ..Default::default()
            },
        })
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    /// The whole mapping, for callers that hand out frame positions instead of slices.
    pub fn mapped_bytes(&self) -> Option<&[u8]> {
        match &self.source {
            Source::Mapped(m) => Some(m),
            Source::Stream { .. } => None,
        }
    }

    /// The mapping, shared: workers read frames in place from it.
    pub fn shared_map(&self) -> Option<std::sync::Arc<memmap2::Mmap>> {
        match &self.source {
            Source::Mapped(m) => Some(std::sync::Arc::clone(m)),
            Source::Stream { .. } => None,
        }
    }

    /// Reads the next frame. Errors are returned only for corrupt structure; a clean end of input
    /// is [`Next::End`] and a cut record is [`Next::Truncated`].
    pub fn next_frame(&mut self) -> Result<Next<'_>, CaptureError> {
        loop {
            let exhausted = self.stream_exhausted();
            let avail: &[u8] = match &self.source {
                Source::Mapped(m) => m.get(self.map_pos..).unwrap_or(&[]),
                Source::Stream {
                    buf, start, end, ..
                } => buf.get(*start..*end).unwrap_or(&[]),
            };
            let have = avail.len();
            if have == 0 && exhausted {
                return Ok(Next::End);
            }
            let step = if have == 0 {
                Step::Need(1)
            } else {
                self.state.step(avail)
            };
            match step {
                Step::Frame(ts, wire_len, link, ds, de, used) => {
                    self.counters.frames += 1;
                    self.counters.file_bytes += used as u64;
                    self.pos += used as u64;
                    let (base, buf): (usize, &[u8]) = match &mut self.source {
                        Source::Mapped(m) => {
                            let b = self.map_pos;
                            self.map_pos += used;
                            if self.map_pos + POPULATE_CHUNK / 2 > self.populated {
                                populate(m, &mut self.populated);
                            }
                            let until = (self.map_pos + READ_AHEAD).min(m.len());
                            while self.ahead < until {
                                crate::capture::prefetch(m.get(self.ahead..).unwrap_or(&[]));
                                self.ahead += 64;
                            }
                            (b, m)
                        }
                        Source::Stream { buf, start, .. } => {
                            let b = *start;
                            *start += used;
                            (b, buf)
                        }
                    };
                    let bytes = buf.get(base + ds..base + de).unwrap_or(&[]);
                    return Ok(Next::Frame(RawFrame {
                        ts,
                        wire_len: wire_len.max(bytes.len() as u32),
                        link,
                        bytes,
                    }));
                }
                Step::Skip(used) => {
                    self.counters.other_blocks += 1;
                    self.counters.file_bytes += used as u64;
                    self.pos += used as u64;
                    match &mut self.source {
                        Source::Mapped(_) => self.map_pos += used,
                        Source::Stream { start, .. } => *start += used,
                    }
                }
                Step::Need(n) => {
                    if !self.refill(n)? {
                        if have == 0 {
                            return Ok(Next::End);
                        }
                        let offset = self.pos;
                        // Consume the rest so that a further call returns End.
                        let rest = self.available();
                        self.counters.file_bytes += rest as u64;
                        self.pos += rest as u64;
                        match &mut self.source {
                            Source::Mapped(m) => self.map_pos = m.len(),
                            Source::Stream { start, end, .. } => *start = *end,
                        }
                        return Ok(Next::Truncated {
                            offset,
                            missing: n.saturating_sub(have),
                        });
                    }
                }
                Step::Corrupt(reason) => {
                    return Err(CaptureError::Corrupt {
                        path: self.path.clone(),
                        offset: self.pos,
                        reason,
                    })
                }
            }
        }
    }

    fn available(&self) -> usize {
        match &self.source {
            Source::Mapped(m) => m.len().saturating_sub(self.map_pos),
            Source::Stream { start, end, .. } => end - start,
        }
    }

    fn stream_exhausted(&self) -> bool {
        match &self.source {
            Source::Mapped(_) => true,
            Source::Stream { eof, .. } => *eof,
        }
    }

    /// Makes at least `need` bytes available from the parse position. Returns false at end of
    /// input.
    fn refill(&mut self, need: usize) -> Result<bool, CaptureError> {
        let Source::Stream {
            input,
            buf,
            start,
            end,
            eof,
        } = &mut self.source
        else {
            return Ok(false);
        };
        while *end - *start < need {
            if *eof {
                return Ok(false);
            }
            if *start > 0 {
                buf.copy_within(*start..*end, 0);
                *end -= *start;
                *start = 0;
            }
            if need > buf.len() {
                buf.resize(need.min(MAX_RECORD + 64).max(buf.len()), 0);
            }
            match input.read(&mut buf[*end..]) {
                Ok(0) => *eof = true,
                Ok(n) => *end += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(source) => {
                    return Err(CaptureError::Io {
                        path: self.path.clone(),
                        source,
                    })
                }
            }
        }
        Ok(true)
    }
}

/// Pages in the next [`POPULATE_CHUNK`] of `m` from `*upto` on.
fn populate(m: &memmap2::Mmap, upto: &mut usize) {
    #[cfg(target_os = "linux")]
    if *upto < m.len() {
        let len = POPULATE_CHUNK.min(m.len() - *upto);
        let _ = m.advise_range(memmap2::Advice::PopulateRead, *upto, len);
    }
    #[cfg(not(target_os = "linux"))]
    let _ = m;
    *upto += POPULATE_CHUNK;
}

/// Pages of a mapped capture are given back this many bytes at a time (see [`Release`]).
const RELEASE_CHUNK: usize = 16 << 20;

/// Gives back the pages of a mapped capture behind its readers. Once every frame before an
/// offset is processed, the pages up to it leave the process (`madvise(MADV_DONTNEED)`; they
/// stay in the page cache), so resident memory stays bounded whatever the capture's length,
/// and the end of a run does not unmap the whole capture at once.
pub struct Release {
    map: std::sync::Arc<memmap2::Mmap>,
    /// Given back up to here.
    done: usize,
}

impl Release {
    pub fn new(map: std::sync::Arc<memmap2::Mmap>) -> Self {
        Release { map, done: 0 }
    }

    /// The mapping.
    pub fn map(&self) -> &std::sync::Arc<memmap2::Mmap> {
        &self.map
    }

    /// Offset of `bytes` (a frame) in the mapping, if they are in it.
    pub fn offset_of(&self, bytes: &[u8]) -> Option<usize> {
        (bytes.as_ptr() as usize)
            .checked_sub(self.map.as_ptr() as usize)
            .filter(|&o| o <= self.map.len())
    }

    /// Nothing before `offset` will be read again: gives back the whole chunks before it.
    #[allow(unsafe_code)]
    pub fn upto(&mut self, offset: usize) {
        let end = offset.min(self.map.len()) / RELEASE_CHUNK * RELEASE_CHUNK;
        if end <= self.done {
            return;
        }
        #[cfg(target_os = "linux")]
        // SAFETY: the mapping is a read-only shared mapping of a file (`map_file`): after
        // MADV_DONTNEED, a later access reads the same bytes from the file again (the caveat of
        // a file changed while mapped is `map_file`'s). The range is in bounds and page aligned
        // (the mapping starts on a page, chunks are multiples of any page size).
        let _ = unsafe {
            self.map.unchecked_advise_range(
                memmap2::UncheckedAdvice::DontNeed,
                self.done,
                end - self.done,
            )
        };
        self.done = end;
    }
}

#[allow(unsafe_code)]
fn map_file(file: &File) -> std::io::Result<memmap2::Mmap> {
    // SAFETY: the mapping is read-only and its bytes are treated as untrusted input. If another
    // process truncates the file while it is mapped, reads past the new end raise SIGBUS; this is
    // the documented risk of replaying a capture that is still being written (use `-` and a pipe
    // for that).
    let map = unsafe { memmap2::Mmap::map(file)? };
    #[cfg(unix)]
    let _ = map.advise(memmap2::Advice::Sequential);
    Ok(map)
}

/// The ordered list of inputs of one replay: several files form one timeline.
pub fn open_all(paths: &[PathBuf]) -> Result<Vec<CaptureFile>, CaptureError> {
    paths.iter().map(|p| CaptureFile::open(p)).collect()
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn pcapng_timestamps_at_every_resolution() {
        let at = |units_per_sec: u64, raw: u64| {
            let iface = Iface {
                link: 1,
                snaplen: 0,
                units_per_sec,
                offset_secs: 0,
            };
            pcapng_ts(&iface, raw)
        };
        // 1,764,000,000.123456789 s in each resolution.
        assert_eq!(
            at(1_000_000, 1_764_000_000_123_456),
            Timestamp::from_secs_nanos(1_764_000_000, 123_456_000)
        );
        assert_eq!(
            at(1_000_000_000, 1_764_000_000_123_456_789),
            Timestamp::from_secs_nanos(1_764_000_000, 123_456_789)
        );
        assert_eq!(
            at(1_000, 1_764_000_000_123),
            Timestamp::from_secs_nanos(1_764_000_000, 123_000_000)
        );
        // Binary: 2^20 units per second, half a second.
        assert_eq!(
            at(1 << 20, (1_764_000_000 << 20) | (1 << 19)),
            Timestamp::from_secs_nanos(1_764_000_000, 500_000_000)
        );
        // The largest raw value: no overflow (the nanosecond clock saturates).
        assert_eq!(
            at(1_000_000, u64::MAX),
            Timestamp::from_secs_nanos(u64::MAX / 1_000_000, 551_615_000)
        );
    }

    /// Resident bytes of the mapping that starts at `addr` (its line in /proc/self/smaps).
    fn resident(addr: usize) -> u64 {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let mut lines = smaps.lines();
        while let Some(l) = lines.next() {
            let start = l.split('-').next().unwrap_or("");
            if usize::from_str_radix(start, 16) == Ok(addr) {
                for l in lines.by_ref() {
                    if let Some(kb) = l.strip_prefix("Rss:") {
                        let kb = kb.trim().trim_end_matches("kB").trim();
                        return kb.parse::<u64>().unwrap() * 1024;
                    }
                }
            }
        }
        panic!("mapping not found");
    }

    #[test]
    fn released_pages_leave_the_process_and_read_back_the_same() {
        let path = std::env::temp_dir().join(format!("tw-release-{}.bin", std::process::id()));
        let len = 3 * RELEASE_CHUNK + 4096;
        let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let map = std::sync::Arc::new(map_file(&File::open(&path).unwrap()).unwrap());
        let sum = |m: &memmap2::Mmap| m.iter().map(|&b| u64::from(b)).sum::<u64>();
        let expected = sum(&map);
        let addr = map.as_ptr() as usize;
        assert!(
            resident(addr) >= len as u64 - 4096,
            "all read: all resident"
        );
        let mut r = Release::new(std::sync::Arc::clone(&map));
        // Not a whole chunk yet: nothing goes.
        r.upto(RELEASE_CHUNK - 1);
        assert!(resident(addr) >= len as u64 - 4096);
        // Two whole chunks before the offset go; the rest stays.
        let offset = r.offset_of(&map[2 * RELEASE_CHUNK + 10..]).unwrap();
        r.upto(offset);
        let left = resident(addr);
        assert!(
            left <= (RELEASE_CHUNK + 4096) as u64,
            "{left} bytes still resident"
        );
        // Read again, the bytes are the file's.
        assert_eq!(sum(&map), expected);
        drop(r);
        drop(map);
        let _ = std::fs::remove_file(&path);
    }
}
