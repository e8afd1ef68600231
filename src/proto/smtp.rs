//! SMTP, only as far as STARTTLS: the client's `STARTTLS` answered by `220`
//! hands the flow to the TLS analyzer.

use super::ftp::{reply_done, split_command, LineBuf};
use super::{dir_index, Control, Direction, ProtoEvent};

pub(crate) struct SmtpAnalyzer {
    lines: [LineBuf; 2],
    multi: Option<u16>,
    starttls_pending: bool,
    done: bool,
}

impl SmtpAnalyzer {
    pub(crate) fn new(max_buffer: usize) -> Self {
        SmtpAnalyzer {
            lines: [LineBuf::new(max_buffer), LineBuf::new(max_buffer)],
            multi: None,
            starttls_pending: false,
            done: false,
        }
    }

    pub(crate) fn on_data(
        &mut self,
        dir: Direction,
        data: &[u8],
        _out: &mut Vec<ProtoEvent>,
    ) -> Control {
        let i = dir_index(dir);
        let mut rest = data;
        while !self.done {
            let Some(lb) = self.lines.get_mut(i) else {
                break;
            };
            let Some(line) = lb.next_line(rest) else {
                break;
            };
            rest = rest.get(line.used..).unwrap_or_default();
            let mut start = false;
            match dir {
                Direction::Forward => {
                    let (verb, _) = split_command(&line.text);
                    // Commands may be pipelined; STARTTLS must be the last one.
                    self.starttls_pending = verb == "STARTTLS";
                }
                Direction::Reverse => {
                    if let Some(code) = reply_done(&mut self.multi, &line.text) {
                        start = std::mem::replace(&mut self.starttls_pending, false) && code == 220;
                    }
                }
            }
            if let Some(lb) = self.lines.get_mut(i) {
                lb.recycle(line.text);
            }
            if start {
                self.done = true;
                return Control::StartTls {
                    consumed: data.len() - rest.len(),
                };
            }
        }
        Control::Continue
    }

    /// Bytes of the buffers, each measured by `m` (`Vec::len`: content; `Vec::capacity`:
    /// memory).
    pub(crate) fn bytes(&self, m: fn(&Vec<u8>) -> usize) -> usize {
        self.lines.iter().map(|l| l.bytes(m)).sum()
    }

    pub(crate) fn on_gap(&mut self, dir: Direction, _len: u64) {
        if let Some(lb) = self.lines.get_mut(dir_index(dir)) {
            lb.clear();
        }
        if dir == Direction::Reverse {
            self.multi = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::super::{AppProto, ProtoLimits};
    use super::*;

    #[test]
    fn starttls_from_capture() {
        // shared/pcaps/tls/zeek_smtp_starttls.pcap (zeek, BSD): EHLO, STARTTLS, 220, ClientHello.
        let (ev, st) = run(
            25,
            &fixture(include_str!("testdata/zeek_smtp_starttls.hex")),
            ProtoLimits::default(),
        );
        assert_eq!(
            ev.first(),
            Some(&ProtoEvent::Detected {
                app: AppProto::Smtp
            })
        );
        assert!(ev.contains(&ProtoEvent::StartTls {
            app: AppProto::Smtp
        }));
        assert!(st.encrypted());
        let ja3 = ev.iter().find_map(|e| match e {
            ProtoEvent::TlsClientHello { ja3, sni, .. } => Some((ja3.clone(), sni.clone())),
            _ => None,
        });
        // tshark 4.0 tls.handshake.ja3 for this ClientHello.
        assert_eq!(ja3, Some(("13020a4ccb11b2d3c9c0e6c285c3c415".into(), None)));
        // ja4plus 1.4.0 on the same capture.
        assert!(ev.iter().any(|e| matches!(e, ProtoEvent::TlsClientHello { ja4, .. } if ja4 == "t12i800600_15c493246000_4446390ac224")));
        assert!(ev.iter().any(|e| matches!(
            e,
            ProtoEvent::TlsServerHello {
                version: 0x0303,
                ..
            }
        )));
    }

    #[test]
    fn refused_starttls_stays_clear() {
        let mut a = SmtpAnalyzer::new(1 << 16);
        let mut out = Vec::new();
        assert_eq!(
            a.on_data(Direction::Forward, b"STARTTLS\r\n", &mut out),
            Control::Continue
        );
        assert_eq!(
            a.on_data(Direction::Reverse, b"454 TLS not available\r\n", &mut out),
            Control::Continue
        );
        assert_eq!(
            a.on_data(Direction::Forward, b"MAIL FROM:<a@b>\r\n", &mut out),
            Control::Continue
        );
        assert_eq!(
            a.on_data(Direction::Reverse, b"220 ok\r\n", &mut out),
            Control::Continue
        );
    }

    #[test]
    fn fuzz_smtp_no_panic() {
        let mut rng = XorShift::new(0x5717);
        for _ in 0..25_000 {
            let mut a = SmtpAnalyzer::new(1 << 16);
            let mut out = Vec::new();
            let mut v = rng.bytes_upto(40);
            if rng.one_in(2) {
                v.splice(0..0, b"STARTTLS\r\n".iter().copied());
            }
            let _ = a.on_data(Direction::Forward, &v, &mut out);
            let _ = a.on_data(Direction::Reverse, &rng.bytes_upto(40), &mut out);
            a.on_gap(Direction::Reverse, 1);
        }
    }
}
