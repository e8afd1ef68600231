//! WebSocket (RFC 6455) frame decoder used for MQTT over WebSocket.
//!
//! Streaming: frame headers are gathered in a 14-byte array, payloads are
//! unmasked through a reusable scratch buffer and handed on as they arrive,
//! so nothing is buffered beyond one header. Only binary data frames (and
//! their continuations) are delivered; text and control frames are skipped.

/// Scratch size used to unmask payload pieces.
const SCRATCH: usize = 4096;

pub(crate) struct WsDecoder {
    hdr: [u8; 14],
    hdr_len: usize,
    /// Payload bytes left in the current frame (valid when `in_payload`).
    remaining: u64,
    in_payload: bool,
    mask: [u8; 4],
    masked: bool,
    mask_pos: usize,
    /// The current frame's payload is handed on.
    deliver: bool,
    /// The current (possibly fragmented) data message is binary.
    msg_binary: bool,
    dead: bool,
    scratch: Vec<u8>,
}

impl WsDecoder {
    pub(crate) fn new() -> Self {
        WsDecoder {
            hdr: [0; 14],
            hdr_len: 0,
            remaining: 0,
            in_payload: false,
            mask: [0; 4],
            masked: false,
            mask_pos: 0,
            deliver: false,
            msg_binary: false,
            dead: false,
            scratch: Vec::new(),
        }
    }

