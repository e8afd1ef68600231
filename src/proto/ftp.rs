//! FTP control channel: USER / PASS with the reply that judges them,
//! multi-line replies, and AUTH TLS / AUTH SSL (answered 234) which hands the
//! flow to the TLS analyzer: no clear-text event is produced after that.
//!
//! Also hosts [`LineBuf`], the bounded line splitter shared with SMTP.

use super::{dir_index, AppProto, Control, Direction, Outcome, ProtoEvent};

/// Longest command / reply line kept.
pub(crate) const LINE_MAX: usize = 2048;

/// Bounded line splitter (LF-terminated; a CR before the LF is removed).
/// Longer lines are truncated and flagged.
pub(crate) struct LineBuf {
    buf: Vec<u8>,
    overflow: bool,
    max: usize,
}

pub(crate) struct Line {
    pub(crate) text: Vec<u8>,
    /// Input bytes used to complete this line.
    pub(crate) used: usize,
    pub(crate) truncated: bool,
}

impl LineBuf {
    /// Lines are kept up to `min(LINE_MAX, max_buffer)` bytes.
    pub(crate) fn new(max_buffer: usize) -> Self {
        LineBuf {
            buf: Vec::new(),
            overflow: false,
            max: LINE_MAX.min(max_buffer),
        }
    }

    /// The next complete line, or None once all of `input` was buffered.
    pub(crate) fn next_line(&mut self, input: &[u8]) -> Option<Line> {
        match input.iter().position(|&b| b == b'\n') {
            Some(p) => {
                self.append(input.get(..p).unwrap_or_default());
                let mut text = std::mem::take(&mut self.buf);
                if text.last() == Some(&b'\r') {
                    text.pop();
                }
                let truncated = std::mem::replace(&mut self.overflow, false);
                Some(Line {
                    text,
                    used: p + 1,
                    truncated,
                })
            }
            None => {
                self.append(input);
                None
            }
        }
    }

    /// Give a line's buffer back for reuse.
    pub(crate) fn recycle(&mut self, mut text: Vec<u8>) {
        if self.buf.is_empty() {
            text.clear();
            self.buf = text;
        }
    }

    fn append(&mut self, b: &[u8]) {
        let room = self.max.saturating_sub(self.buf.len());
        if b.len() > room {
            self.overflow = true;
        }
        self.buf
            .extend_from_slice(b.get(..room.min(b.len())).unwrap_or_default());
    }

    /// The line's buffer measured by `m`.
    pub(crate) fn bytes(&self, m: fn(&Vec<u8>) -> usize) -> usize {
        m(&self.buf)
    }

    pub(crate) fn clear(&mut self) {
        self.buf.clear();
        self.overflow = false;
    }
}

/// A reply line: (code, is the last line of the reply).
pub(crate) fn reply_code(line: &[u8]) -> Option<(u16, bool)> {
    let d = line.get(..3)?;
    if !d.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let code = d
        .iter()
        .fold(0u16, |acc, &c| acc * 10 + u16::from(c - b'0'));
    match line.get(3) {
        None | Some(b' ') => Some((code, true)),
        Some(b'-') => Some((code, false)),
        _ => None,
    }
}

/// Multi-line reply tracking (`ddd-` ... `ddd `). Returns the code once the
/// reply is complete.
pub(crate) fn reply_done(multi: &mut Option<u16>, line: &[u8]) -> Option<u16> {
    match *multi {
        Some(code) => match reply_code(line) {
            Some((c, true)) if c == code => {
                *multi = None;
                Some(code)
            }
            _ => None,
        },
        None => match reply_code(line)? {
            (code, true) => Some(code),
            (code, false) => {
                *multi = Some(code);
                None
            }
        },
    }
}

/// Split a command line into (upper-case verb, argument).
pub(crate) fn split_command(line: &[u8]) -> (String, &[u8]) {
    let sp = line.iter().position(|&b| b == b' ').unwrap_or(line.len());
    let verb = String::from_utf8_lossy(line.get(..sp).unwrap_or_default()).to_ascii_uppercase();
    (verb, line.get(sp + 1..).unwrap_or_default())
}

pub(crate) struct FtpAnalyzer {
    lines: [LineBuf; 2],
    multi: Option<u16>,
    user: Option<String>,
    /// USER sent, its reply not seen yet.
    user_pending: bool,
    /// PASS sent, its reply not seen yet.
    pass: Option<Vec<u8>>,
    auth_pending: bool,
    done: bool,
}

impl FtpAnalyzer {
    pub(crate) fn new(max_buffer: usize) -> Self {
        FtpAnalyzer {
            lines: [LineBuf::new(max_buffer), LineBuf::new(max_buffer)],
            multi: None,
            user: None,
            user_pending: false,
            pass: None,
            auth_pending: false,
            done: false,
        }
    }

