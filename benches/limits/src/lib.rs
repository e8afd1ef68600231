//! A minimal classic-pcap reader over a memory map, shared by the two bare loops.

use std::fs::File;
use std::time::Instant;

pub struct Capture {
    map: memmap2::Mmap,
    big_endian: bool,
    pub link_type: u32,
}

impl Capture {
    /// Maps `path` (from the first argument) and checks the classic pcap header.
    pub fn open_from_args(prog: &str) -> Capture {
        let path = match std::env::args_os().nth(1) {
            Some(p) => p,
            None => {
                eprintln!("usage: {prog} FILE.pcap");
                std::process::exit(2);
            }
        };
        let file = File::open(&path).unwrap_or_else(|e| {
            eprintln!("{prog}: {}: {e}", path.to_string_lossy());
            std::process::exit(2)
        });
        // SAFETY: the file is only read; a capture changed while mapped is the caller's problem,
        // as for tapwatch itself.
        let map = unsafe { memmap2::Mmap::map(&file) }.unwrap_or_else(|e| {
            eprintln!("{prog}: mmap: {e}");
            std::process::exit(2)
        });
        let _ = map.advise(memmap2::Advice::Sequential);
        if map.len() < 24 {
            eprintln!("{prog}: not a pcap file");
            std::process::exit(2);
        }
        let big_endian = match &map[..4] {
            [0xd4, 0xc3, 0xb2, 0xa1] | [0x4d, 0x3c, 0xb2, 0xa1] => false,
            [0xa1, 0xb2, 0xc3, 0xd4] | [0xa1, 0xb2, 0x3c, 0x4d] => true,
            _ => {
                eprintln!("{prog}: not a classic pcap file (pcapng is not supported here)");
                std::process::exit(2);
            }
        };
        let mut c = Capture {
            map,
            big_endian,
            link_type: 0,
        };
        c.link_type = c.u32_at(20);
        c
    }

    #[inline(always)]
    fn u32_at(&self, off: usize) -> u32 {
        let b: [u8; 4] = self.map[off..off + 4].try_into().unwrap();
        if self.big_endian {
            u32::from_be_bytes(b)
        } else {
            u32::from_le_bytes(b)
        }
    }

    /// Calls `f(frame, wire_len)` for every record; returns the number of records.
    #[inline(always)]
    pub fn for_each(&self, mut f: impl FnMut(&[u8], u32)) -> u64 {
        let data = &self.map[..];
        let mut off = 24usize;
        let mut n = 0u64;
        while off + 16 <= data.len() {
            let incl = self.u32_at(off + 8) as usize;
            let wire = self.u32_at(off + 12);
            let start = off + 16;
            if start + incl > data.len() {
                eprintln!("capture cut in the last record; stopped there");
                break;
            }
            f(&data[start..start + incl], wire);
            n += 1;
            off = start + incl;
        }
        n
    }
}

/// Prints the common lines: packets, seconds, packets/s.
pub fn report(packets: u64, bytes: u64, t0: Instant) {
    let secs = t0.elapsed().as_secs_f64().max(1e-9);
    println!("packets      {packets}");
    println!("bytes        {bytes}");
    println!("seconds      {secs:.3}");
    println!("packets/s    {:.0}", packets as f64 / secs);
}