    /// Decode `data`; `deliver` receives unmasked binary payload pieces.
    /// Returns the name of an anomaly, after which the decoder is dead.
    pub(crate) fn feed<F: FnMut(&[u8])>(
        &mut self,
        data: &[u8],
        mut deliver: F,
    ) -> Option<&'static str> {
        let mut input = data;
        while !input.is_empty() {
            if self.dead {
                return None;
            }
            if self.in_payload {
                let n = usize::try_from(self.remaining)
                    .unwrap_or(usize::MAX)
                    .min(input.len());
                let (piece, rest) = input.split_at(n);
                input = rest;
                self.remaining -= n as u64;
                if self.deliver {
                    if self.masked {
                        for part in piece.chunks(SCRATCH) {
                            self.scratch.clear();
                            for &b in part {
                                let k = self.mask.get(self.mask_pos % 4).copied().unwrap_or(0);
                                self.scratch.push(b ^ k);
                                self.mask_pos = (self.mask_pos + 1) % 4;
                            }
                            deliver(&self.scratch);
                        }
                    } else {
                        deliver(piece);
                    }
                }
                if self.remaining == 0 {
                    self.in_payload = false;
                }
                continue;
            }
            // Header bytes.
            let Some((&b, rest)) = input.split_first() else {
                break;
            };
            input = rest;
            if let Some(slot) = self.hdr.get_mut(self.hdr_len) {
                *slot = b;
                self.hdr_len += 1;
            }
            if let Some(name) = self.try_header() {
                self.dead = true;
                return Some(name);
            }
        }
        None
    }

    /// Complete the header if all its bytes are there.
    fn try_header(&mut self) -> Option<&'static str> {
        let (Some(&b0), Some(&b1)) = (self.hdr.first(), self.hdr.get(1)) else {
            return None;
        };
        let len7 = b1 & 0x7f;
        let ext = match len7 {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let masked = b1 & 0x80 != 0;
        let need = 2 + ext + if masked { 4 } else { 0 };
        if self.hdr_len < need {
            return None;
        }
        let ext_bytes = self.hdr.get(2..2 + ext).unwrap_or_default();
        let len = match ext {
            0 => u64::from(len7),
            _ => ext_bytes
                .iter()
                .fold(0u64, |acc, &x| (acc << 8) | u64::from(x)),
        };
        if len >> 63 != 0 {
            return Some("websocket.bad_length");
        }
        if b0 & 0x40 != 0 {
            // RSV1: permessage-deflate; the MQTT stream cannot be read.
            return Some("websocket.compressed");
        }
        let opcode = b0 & 0x0f;
        self.deliver = match opcode {
            0 => self.msg_binary,
            1 => {
                self.msg_binary = false;
                false
            }
            2 => {
                self.msg_binary = true;
                true
            }
            8..=10 => {
                if len > 125 {
                    return Some("websocket.bad_control_frame");
                }
                false
            }
            _ => return Some("websocket.bad_opcode"),
        };
        self.masked = masked;
        if masked {
            let m = self.hdr.get(2 + ext..6 + ext).unwrap_or_default();
            for (dst, src) in self.mask.iter_mut().zip(m) {
                *dst = *src;
            }
        }
        self.mask_pos = 0;
        self.remaining = len;
        self.in_payload = len > 0;
        self.hdr_len = 0;
        None
    }

    /// `len` bytes missing. Returns true when they fell inside a delivered
    /// payload (the consumer must be told about the gap), false otherwise;
    /// a gap that breaks framing kills the decoder.
    pub(crate) fn on_gap(&mut self, len: u64) -> bool {
        if self.dead {
            return false;
        }
        if self.in_payload && len <= self.remaining {
            self.remaining -= len;
            self.mask_pos = (self.mask_pos + (len % 4) as usize) % 4;
            if self.remaining == 0 {
                self.in_payload = false;
            }
            return self.deliver;
        }
        self.dead = true;
        false
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::XorShift;
    use super::*;

    fn frame(opcode: u8, fin: bool, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
        let mut v = vec![opcode | if fin { 0x80 } else { 0 }];
        let m = if mask.is_some() { 0x80 } else { 0 };
        match payload.len() {
            n if n < 126 => v.push(m | n as u8),
            n if n < 65536 => {
                v.push(m | 126);
                v.extend((n as u16).to_be_bytes());
            }
            n => {
                v.push(m | 127);
                v.extend((n as u64).to_be_bytes());
            }
        }
        match mask {
            Some(k) => {
                v.extend(k);
                v.extend(payload.iter().enumerate().map(|(i, b)| b ^ k[i % 4]));
            }
            None => v.extend(payload),
        }
        v
    }

    fn decode(bytes: &[u8], piece: usize) -> (Vec<u8>, Option<&'static str>) {
        let mut d = WsDecoder::new();
        let mut got = Vec::new();
        let mut err = None;
        for c in bytes.chunks(piece) {
            if let Some(e) = d.feed(c, |p| got.extend_from_slice(p)) {
                err = Some(e);
            }
        }
        (got, err)
    }

    #[test]
    fn masked_binary_fragmented_and_control() {
        let big: Vec<u8> = (0..70_000u32).map(|i| i as u8).collect();
        let mut s = frame(2, false, b"hello ", Some([1, 2, 3, 4]));
        s.extend(frame(9, true, b"ping", Some([9, 9, 9, 9])));
        s.extend(frame(0, true, b"world", Some([5, 6, 7, 8])));
        s.extend(frame(1, true, b"text is skipped", None));
        s.extend(frame(2, true, &big, None));
        for piece in [1, 3, 7, 1000, 100_000] {
            let (got, err) = decode(&s, piece);
            assert_eq!(err, None);
            assert_eq!(&got[..11], b"hello world");
            assert_eq!(&got[11..], &big[..]);
        }
    }

    #[test]
    fn bad_frames() {
        assert_eq!(decode(&[0x83, 0x00], 10).1, Some("websocket.bad_opcode"));
        assert_eq!(decode(&[0xc2, 0x00], 10).1, Some("websocket.compressed"));
        assert_eq!(
            decode(&[0x82, 0x7f, 0x80, 0, 0, 0, 0, 0, 0, 0], 10).1,
            Some("websocket.bad_length")
        );
    }

    #[test]
    fn fuzz_ws_no_panic() {
        let mut rng = XorShift::new(42);
        for _ in 0..30_000 {
            let mut d = WsDecoder::new();
            let data = rng.bytes_upto(100);
            let _ = d.feed(&data, |_| {});
            d.on_gap(rng.next() % 50);
            let _ = d.feed(&data, |_| {});
        }
    }
}
