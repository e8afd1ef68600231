//! Capture stage: reads frames from capture files (pcap and pcapng, detected by magic bytes) or
//! from a live interface through libpcap.
//!
//! Owns: the open file mapping or stream buffer, and the per-interface link types of pcapng
//! sections. Hands on: [`RawFrame`], borrowed from the reader's buffer (the memory map for files)
//! and valid until the next read. Nothing is copied here.

pub mod file;
#[cfg(feature = "live")]
pub mod live;
pub mod stream;

use crate::time::Timestamp;

/// LINKTYPE_* values (<https://www.tcpdump.org/linktypes.html>) that the decoder understands.
pub mod linktype {
    pub const NULL: u32 = 0;
    pub const ETHERNET: u32 = 1;
    pub const RAW_OLD: u32 = 12; // DLT_RAW on most BSDs
    pub const RAW_OLD2: u32 = 14; // DLT_RAW on OpenBSD
    pub const LOOP: u32 = 108;
    pub const RAW: u32 = 101;
    pub const LINUX_SLL: u32 = 113;
    pub const IPV4: u32 = 228;
    pub const IPV6: u32 = 229;
    pub const NFLOG: u32 = 239;
    pub const LINUX_SLL2: u32 = 276;
}

/// One captured frame, borrowed from the reader.
#[derive(Clone, Copy, Debug)]
pub struct RawFrame<'a> {
    /// Capture time.
    pub ts: Timestamp,
    /// Length of the frame on the wire (may exceed `bytes.len()` when the capture was snapped).
    pub wire_len: u32,
    /// LINKTYPE of the interface the frame was captured on.
    pub link: u32,
    /// The captured bytes.
    pub bytes: &'a [u8],
}

/// Counters kept by a capture source.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CaptureCounters {
    /// Records read.
    pub frames: u64,
    /// pcapng blocks that are not packets (statistics, name resolution, custom...).
    pub other_blocks: u64,
    /// Bytes of the input consumed.
    pub file_bytes: u64,
    /// Packets received / dropped by the kernel and by the interface (live capture only).
    pub kernel_received: u64,
    pub kernel_drops: u64,
    pub if_drops: u64,
}

/// Asks the CPU to bring the first bytes of `b` into cache (a hint: no effect on results).
#[inline]
#[allow(unsafe_code)]
pub fn prefetch(b: &[u8]) {
    #[cfg(target_arch = "x86_64")]
    if let Some(p) = b.first() {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        // SAFETY: SSE is part of x86_64's baseline, and a prefetch never faults or reads
        // memory into the program: it only hints the cache (the address is a live byte anyway).
        unsafe { _mm_prefetch::<_MM_HINT_T0>(std::ptr::from_ref(p).cast::<i8>()) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = b;
}
