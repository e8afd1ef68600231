//! Streamed inputs (standard input, FIFOs, character devices) read on a helper thread, so that
//! the replay loop never sits in a blocking `read` it cannot leave: when no bytes arrive for a
//! moment, the reader answers [`std::io::ErrorKind::WouldBlock`], and the caller checks its stop
//! flag, flushes its output and asks again. Regular files are memory-mapped as before.

use super::file::{CaptureError, CaptureFile};
use crossbeam_channel::{Receiver, RecvTimeoutError};
use std::io::{self, Read};
use std::path::Path;
use std::time::Duration;

/// How long a read waits for bytes before answering `WouldBlock`.
pub const POLL: Duration = Duration::from_millis(100);

/// Bytes that must arrive before reads may answer `WouldBlock` (the file header is read with
/// blocking semantics).
const HEADER: usize = 64;

/// Receives the chunks read by the helper thread.
pub struct PolledReader {
    rx: Receiver<io::Result<Vec<u8>>>,
    chunk: Vec<u8>,
    pos: usize,
    delivered: usize,
}

impl PolledReader {
    /// Starts the helper thread reading `input` in chunks of up to 64 KiB. At most 16 chunks wait
    /// in the channel (1 MiB), so a fast producer is held back, not buffered without bound.
    pub fn spawn(name: &str, mut input: Box<dyn Read + Send>) -> io::Result<Self> {
        let (tx, rx) = crossbeam_channel::bounded(16);
        std::thread::Builder::new()
            .name(format!("read {name}"))
            .spawn(move || loop {
                let mut buf = vec![0u8; 64 << 10];
                match input.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        buf.truncate(n);
                        if tx.send(Ok(buf)).is_err() {
                            break;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        break;
                    }
                }
            })?;
        Ok(PolledReader {
            rx,
            chunk: Vec::new(),
            pos: 0,
            delivered: 0,
        })
    }
}

impl Read for PolledReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos >= self.chunk.len() {
            let next = if self.delivered < HEADER {
                self.rx.recv().map_err(|_| RecvTimeoutError::Disconnected)
            } else {
                self.rx.recv_timeout(POLL)
            };
            match next {
                Ok(Ok(c)) => {
                    self.chunk = c;
                    self.pos = 0;
                }
                Ok(Err(e)) => return Err(e),
                Err(RecvTimeoutError::Timeout) => {
                    return Err(io::Error::new(
                        io::ErrorKind::WouldBlock,
                        "no input for now",
                    ))
                }
                Err(RecvTimeoutError::Disconnected) => return Ok(0),
            }
        }
        let rest = self.chunk.get(self.pos..).unwrap_or_default();
        let n = rest.len().min(buf.len());
        buf[..n].copy_from_slice(&rest[..n]);
        self.pos += n;
        self.delivered = self.delivered.saturating_add(n);
        Ok(n)
    }
}

/// True for the error a [`PolledReader`] gives when no input arrived for a moment.
pub fn is_idle(e: &CaptureError) -> bool {
    matches!(e, CaptureError::Io { source, .. } if source.kind() == io::ErrorKind::WouldBlock)
}

/// Opens a replay input: regular files are mapped ([`CaptureFile::open`]); standard input (`-`),
/// FIFOs and devices are read through a [`PolledReader`].
pub fn open_input(path: &Path) -> Result<CaptureFile, CaptureError> {
    let name = path.display().to_string();
    let io_err = |source| CaptureError::Io {
        path: name.clone(),
        source,
    };
    let input: Box<dyn Read + Send> = if name == "-" {
        Box::new(io::stdin())
    } else {
        match std::fs::metadata(path) {
            Ok(m) if !m.is_file() && !m.is_dir() => {
                Box::new(std::fs::File::open(path).map_err(io_err)?)
            }
            _ => return CaptureFile::open(path),
        }
    };
    let reader = PolledReader::spawn(&name, input).map_err(io_err)?;
    CaptureFile::from_reader(&name, Box::new(reader))
}