    pub(crate) fn on_data(
        &mut self,
        dir: Direction,
        data: &[u8],
        out: &mut Vec<ProtoEvent>,
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
            if line.truncated {
                out.push(ProtoEvent::Anomaly {
                    app: AppProto::Ftp,
                    name: "ftp.line_too_long",
                });
            }
            let ctl = match dir {
                Direction::Forward => {
                    self.command(&line.text, out);
                    Control::Continue
                }
                Direction::Reverse => self.reply(&line.text, out),
            };
            if let Some(lb) = self.lines.get_mut(i) {
                lb.recycle(line.text);
            }
            if let Control::StartTls { .. } = ctl {
                self.done = true;
                return Control::StartTls {
                    consumed: data.len() - rest.len(),
                };
            }
        }
        Control::Continue
    }

    fn command(&mut self, line: &[u8], out: &mut Vec<ProtoEvent>) {
        let (verb, arg) = split_command(line);
        match verb.as_str() {
            "USER" => {
                // A new attempt while the previous password's reply is missing.
                self.flush(Outcome::Unknown, out);
                self.user = Some(String::from_utf8_lossy(arg).into_owned());
                self.user_pending = true;
            }
            "PASS" => {
                if self.pass.is_some() {
                    self.flush(Outcome::Unknown, out);
                }
                self.pass = Some(arg.to_vec());
                self.user_pending = false;
            }
            "AUTH" => {
                let a = arg.to_ascii_uppercase();
                self.auth_pending = matches!(a.as_slice(), b"TLS" | b"SSL" | b"TLS-C" | b"TLS-P");
            }
            _ => {}
        }
        out.push(ProtoEvent::FtpCommand {
            verb,
            arg_len: arg.len(),
        });
    }

    fn reply(&mut self, line: &[u8], out: &mut Vec<ProtoEvent>) -> Control {
        let Some(code) = reply_done(&mut self.multi, line) else {
            return Control::Continue;
        };
        out.push(ProtoEvent::FtpReply { code });
        if std::mem::replace(&mut self.auth_pending, false) && (code == 234 || code == 334) {
            return Control::StartTls { consumed: 0 };
        }
        if self.pass.is_some() {
            match code {
                230 | 202 => self.flush(Outcome::Accepted, out),
                530 => self.flush(Outcome::Rejected, out),
                400..=599 => self.flush(Outcome::Unknown, out),
                _ => {}
            }
        } else if self.user_pending {
            match code {
                331 | 332 => self.user_pending = false,
                230 => {
                    self.user_pending = false;
                    self.flush_user(Outcome::Accepted, out);
                }
                530 => {
                    self.user_pending = false;
                    self.flush_user(Outcome::Rejected, out);
                }
                400..=599 => self.user_pending = false,
                _ => {}
            }
        }
        Control::Continue
    }

    /// Judge the pending USER + PASS attempt.
    fn flush(&mut self, outcome: Outcome, out: &mut Vec<ProtoEvent>) {
        if let Some(pass) = self.pass.take() {
            out.push(ProtoEvent::login(
                AppProto::Ftp,
                self.user.clone().unwrap_or_default(),
                Some(pass),
                "ftp",
                outcome,
            ));
        }
    }

    /// A USER answered without any PASS (230 or 530 straight away).
    fn flush_user(&mut self, outcome: Outcome, out: &mut Vec<ProtoEvent>) {
        out.push(ProtoEvent::login(
            AppProto::Ftp,
            self.user.clone().unwrap_or_default(),
            None,
            "ftp",
            outcome,
        ));
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

    pub(crate) fn on_close(&mut self, out: &mut Vec<ProtoEvent>) {
        if !self.done {
            self.flush(Outcome::Unknown, out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::super::ProtoLimits;
    use super::*;

    fn login(user: &str, pass: Option<&[u8]>, outcome: Outcome) -> ProtoEvent {
        ProtoEvent::login(
            AppProto::Ftp,
            user.into(),
            pass.map(<[u8]>::to_vec),
            "ftp",
            outcome,
        )
    }

    #[test]
    fn bob_password_230() {
        // shared/pcaps/credentials/sv_ftp_bob_password_success.pcap (suricata-verify, MIT)
        let (ev, st) = run(
            21,
            &fixture(include_str!("testdata/sv_ftp_bob_password_success.hex")),
            ProtoLimits::default(),
        );
        assert_eq!(st.app(), AppProto::Ftp);
        assert_eq!(
            logins(&ev),
            vec![&login("bob", Some(b"password"), Outcome::Accepted)]
        );
        assert!(ev.contains(&ProtoEvent::FtpCommand {
            verb: "PASS".into(),
            arg_len: 8
        }));
        assert!(ev.contains(&ProtoEvent::FtpReply { code: 230 }));
    }

    #[test]
    fn admin_qwerty_530() {
        // shared/pcaps/credentials/zeek_ftp_admin_qwerty_failed.pcap (zeek, BSD)
        let (ev, _) = run(
            21,
            &fixture(include_str!("testdata/zeek_ftp_admin_qwerty_failed.hex")),
            ProtoLimits::default(),
        );
        assert_eq!(
            logins(&ev),
            vec![&login("Admin", Some(b"qwerty"), Outcome::Rejected)]
        );
    }

    #[test]
    fn user_refused_without_pass() {
        // Same dialogue as shared/pcaps/credentials/ndpi_ftp_login_refused_ipv6.pcap
        // (not copied: nDPI captures are LGPL): USER -> 530, no PASS.
        let chunks = vec![
            (Direction::Reverse, b"220 FTP server ready\r\n".to_vec()),
            (Direction::Forward, b"USER hello\r\n".to_vec()),
            (
                Direction::Reverse,
                b"530 Anonymous logins only.\r\n".to_vec(),
            ),
            (Direction::Forward, b"SYST\r\n".to_vec()),
            (
                Direction::Reverse,
                b"530 Please login with USER and PASS.\r\n".to_vec(),
            ),
            (Direction::Forward, b"QUIT\r\n".to_vec()),
            (Direction::Reverse, b"221 Goodbye.\r\n".to_vec()),
        ];
        let (ev, _) = run(21, &chunks, ProtoLimits::default());
        assert_eq!(logins(&ev), vec![&login("hello", None, Outcome::Rejected)]);
    }

    #[test]
    fn auth_tls_encrypted_no_login() {
        // shared/pcaps/credentials/zeek_ftp_auth_tls_encrypted.pcap: FEAT (multi-line 211),
        // AUTH TLS -> 234, then a TLS ClientHello on port 21.
        let (ev, st) = run(
            21,
            &fixture(include_str!("testdata/zeek_ftp_auth_tls_encrypted.hex")),
            ProtoLimits::default(),
        );
        assert!(st.encrypted());
        assert_eq!(st.app(), AppProto::Ftp);
        assert!(ev.contains(&ProtoEvent::StartTls { app: AppProto::Ftp }));
        assert!(ev.contains(&ProtoEvent::FtpReply { code: 211 }));
        assert!(logins(&ev).is_empty());
        let sni = ev.iter().find_map(|e| match e {
            ProtoEvent::TlsClientHello { sni, ja3, .. } => Some((sni.clone(), ja3.clone())),
            _ => None,
        });
        // JA3 as computed by tshark 4.0 (tls.handshake.ja3) on the same capture.
        assert_eq!(
            sni,
            Some((
                Some("127.0.0.1".into()),
                "11d974c9114303ebbaac1703a515be37".into()
            ))
        );
        // ja4plus 1.4.0 on the same capture.
        assert!(ev.iter().any(|e| matches!(e, ProtoEvent::TlsClientHello { ja4, .. } if ja4 == "t13d291300_723694b0fccc_2cc26d266019")));
        let after = ev
            .iter()
            .position(|e| matches!(e, ProtoEvent::StartTls { .. }))
            .unwrap_or(0);
        assert!(!ev[after..].iter().any(|e| matches!(
            e,
            ProtoEvent::FtpCommand { .. } | ProtoEvent::FtpReply { .. }
        )));
    }

    #[test]
    fn multiline_230_and_anonymous() {
        let mut a = FtpAnalyzer::new(1 << 16);
        let mut out = Vec::new();
        a.on_data(
            Direction::Reverse,
            b"220-Welcome\r\n220 ready\r\n",
            &mut out,
        );
        a.on_data(
            Direction::Forward,
            b"USER anonymous\r\nPASS guest@\r\n",
            &mut out,
        );
        a.on_data(
            Direction::Reverse,
            b"331 Please specify the password.\r\n230-Hi\r\n230-more\r\n",
            &mut out,
        );
        assert!(logins(&out).is_empty());
        a.on_data(Direction::Reverse, b"230 Login successful.\r\n", &mut out);
        assert_eq!(
            logins(&out),
            vec![&login("anonymous", Some(b"guest@"), Outcome::Accepted)]
        );
        let replies: Vec<_> = out
            .iter()
            .filter(|e| matches!(e, ProtoEvent::FtpReply { .. }))
            .collect();
        assert_eq!(replies.len(), 3);
    }

    #[test]
    fn fuzz_ftp_no_panic() {
        let mut rng = XorShift::new(0xf7f);
        let fx = fixture(include_str!("testdata/zeek_ftp_auth_tls_encrypted.hex"));
        for i in 0..25_000usize {
            let mut a = FtpAnalyzer::new(1 << 16);
            let mut out = Vec::new();
            for j in 0..5 {
                let (d, c) = &fx[(i + j) % fx.len()];
                let input = if i % 2 == 0 {
                    rng.bytes_upto(80)
                } else {
                    rng.mutate(c)
                };
                let _ = a.on_data(*d, &input, &mut out);
                if rng.one_in(10) {
                    a.on_gap(*d, 5);
                }
            }
            a.on_close(&mut out);
        }
        let long = vec![b'a'; 10_000];
        let mut a = FtpAnalyzer::new(1 << 16);
        let mut out = Vec::new();
        a.on_data(Direction::Forward, &long, &mut out);
        a.on_data(Direction::Forward, b"\r\n", &mut out);
        assert_eq!(
            out.first(),
            Some(&ProtoEvent::Anomaly {
                app: AppProto::Ftp,
                name: "ftp.line_too_long"
            })
        );
    }
}
