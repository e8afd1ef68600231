//! Telnet: option negotiation stripped, server prompts recognised, what the
//! client types after the login / password prompts collected, and the login
//! outcome judged from what the server prints next.
//!
//! Only the client's own bytes are taken as typed text (the server's echo
//! is ignored); backspace (0x08 / 0x7f) edits the line; CR LF, CR NUL and LF
//! end it. Prompts are recognised at the end of a server chunk (prompts are
//! not newline-terminated); outcome keywords on complete lines and on the
//! trailing partial line.

use super::{contains_ci, dir_index, AppProto, Direction, Outcome, PromptKind, ProtoEvent};

const IAC: u8 = 0xff;
const SB: u8 = 0xfa;
const SE: u8 = 0xf0;
/// Longest subnegotiation accepted before calling it a flood.
const SB_MAX: usize = 4096;
/// Option negotiations per direction before calling it a flood.
const NEG_MAX: u32 = 2048;
/// Longest line kept (client input / server output).
const LINE_MAX: usize = 256;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum IacState {
    Data,
    Iac,
    /// After WILL/WONT/DO/DONT: the option byte.
    Opt,
    Sb,
    SbIac,
}

/// Output of one byte through the IAC filter.
enum Step {
    Data(u8),
    Nothing,
    Flood,
}

struct Iac {
    st: IacState,
    sb_len: usize,
    negotiations: u32,
    flooded: bool,
}

impl Iac {
    fn new() -> Self {
        Iac {
            st: IacState::Data,
            sb_len: 0,
            negotiations: 0,
            flooded: false,
        }
    }

    fn flood(&mut self) -> Step {
        if self.flooded {
            Step::Nothing
        } else {
            self.flooded = true;
            Step::Flood
        }
    }

    fn step(&mut self, b: u8) -> Step {
        match self.st {
            IacState::Data => {
                if b == IAC {
                    self.st = IacState::Iac;
                    Step::Nothing
                } else {
                    Step::Data(b)
                }
            }
            IacState::Iac => match b {
                IAC => {
                    self.st = IacState::Data;
                    Step::Data(IAC)
                }
                0xfb..=0xfe => {
                    self.st = IacState::Opt;
                    self.negotiations = self.negotiations.saturating_add(1);
                    if self.negotiations > NEG_MAX {
                        return self.flood();
                    }
                    Step::Nothing
                }
                SB => {
                    self.st = IacState::Sb;
                    self.sb_len = 0;
                    Step::Nothing
                }
                _ => {
                    self.st = IacState::Data;
                    Step::Nothing
                }
            },
            IacState::Opt => {
                self.st = IacState::Data;
                Step::Nothing
            }
            IacState::Sb | IacState::SbIac => {
                if self.st == IacState::SbIac {
                    match b {
                        SE => {
                            self.st = IacState::Data;
                            return Step::Nothing;
                        }
                        _ => self.st = IacState::Sb,
                    }
                } else if b == IAC {
                    self.st = IacState::SbIac;
                }
                self.sb_len += 1;
                if self.sb_len > SB_MAX {
                    // Unterminated subnegotiation: abandon it.
                    self.st = IacState::Data;
                    return self.flood();
                }
                Step::Nothing
            }
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Phase {
    Idle,
    /// Login prompt shown; the next client line is the user name.
    WantUser,
    /// User name typed; waiting for the password prompt.
    HaveUser(String),
    /// Password prompt shown; the next client line is the password.
    WantPass(String),
    /// Password sent; waiting for the verdict.
    Await(String, Vec<u8>),
    LoggedIn,
}

pub(crate) struct TelnetAnalyzer {
    iac: [Iac; 2],
    cli_line: Vec<u8>,
    cli_cr: bool,
    srv_line: Vec<u8>,
    /// A prompt was already reported for the current server line.
    srv_prompted: bool,
    phase: Phase,
    /// The first shell prompt of the session was reported.
    shell_seen: bool,
    line_max: usize,
}

impl TelnetAnalyzer {
    pub(crate) fn new(max_buffer: usize) -> Self {
        TelnetAnalyzer {
            line_max: LINE_MAX.min(max_buffer),
            iac: [Iac::new(), Iac::new()],
            cli_line: Vec::new(),
            cli_cr: false,
            srv_line: Vec::new(),
            srv_prompted: false,
            phase: Phase::Idle,
            shell_seen: false,
        }
    }

    pub(crate) fn on_data(&mut self, dir: Direction, data: &[u8], out: &mut Vec<ProtoEvent>) {
        let i = dir_index(dir);
        for &b in data {
            let step = match self.iac.get_mut(i) {
                Some(f) => f.step(b),
                None => return,
            };
            match step {
                Step::Nothing => {}
                Step::Flood => out.push(ProtoEvent::Anomaly {
                    app: AppProto::Telnet,
                    name: "telnet.iac_flood",
                }),
                Step::Data(c) => match dir {
                    Direction::Forward => self.client_byte(c),
                    Direction::Reverse => self.server_byte(c, out),
                },
            }
        }
        if dir == Direction::Reverse {
            self.server_chunk_end(out);
        }
    }

    /// Bytes of the buffers, each measured by `m` (`Vec::len`: content; `Vec::capacity`:
    /// memory).
    pub(crate) fn bytes(&self, m: fn(&Vec<u8>) -> usize) -> usize {
        m(&self.cli_line) + m(&self.srv_line)
    }

    pub(crate) fn on_gap(&mut self, dir: Direction, _len: u64) {
        if let Some(f) = self.iac.get_mut(dir_index(dir)) {
            f.st = IacState::Data;
        }
        match dir {
            Direction::Forward => {
                self.cli_line.clear();
                self.cli_cr = false;
            }
            Direction::Reverse => {
                self.srv_line.clear();
                self.srv_prompted = false;
            }
        }
    }

    pub(crate) fn on_close(&mut self, out: &mut Vec<ProtoEvent>) {
        if let Phase::Await(..) = self.phase {
            self.finish(Outcome::Unknown, out);
        }
    }

    fn client_byte(&mut self, c: u8) {
        let was_cr = std::mem::replace(&mut self.cli_cr, false);
        match c {
            b'\r' => {
                self.cli_cr = true;
                self.client_line();
            }
            b'\n' | 0 if was_cr => {}
            b'\n' => self.client_line(),
            0x08 | 0x7f => {
                self.cli_line.pop();
            }
            c if c < 0x20 => {}
            c => {
                if self.cli_line.len() < self.line_max {
                    self.cli_line.push(c);
                }
            }
        }
    }

    fn client_line(&mut self) {
        let line = std::mem::take(&mut self.cli_line);
        // The prompt was answered: what the server prints next is new
        // context even without a newline (client-side echo).
        self.srv_line.clear();
        self.srv_prompted = false;
        self.phase = match std::mem::replace(&mut self.phase, Phase::Idle) {
            Phase::WantUser => Phase::HaveUser(String::from_utf8_lossy(&line).into_owned()),
            Phase::WantPass(user) => Phase::Await(user, line),
            other => other,
        };
    }

    fn server_byte(&mut self, c: u8, out: &mut Vec<ProtoEvent>) {
        match c {
            b'\n' => {
                self.judge_line(out);
                self.srv_line.clear();
                self.srv_prompted = false;
            }
            b'\r' | 0 => {}
            c => {
                if self.srv_line.len() >= self.line_max {
                    self.judge_line(out);
                    self.srv_line.clear();
                }
                self.srv_line.push(c.to_ascii_lowercase());
            }
        }
    }

    /// Outcome keywords on the current server line.
    fn judge_line(&mut self, out: &mut Vec<ProtoEvent>) {
        if !matches!(self.phase, Phase::Await(..)) {
            return;
        }
        let l = &self.srv_line;
        if ["incorrect", "failed", "denied", "invalid"]
            .iter()
            .any(|k| contains_ci(l, k.as_bytes()))
        {
            self.finish(Outcome::Rejected, out);
        } else if ["last login", "welcome", "busybox"]
            .iter()
            .any(|k| contains_ci(l, k.as_bytes()))
        {
            self.finish(Outcome::Accepted, out);
        }
    }

    fn server_chunk_end(&mut self, out: &mut Vec<ProtoEvent>) {
        self.judge_line(out);
        if self.srv_prompted {
            return;
        }
        let kind = prompt_kind(&self.srv_line);
        let Some(kind) = kind else { return };
        match kind {
            PromptKind::Login => {
                if matches!(self.phase, Phase::Await(..)) {
                    // Asked to log in again: the attempt failed.
                    self.finish(Outcome::Rejected, out);
                }
                if self.phase == Phase::LoggedIn {
                    return;
                }
                self.phase = Phase::WantUser;
                self.cli_line.clear();
            }
            PromptKind::Password => {
                let user = match std::mem::replace(&mut self.phase, Phase::Idle) {
                    Phase::HaveUser(u) | Phase::WantPass(u) => u,
                    Phase::Await(u, p) => {
                        self.phase = Phase::Await(u.clone(), p);
                        self.finish(Outcome::Rejected, out);
                        u
                    }
                    Phase::WantUser => String::from_utf8_lossy(&self.cli_line).into_owned(),
                    Phase::Idle => String::new(),
                    Phase::LoggedIn => {
                        // e.g. sudo / su inside the session.
                        self.phase = Phase::LoggedIn;
                        return;
                    }
                };
                self.phase = Phase::WantPass(user);
                self.cli_line.clear();
            }
            PromptKind::Shell => {
                match self.phase {
                    Phase::Await(..) => self.finish(Outcome::Accepted, out),
                    Phase::LoggedIn if !self.shell_seen => {}
                    _ => return,
                }
                self.shell_seen = true;
            }
        }
        self.srv_prompted = true;
        out.push(ProtoEvent::TelnetPrompt { kind });
    }

    fn finish(&mut self, outcome: Outcome, out: &mut Vec<ProtoEvent>) {
        if let Phase::Await(user, pass) = std::mem::replace(&mut self.phase, Phase::Idle) {
            if outcome == Outcome::Accepted {
                self.phase = Phase::LoggedIn;
            }
            out.push(ProtoEvent::login(
                AppProto::Telnet,
                user,
                Some(pass),
                "telnet",
                outcome,
            ));
        }
    }
}

/// Prompt at the end of a (lower-cased) partial server line.
fn prompt_kind(line: &[u8]) -> Option<PromptKind> {
    let end = line
        .iter()
        .rposition(|&b| b != b' ' && b != b'\t')
        .map_or(0, |p| p + 1);
    let t = line.get(..end)?;
    if t.is_empty() {
        return None;
    }
    if t.ends_with(b"password:") || t.ends_with(b"passcode:") {
        return Some(PromptKind::Password);
    }
    let login = [&b"login:"[..], b"username:", b"user name:", b"user:"];
    if login.iter().any(|p| t.ends_with(p)) && !contains_ci(t, b"last login") {
        return Some(PromptKind::Login);
    }
    if t.len() <= 128 && matches!(t.last(), Some(b'$' | b'#' | b'>' | b'%')) {
        return Some(PromptKind::Shell);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::super::{ProtoLimits, ProtoState};
    use super::*;

    fn feed(a: &mut TelnetAnalyzer, dir: Direction, s: &[u8], out: &mut Vec<ProtoEvent>) {
        a.on_data(dir, s, out);
    }

    fn login(user: &str, pass: &[u8], outcome: Outcome) -> ProtoEvent {
        ProtoEvent::login(
            AppProto::Telnet,
            user.into(),
            Some(pass.to_vec()),
            "telnet",
            outcome,
        )
    }

    #[test]
    fn openbsd_login_from_capture() {
        // shared/pcaps/credentials/sv_telnet_login_fake_user.pcap: login 'fake', password 'user', success.
        let fx = fixture(include_str!("testdata/sv_telnet_login_fake_user.hex"));
        let (ev, st) = run(23, &fx, ProtoLimits::default());
        assert_eq!(
            ev.first(),
            Some(&ProtoEvent::Detected {
                app: AppProto::Telnet
            })
        );
        assert_eq!(st.app(), AppProto::Telnet);
        assert_eq!(
            logins(&ev),
            vec![&login("fake", b"user", Outcome::Accepted)]
        );
        let prompts: Vec<PromptKind> = ev
            .iter()
            .filter_map(|e| match e {
                ProtoEvent::TelnetPrompt { kind } => Some(*kind),
                _ => None,
            })
            .collect();
        assert_eq!(
            prompts,
            vec![PromptKind::Login, PromptKind::Password, PromptKind::Shell]
        );
        assert!(!ev.iter().any(|e| matches!(e, ProtoEvent::Anomaly { .. })));
        // Same capture, client typing one character per packet.
        let mut st = ProtoState::new(23, ProtoLimits::default());
        let mut out = Vec::new();
        for (d, c) in &fx {
            if *d == Direction::Forward {
                for b in c {
                    st.on_data(*d, std::slice::from_ref(b), &mut out);
                }
            } else {
                st.on_data(*d, c, &mut out);
            }
        }
        assert_eq!(
            logins(&out),
            vec![&login("fake", b"user", Outcome::Accepted)]
        );
    }

    #[test]
    fn busybox_failed_then_success_with_echo_and_backspace() {
        let mut a = TelnetAnalyzer::new(1 << 16);
        let mut out = Vec::new();
        use Direction::{Forward as F, Reverse as R};
        feed(
            &mut a,
            R,
            b"\xff\xfb\x01\xff\xfb\x03\r\ncam-1234 login: ",
            &mut out,
        );
        // Character mode: client types, server echoes.
        for c in b"rooz\x7ft\r\0" {
            feed(&mut a, F, &[*c], &mut out);
            if *c >= 0x20 {
                feed(&mut a, R, &[*c], &mut out);
            }
        }
        feed(&mut a, R, b"\r\nPassword: ", &mut out);
        feed(&mut a, F, b"12345\r\n", &mut out);
        feed(
            &mut a,
            R,
            b"\r\nLogin incorrect\r\ncam-1234 login: ",
            &mut out,
        );
        feed(&mut a, F, b"root\r\n", &mut out);
        feed(&mut a, R, b"Password: ", &mut out);
        feed(&mut a, F, b"xc3511\n", &mut out);
        feed(
            &mut a,
            R,
            b"\r\n\r\nBusyBox v1.19.4 built-in shell (ash)\r\n~ # ",
            &mut out,
        );
        feed(&mut a, F, b"cat /proc/cpuinfo\r\n", &mut out);
        a.on_close(&mut out);
        assert_eq!(
            logins(&out),
            vec![
                &login("root", b"12345", Outcome::Rejected),
                &login("root", b"xc3511", Outcome::Accepted)
            ]
        );
    }

    #[test]
    fn shell_prompt_after_password_and_unknown_at_close() {
        let mut a = TelnetAnalyzer::new(1 << 16);
        let mut out = Vec::new();
        feed(&mut a, Direction::Reverse, b"User Name: ", &mut out);
        feed(&mut a, Direction::Forward, b"admin\r\n", &mut out);
        feed(&mut a, Direction::Reverse, b"Password:", &mut out);
        feed(&mut a, Direction::Forward, b"admin\r\n", &mut out);
        feed(&mut a, Direction::Reverse, b"\r\nrouter> ", &mut out);
        assert_eq!(
            logins(&out),
            vec![&login("admin", b"admin", Outcome::Accepted)]
        );
        assert!(out.contains(&ProtoEvent::TelnetPrompt {
            kind: PromptKind::Shell
        }));
        let mut b = TelnetAnalyzer::new(1 << 16);
        let mut out = Vec::new();
        feed(&mut b, Direction::Reverse, b"login: ", &mut out);
        feed(&mut b, Direction::Forward, b"guest\r\n", &mut out);
        feed(&mut b, Direction::Reverse, b"Password: ", &mut out);
        feed(&mut b, Direction::Forward, b"guest\r\n", &mut out);
        b.on_close(&mut out);
        assert_eq!(
            logins(&out),
            vec![&login("guest", b"guest", Outcome::Unknown)]
        );
    }

    #[test]
    fn iac_escapes_and_unterminated_sb() {
        let mut f = Iac::new();
        let data: Vec<u8> = [
            b'a', IAC, IAC, b'b', IAC, 0xfd, 0x18, b'c', IAC, SB, 0x18, 1, IAC, SE, b'd',
        ]
        .iter()
        .filter_map(|&b| match f.step(b) {
            Step::Data(c) => Some(c),
            _ => None,
        })
        .collect();
        assert_eq!(data, vec![b'a', IAC, b'b', b'c', b'd']);
        let mut a = TelnetAnalyzer::new(1 << 16);
        let mut out = Vec::new();
        let mut flood = vec![IAC, SB, 0x18];
        flood.extend(std::iter::repeat_n(0x41, 10_000));
        a.on_data(Direction::Reverse, &flood, &mut out);
        assert_eq!(
            out,
            vec![ProtoEvent::Anomaly {
                app: AppProto::Telnet,
                name: "telnet.iac_flood"
            }]
        );
    }

    #[test]
    fn iac_oobr_capture() {
        // shared/pcaps/malformed/tcpdump_telnet_iac_oobr.pcap (tcpdump, BSD): 65 KB of IAC/option garbage.
        let data = include_bytes!("testdata/tcpdump_telnet_iac_oobr.bin");
        let mut st = ProtoState::new(23, ProtoLimits::default());
        let mut out = Vec::new();
        st.on_data(Direction::Forward, data, &mut out);
        st.on_data(Direction::Reverse, data, &mut out);
        for c in data.chunks(1000) {
            st.on_data(Direction::Forward, c, &mut out);
        }
        st.on_close(&mut out);
        assert_eq!(st.app(), AppProto::Telnet);
        assert!(logins(&out).is_empty());
    }

    #[test]
    fn fuzz_telnet_no_panic() {
        let mut rng = XorShift::new(0x7e1);
        let fx = fixture(include_str!("testdata/sv_telnet_login_fake_user.hex"));
        for i in 0..25_000usize {
            let mut a = TelnetAnalyzer::new(1 << 16);
            let mut out = Vec::new();
            for j in 0..6 {
                let (d, c) = &fx[(i + j * 7) % fx.len()];
                let input = if i % 3 == 0 {
                    let mut v = rng.bytes_upto(64);
                    v.iter_mut().for_each(|b| {
                        if *b > 0xf0 && rng.one_in(2) {
                            *b = IAC
                        }
                    });
                    v
                } else {
                    rng.mutate(c)
                };
                a.on_data(*d, &input, &mut out);
                if rng.one_in(16) {
                    a.on_gap(*d, 10);
                }
            }
            a.on_close(&mut out);
        }
    }
}
