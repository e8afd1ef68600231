//! Application-protocol analyzers (the `proto` stage).
//!
//! # What this stage owns
//!
//! One [`ProtoState`] per TCP flow. The flow table creates it when the flow
//! starts and hands it, per direction, the *in-order* bytes produced by TCP
//! reassembly ([`ProtoState::on_data`]), the size of any hole it could not
//! fill ([`ProtoState::on_gap`]), and finally the end of the flow
//! ([`ProtoState::on_close`]).
//!
//! Inside, the stage:
//! * recognises the application protocol **by content** (`detect`), the
//!   server port being only a hint: MQTT, MQTT over WebSocket, HTTP/1.x,
//!   Telnet, FTP, SMTP (STARTTLS only), TLS and SSH;
//! * runs one protocol analyzer (`mqtt`, `http` + `websocket`, `telnet`,
//!   `ftp`, `smtp`, `tls`) that turns bytes into [`ProtoEvent`]s: protocol
//!   messages, clear-text login attempts with their outcome, TLS
//!   fingerprints (JA3/JA4), STARTTLS upgrades and named anomalies;
//! * keeps every buffer bounded by [`ProtoLimits::max_buffer`] per direction
//!   and never panics on arbitrary bytes.
//!
//! # What it hands on
//!
//! Events are appended to the caller's `Vec<ProtoEvent>`; the stage keeps no
//! history of them. [`ProtoState::app`] and [`ProtoState::encrypted`] give
//! the flow's current classification (read them at close for flow records).
//! Interpreting events (credential findings, brute force, baselines) belongs
//! to the detection stage, not here.

mod detect;
mod ftp;
mod http;
mod mqtt;
mod smtp;
mod telnet;
mod tls;
mod websocket;

pub mod smb;

mod stream;
pub use stream::Analyzer;

pub use crate::flow::Direction;

/// The other direction.
pub(crate) fn flip(d: Direction) -> Direction {
    match d {
        Direction::Forward => Direction::Reverse,
        Direction::Reverse => Direction::Forward,
    }
}

/// Application protocol of a flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AppProto {
    Mqtt,
    MqttWs,
    Http,
    Telnet,
    Ftp,
    Tls,
    Ssh,
    /// SMTP (added: recognised so that STARTTLS can be reported).
    Smtp,
    Unknown,
}

impl AppProto {
    pub fn as_str(self) -> &'static str {
        match self {
            AppProto::Mqtt => "mqtt",
            AppProto::MqttWs => "mqtt-ws",
            AppProto::Http => "http",
            AppProto::Telnet => "telnet",
            AppProto::Ftp => "ftp",
            AppProto::Tls => "tls",
            AppProto::Ssh => "ssh",
            AppProto::Smtp => "smtp",
            AppProto::Unknown => "unknown",
        }
    }
}

/// Result of a login attempt / connection request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Accepted,
    Rejected,
    Unknown,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Accepted => "accepted",
            Outcome::Rejected => "rejected",
            Outcome::Unknown => "unknown",
        }
    }
}

/// Credentials seen in an HTTP `Authorization` header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HttpAuth {
    Basic { user: String, password: Vec<u8> },
    Digest { user: String },
    Bearer { token_len: usize },
    Other { scheme: String },
}

/// Kind of Telnet server prompt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PromptKind {
    Login,
    Password,
    Shell,
}

/// What the analyzers report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProtoEvent {
    /// The analyzer recognised the application protocol (emitted once per flow).
    Detected {
        app: AppProto,
    },
    MqttConnect {
        level: u8,
        client_id: String,
        clean_session: bool,
        keep_alive: u16,
        will_topic: Option<String>,
        username: Option<String>,
        password: Option<Vec<u8>>,
        auth_method: Option<String>,
    },
    MqttConnack {
        code: u8,
        outcome: Outcome,
    },
    MqttPublish {
        topic: std::sync::Arc<str>,
        qos: u8,
        retain: bool,
        dup: bool,
        payload_len: u32,
    },
    MqttSubscribe {
        filters: Vec<(String, u8)>,
    },
    MqttUnsubscribe {
        filters: Vec<String>,
    },
    MqttPing,
    MqttDisconnect,
    HttpRequest {
        method: String,
        uri: String,
        version: u8,
        host: Option<String>,
        user_agent: Option<String>,
        auth: Option<HttpAuth>,
        websocket_mqtt: bool,
    },
    HttpResponse {
        status: u16,
    },
    TelnetPrompt {
        kind: PromptKind,
    },
    /// An FTP command; the PASS argument is never carried.
    FtpCommand {
        verb: String,
        arg_len: usize,
    },
    FtpReply {
        code: u16,
    },
    TlsClientHello {
        sni: Option<String>,
        legacy_version: u16,
        supported_versions: Vec<u16>,
        ciphers: Vec<u16>,
        alpn: Vec<String>,
        ja3: String,
        ja3_string: String,
        ja4: String,
    },
    TlsServerHello {
        version: u16,
        cipher: u16,
        /// Added: true when this ServerHello is a TLS 1.3 HelloRetryRequest.
        hello_retry: bool,
    },
    /// STARTTLS / AUTH TLS accepted; the stream is encrypted from here.
    StartTls {
        app: AppProto,
    },
    /// Added: an SSH identification string (`SSH-2.0-...`), per side.
    SshBanner {
        dir: Direction,
        banner: String,
    },
    /// A clear-text login attempt and its result.
    Login {
        app: AppProto,
        username: String,
        /// The password, cut to [`MAX_KEPT`] bytes if the login waited for its answer.
        password: Option<Vec<u8>>,
        /// The password's length on the wire (bytes; 0 without one).
        password_len: usize,
        method: &'static str,
        outcome: Outcome,
    },
    /// Malformed or abusive input, named `proto.what`.
    Anomaly {
        app: AppProto,
        name: &'static str,
    },
    /// SMB / DCE-RPC evidence (shares, named pipes, RPC interfaces, NTLM user).
    Smb(smb::SmbEvent),
}

impl ProtoEvent {
    /// A login whose password, if any, is handed on whole (`password_len` is its length); a
    /// login that waited for its answer keeps it cut ([`PendingLogin`]).
    pub fn login(
        app: AppProto,
        username: String,
        password: Option<Vec<u8>>,
        method: &'static str,
        outcome: Outcome,
    ) -> ProtoEvent {
        ProtoEvent::Login {
            app,
            username,
            password_len: password.as_ref().map_or(0, Vec::len),
            password,
            method,
            outcome,
        }
    }
}

/// Resource limits of the analyzers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProtoLimits {
    /// Per direction, bytes (default 64 KiB). Every internal buffer of a
    /// direction is capped at this.
    pub max_buffer: usize,
}

impl Default for ProtoLimits {
    fn default() -> Self {
        ProtoLimits {
            max_buffer: 64 * 1024,
        }
    }
}

/// What an analyzer asks the flow state to do after a chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Control {
    Continue,
    /// STARTTLS / AUTH TLS accepted after `consumed` bytes of the chunk:
    /// switch the flow to the TLS analyzer.
    StartTls {
        consumed: usize,
    },
}

enum Engine {
    /// No byte yet: detection (and its buffers) starts with the first, so that a flow that
    /// never carries data (a SYN flood's, a scan's) costs no allocation here.
    Idle,
    Detecting(Box<detect::Detector>),
    Mqtt(Box<mqtt::MqttAnalyzer>),
    Http(Box<http::HttpAnalyzer>),
    Telnet(Box<telnet::TelnetAnalyzer>),
    Ftp(Box<ftp::FtpAnalyzer>),
    Smtp(Box<smtp::SmtpAnalyzer>),
    Tls(Box<tls::TlsAnalyzer>),
    Ssh(SshState),
    /// Nothing more to parse (unknown protocol, or encrypted).
    Opaque,
}

struct SshState {
    /// Bytes of the identification line gathered so far, per side.
    line: [Vec<u8>; 2],
    done: [bool; 2],
    max: usize,
}

const SSH_BANNER_MAX: usize = 255;

/// Longest name or secret from the traffic (bytes) that state outliving a packet keeps: a login
/// waiting for its answer (HTTP pipelined requests, MQTT CONNECT), a brute-force episode's
/// usernames, a device profile's topics, client ids and server names, alert suppression keys.
/// Longer ones are cut (text at a character boundary), so that such state stays small whatever
/// the traffic claims (an MQTT topic or password may be 64 KiB); no default credential and few
/// real names are that long. Events hand on the whole value.
pub const MAX_KEPT: usize = 256;

/// `s` cut to at most [`MAX_KEPT`] bytes, at a character boundary.
pub fn clip_str(s: &str) -> &str {
    let mut end = MAX_KEPT.min(s.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.get(..end).unwrap_or(s)
}

/// `secret` cut to at most [`MAX_KEPT`] bytes.
fn clip_secret(secret: &[u8]) -> &[u8] {
    secret.get(..MAX_KEPT).unwrap_or(secret)
}

/// A login waiting for its answer (an HTTP response, an MQTT CONNACK), its credentials cut to
/// [`MAX_KEPT`] bytes.
pub(crate) struct PendingLogin {
    user: String,
    password: Option<Vec<u8>>,
    /// The password's length before the cut.
    password_len: usize,
    method: &'static str,
}

impl PendingLogin {
    pub(crate) fn new(user: &str, password: Option<&[u8]>, method: &'static str) -> Self {
        PendingLogin {
            user: clip_str(user).to_string(),
            password: password.map(|p| clip_secret(p).to_vec()),
            password_len: password.map_or(0, <[u8]>::len),
            method,
        }
    }

    /// Bytes allocated to the credentials (counted by the stream memcap).
    pub(crate) fn size(&self) -> usize {
        self.user.capacity() + self.password.as_ref().map_or(0, Vec::capacity)
    }

    /// The login event, once its outcome is known (or will never be).
    pub(crate) fn event(self, app: AppProto, outcome: Outcome) -> ProtoEvent {
        ProtoEvent::Login {
            app,
            username: self.user,
            password: self.password,
            password_len: self.password_len,
            method: self.method,
            outcome,
        }
    }
}

impl SshState {
    fn on_data(&mut self, dir: Direction, data: &[u8], out: &mut Vec<ProtoEvent>) {
        let i = dir_index(dir);
        let max = self.max;
        let (Some(done), Some(line)) = (self.done.get_mut(i), self.line.get_mut(i)) else {
            return;
        };
        for &b in data {
            if *done {
                return;
            }
            if b != b'\n' && line.len() < max {
                line.push(b);
                continue;
            }
            while line.last() == Some(&b'\r') {
                line.pop();
            }
            // Servers may send other lines before the identification
            // string; a line that is too long ends the search.
            if line.starts_with(b"SSH-") {
                out.push(ProtoEvent::SshBanner {
                    dir,
                    banner: String::from_utf8_lossy(line).into_owned(),
                });
                *done = true;
            } else if b != b'\n' {
                *done = true;
            }
            line.clear();
            if *done {
                *line = Vec::new();
            }
        }
    }
}

pub(crate) fn dir_index(dir: Direction) -> usize {
    match dir {
        Direction::Forward => 0,
        Direction::Reverse => 1,
    }
}

/// Per-flow analyzer state. One per TCP flow, created when the flow starts.
pub struct ProtoState {
    server_port: u16,
    limits: ProtoLimits,
    app: AppProto,
    encrypted: bool,
    /// True when content showed that the flow's "client" is really the
    /// responder (e.g. the pipeline missed the SYN): directions are swapped
    /// before reaching the analyzer.
    flipped: bool,
    engine: Engine,
}

impl ProtoState {
    /// `server_port`: the responder's port (a hint only; detection is by content).
    pub fn new(server_port: u16, limits: ProtoLimits) -> Self {
        let limits = ProtoLimits {
            max_buffer: limits.max_buffer.max(64),
        };
        ProtoState {
            server_port,
            limits,
            app: AppProto::Unknown,
            encrypted: false,
            flipped: false,
            engine: Engine::Idle,
        }
    }

    /// In-order bytes of one direction (the reassembler hands each contiguous chunk once, in order).
    pub fn on_data(&mut self, dir: Direction, data: &[u8], out: &mut Vec<ProtoEvent>) {
        if data.is_empty() {
            return;
        }
        if let Engine::Idle = self.engine {
            let det = detect::Detector::new(self.limits.max_buffer);
            self.engine = Engine::Detecting(Box::new(det));
        }
        if let Engine::Detecting(det) = &mut self.engine {
            let taken = det.push(dir, data);
            match det.classify(self.server_port) {
                detect::Verdict::NeedMore => {
                    if taken < data.len() {
                        // Detection window full without a verdict.
                        self.engine = Engine::Opaque;
                    }
                }
                detect::Verdict::NoMatch => self.engine = Engine::Opaque,
                detect::Verdict::Found { app, flipped } => {
                    let det = match std::mem::replace(&mut self.engine, Engine::Opaque) {
                        Engine::Detecting(d) => d,
                        _ => return,
                    };
                    self.flipped = flipped;
                    self.start(app, out);
                    for (d, chunk) in det.replay() {
                        self.dispatch(d, chunk, out);
                    }
                    if let Some(rest) = data.get(taken..) {
                        if !rest.is_empty() {
                            self.dispatch(dir, rest, out);
                        }
                    }
                }
            }
            return;
        }
        self.dispatch(dir, data, out);
    }

    /// `len` bytes are missing in this direction (packet loss / capture cut / reassembly cap reached).
    pub fn on_gap(&mut self, dir: Direction, len: u64) {
        if len == 0 {
            return;
        }
        let dir = if self.flipped { flip(dir) } else { dir };
        match &mut self.engine {
            Engine::Detecting(d) => d.on_gap(dir),
            Engine::Mqtt(a) => a.on_gap(dir, len),
            Engine::Http(a) => a.on_gap(dir, len),
            Engine::Telnet(a) => a.on_gap(dir, len),
            Engine::Ftp(a) => a.on_gap(dir, len),
            Engine::Smtp(a) => a.on_gap(dir, len),
            Engine::Tls(a) => a.on_gap(dir, len),
            Engine::Ssh(s) => {
                if let Some(done) = s.done.get_mut(dir_index(dir)) {
                    *done = true;
                }
            }
            Engine::Idle | Engine::Opaque => {}
        }
    }

    /// Flow ended: flush pending state (e.g. a login whose outcome never arrived -> Outcome::Unknown).
    pub fn on_close(&mut self, out: &mut Vec<ProtoEvent>) {
        match &mut self.engine {
            Engine::Mqtt(a) => a.on_close(out),
            Engine::Http(a) => a.on_close(out),
            Engine::Telnet(a) => a.on_close(out),
            Engine::Ftp(a) => a.on_close(out),
            Engine::Smtp(_) | Engine::Tls(_) | Engine::Ssh(_) | Engine::Opaque => {}
            Engine::Idle | Engine::Detecting(_) => {}
        }
        self.engine = Engine::Opaque;
    }

    /// The flow's application protocol; `Unknown` until detected.
    pub fn app(&self) -> AppProto {
        self.app
    }

    /// True once TLS was negotiated / AUTH TLS / STARTTLS accepted / SSH.
    pub fn encrypted(&self) -> bool {
        self.encrypted
    }

    /// Bytes of content in the analyzer's buffers, for bound checks in tests.
    #[cfg(test)]
    pub(crate) fn buffered(&self) -> usize {
        self.bytes(Vec::len)
    }

    /// Bytes allocated to the analyzer's buffers, and to what waits for an answer (HTTP
    /// requests, an MQTT login) or is kept for reuse (MQTT topics): what the stream memcap
    /// counts.
    pub fn held(&self) -> usize {
        let pending = match &self.engine {
            Engine::Http(a) => a.pending_held(),
            Engine::Mqtt(a) => a.pending_held(),
            _ => 0,
        };
        self.bytes(Vec::capacity) + pending
    }

    fn bytes(&self, m: fn(&Vec<u8>) -> usize) -> usize {
        match &self.engine {
            Engine::Detecting(d) => d.bytes(m),
            Engine::Mqtt(a) => a.bytes(m),
            Engine::Http(a) => a.bytes(m),
            Engine::Telnet(a) => a.bytes(m),
            Engine::Ftp(a) => a.bytes(m),
            Engine::Smtp(a) => a.bytes(m),
            Engine::Tls(a) => a.bytes(m),
            Engine::Ssh(s) => s.line.iter().map(m).sum(),
            Engine::Idle | Engine::Opaque => 0,
        }
    }

    fn start(&mut self, app: AppProto, out: &mut Vec<ProtoEvent>) {
        let mb = self.limits.max_buffer;
        self.app = app;
        out.push(ProtoEvent::Detected { app });
        self.engine = match app {
            AppProto::Mqtt => Engine::Mqtt(Box::new(mqtt::MqttAnalyzer::new(mb, AppProto::Mqtt))),
            AppProto::Http | AppProto::MqttWs => {
                Engine::Http(Box::new(http::HttpAnalyzer::new(mb)))
            }
            AppProto::Telnet => Engine::Telnet(Box::new(telnet::TelnetAnalyzer::new(mb))),
            AppProto::Ftp => Engine::Ftp(Box::new(ftp::FtpAnalyzer::new(mb))),
            AppProto::Smtp => Engine::Smtp(Box::new(smtp::SmtpAnalyzer::new(mb))),
            AppProto::Tls => Engine::Tls(Box::new(tls::TlsAnalyzer::new(mb, AppProto::Tls))),
            AppProto::Ssh => {
                self.encrypted = true;
                Engine::Ssh(SshState {
                    line: [Vec::new(), Vec::new()],
                    done: [false; 2],
                    max: SSH_BANNER_MAX.min(mb),
                })
            }
            AppProto::Unknown => Engine::Opaque,
        };
    }

    fn dispatch(&mut self, dir: Direction, data: &[u8], out: &mut Vec<ProtoEvent>) {
        let dir = if self.flipped { flip(dir) } else { dir };
        let ctl = match &mut self.engine {
            Engine::Idle | Engine::Detecting(_) | Engine::Opaque => Control::Continue,
            Engine::Mqtt(a) => {
                a.on_data(dir, data, out);
                Control::Continue
            }
            Engine::Http(a) => {
                a.on_data(dir, data, out);
                self.app = a.app();
                Control::Continue
            }
            Engine::Telnet(a) => {
                a.on_data(dir, data, out);
                Control::Continue
            }
            Engine::Ftp(a) => a.on_data(dir, data, out),
            Engine::Smtp(a) => a.on_data(dir, data, out),
            Engine::Tls(a) => {
                a.on_data(dir, data, out);
                if a.encrypted() {
                    self.encrypted = true;
                }
                Control::Continue
            }
            Engine::Ssh(s) => {
                s.on_data(dir, data, out);
                Control::Continue
            }
        };
        if let Control::StartTls { consumed } = ctl {
            self.encrypted = true;
            out.push(ProtoEvent::StartTls { app: self.app });
            // The rest of the stream is TLS: fingerprint its ClientHello.
            let mut tls = tls::TlsAnalyzer::new(self.limits.max_buffer, self.app);
            if let Some(rest) = data.get(consumed..) {
                tls.on_data(dir, rest, out);
            }
            self.engine = Engine::Tls(Box::new(tls));
        }
    }
}

/// Panic-free big-endian reader over a byte slice.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }
    pub(crate) fn rest(&self) -> &'a [u8] {
        self.buf
    }
    pub(crate) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
    pub(crate) fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if n > self.buf.len() {
            return None;
        }
        let (a, b) = self.buf.split_at(n);
        self.buf = b;
        Some(a)
    }
    pub(crate) fn u8(&mut self) -> Option<u8> {
        let (&b, rest) = self.buf.split_first()?;
        self.buf = rest;
        Some(b)
    }
    pub(crate) fn u16(&mut self) -> Option<u16> {
        let b = self.take(2)?;
        Some(u16::from_be_bytes([*b.first()?, *b.get(1)?]))
    }
    pub(crate) fn u24(&mut self) -> Option<u32> {
        let b = self.take(3)?;
        Some(u32::from_be_bytes([0, *b.first()?, *b.get(1)?, *b.get(2)?]))
    }
    /// A block prefixed with an 8-bit length.
    pub(crate) fn block8(&mut self) -> Option<&'a [u8]> {
        let n = self.u8()?;
        self.take(usize::from(n))
    }
    /// A block prefixed with a 16-bit length.
    pub(crate) fn block16(&mut self) -> Option<&'a [u8]> {
        let n = self.u16()?;
        self.take(usize::from(n))
    }
}

/// ASCII case-insensitive "haystack contains needle" (needle lower-case).
pub(crate) fn contains_ci(hay: &[u8], needle: &[u8]) -> bool {
    if needle.is_empty() {
        return true;
    }
    hay.windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle))
}

/// ASCII case-insensitive prefix test.
pub(crate) fn starts_with_ci(hay: &[u8], prefix: &[u8]) -> bool {
    hay.get(..prefix.len())
        .is_some_and(|h| h.eq_ignore_ascii_case(prefix))
}

/// Saturating u64 -> usize.
pub(crate) fn to_usize(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

#[cfg(test)]
pub(crate) mod testutil {
    use super::{Direction, ProtoEvent, ProtoLimits, ProtoState};

    /// Parse a fixture: lines `F <hex>` / `R <hex>`, `#` comments.
    pub(crate) fn fixture(text: &str) -> Vec<(Direction, Vec<u8>)> {
        let mut v = Vec::new();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (d, hex) = line.split_at(1);
            let dir = if d == "F" {
                Direction::Forward
            } else {
                Direction::Reverse
            };
            v.push((dir, unhex(hex.trim())));
        }
        v
    }

    pub(crate) fn unhex(s: &str) -> Vec<u8> {
        let s: Vec<u8> = s.bytes().filter(|b| b.is_ascii_hexdigit()).collect();
        s.chunks(2)
            .map(|c| {
                let h = |x: u8| (x as char).to_digit(16).unwrap_or(0) as u8;
                (h(c[0]) << 4) | h(*c.get(1).unwrap_or(&b'0'))
            })
            .collect()
    }

    /// Run a whole fixture through a fresh ProtoState.
    pub(crate) fn run(
        port: u16,
        chunks: &[(Direction, Vec<u8>)],
        limits: ProtoLimits,
    ) -> (Vec<ProtoEvent>, ProtoState) {
        let mut st = ProtoState::new(port, limits);
        let mut out = Vec::new();
        for (d, c) in chunks {
            st.on_data(*d, c, &mut out);
        }
        st.on_close(&mut out);
        (out, st)
    }

    /// Same stream, but every direction's bytes re-cut at pseudo-random
    /// points (keeping the original interleaving of directions).
    pub(crate) fn run_resplit(
        port: u16,
        chunks: &[(Direction, Vec<u8>)],
        seed: u64,
        max_piece: usize,
    ) -> Vec<ProtoEvent> {
        let mut rng = XorShift::new(seed);
        let mut st = ProtoState::new(port, ProtoLimits::default());
        let mut out = Vec::new();
        for (d, c) in chunks {
            let mut rest: &[u8] = c;
            while !rest.is_empty() {
                let n = 1 + (rng.next() as usize) % max_piece.max(1);
                let n = n.min(rest.len());
                let (a, b) = rest.split_at(n);
                st.on_data(*d, a, &mut out);
                rest = b;
            }
        }
        st.on_close(&mut out);
        out
    }

    pub(crate) struct XorShift(u64);
    impl XorShift {
        pub(crate) fn new(seed: u64) -> Self {
            XorShift(seed.max(1))
        }
        pub(crate) fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            x
        }
        /// A number in `0..n`.
        pub(crate) fn below(&mut self, n: u64) -> u64 {
            self.next() % n.max(1)
        }
        /// True with probability 1/n.
        pub(crate) fn one_in(&mut self, n: u64) -> bool {
            self.next().checked_rem(n).unwrap_or(0) == 0
        }
        pub(crate) fn bytes_upto(&mut self, max: u64) -> Vec<u8> {
            let n = (self.next() % max.max(1)) as usize;
            self.bytes(n)
        }
        pub(crate) fn bytes(&mut self, n: usize) -> Vec<u8> {
            (0..n).map(|_| self.next() as u8).collect()
        }
        /// Mutate a copy of `base`: flip/insert/delete/truncate a few bytes.
        pub(crate) fn mutate(&mut self, base: &[u8]) -> Vec<u8> {
            let mut v = base.to_vec();
            let edits = 1 + self.next() % 8;
            for _ in 0..edits {
                let r = self.next();
                let pos = if v.is_empty() {
                    0
                } else {
                    (r as usize >> 8) % v.len()
                };
                match r % 6 {
                    0 | 1 => {
                        if let Some(b) = v.get_mut(pos) {
                            *b = (r >> 32) as u8;
                        }
                    }
                    2 => v.insert(pos, (r >> 24) as u8),
                    3 => {
                        if pos < v.len() {
                            v.remove(pos);
                        }
                    }
                    4 => v.truncate(pos),
                    _ => {
                        if let Some(b) = v.get_mut(pos) {
                            *b = [0x00, 0xff, 0x7f, 0x80][(r >> 40) as usize % 4];
                        }
                    }
                }
            }
            v
        }
    }

    pub(crate) fn logins(ev: &[ProtoEvent]) -> Vec<&ProtoEvent> {
        ev.iter()
            .filter(|e| matches!(e, ProtoEvent::Login { .. }))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::testutil::*;
    use super::*;

    const ALL_FIXTURES: &[(&str, u16)] = &[
        (
            include_str!("testdata/sv_mqtt31_pub_userpass_ipv6.hex"),
            1883,
        ),
        (
            include_str!("testdata/sv_mqtt5_pub_mosquittoprops_ipv6.hex"),
            1883,
        ),
        (
            include_str!("testdata/sv_mqtt311_midstream_no_connect_ipv6.hex"),
            1883,
        ),
        (include_str!("testdata/zeek_http_get_plain.hex"), 80),
        (
            include_str!("testdata/arkime_http_basic_auth_anonymized.hex"),
            2082,
        ),
        (
            include_str!("testdata/zeek_http_basic_auth_colon_in_pass_rawip4.hex"),
            8000,
        ),
        (include_str!("testdata/sv_telnet_login_fake_user.hex"), 23),
        (include_str!("testdata/zeek_ftp_auth_tls_encrypted.hex"), 21),
        (include_str!("testdata/sv_ftp_bob_password_success.hex"), 21),
        (
            include_str!("testdata/arkime_tls_clienthello_split_2_segments.hex"),
            443,
        ),
        (include_str!("testdata/zeek_sslv2_clienthello.hex"), 443),
        (include_str!("testdata/zeek_smtp_starttls.hex"), 25),
        (include_str!("testdata/tcpdump_ssh.hex"), 22),
        (
            include_str!("testdata/zeek_tls13_hello_retry_request.hex"),
            443,
        ),
    ];

    #[test]
    fn as_str_names() {
        assert_eq!(AppProto::MqttWs.as_str(), "mqtt-ws");
        assert_eq!(AppProto::Unknown.as_str(), "unknown");
        assert_eq!(Outcome::Rejected.as_str(), "rejected");
    }

    #[test]
    fn detected_once_per_flow() {
        for (fx, port) in ALL_FIXTURES {
            let chunks = fixture(fx);
            let (ev, st) = run(*port, &chunks, ProtoLimits::default());
            let n = ev
                .iter()
                .filter(|e| matches!(e, ProtoEvent::Detected { .. }))
                .count();
            assert_eq!(n, 1, "fixture port {port}: {:?}", ev.first());
            assert_ne!(st.app(), AppProto::Unknown);
        }
    }

    #[test]
    fn resplit_gives_same_events() {
        for (i, (fx, port)) in ALL_FIXTURES.iter().enumerate() {
            let chunks = fixture(fx);
            let (whole, _) = run(*port, &chunks, ProtoLimits::default());
            for (seed, piece) in [(1u64, 1usize), (7, 3), (99, 17), (1234, 300)] {
                let split = run_resplit(*port, &chunks, seed + i as u64, piece);
                assert_eq!(whole, split, "fixture #{i} seed {seed} piece {piece}");
            }
        }
    }

    #[test]
    fn ssh_banners() {
        // shared/pcaps/ssh/tcpdump_ssh.pcap (tcpdump, BSD). The client
        // (202.108.87.165:62146, sends the SYN) is OpenSSH_7.8; the server on
        // port 22 is 7.4p1 Debian (MANIFEST.tsv has the two swapped).
        let (ev, st) = run(
            22,
            &fixture(include_str!("testdata/tcpdump_ssh.hex")),
            ProtoLimits::default(),
        );
        assert_eq!(st.app(), AppProto::Ssh);
        assert!(st.encrypted());
        assert_eq!(
            ev,
            vec![
                ProtoEvent::Detected { app: AppProto::Ssh },
                ProtoEvent::SshBanner {
                    dir: Direction::Forward,
                    banner: "SSH-2.0-OpenSSH_7.8".into()
                },
                ProtoEvent::SshBanner {
                    dir: Direction::Reverse,
                    banner: "SSH-2.0-OpenSSH_7.4p1 Debian-10+deb9u3".into()
                },
            ]
        );
    }

    #[test]
    fn midstream_tls_application_data() {
        // shared/pcaps/mqtt/sv_mqtt311_midstream_no_connect_ipv6.pcap stream 0:
        // TLS 1.2 application data picked up mid-stream on port 64001.
        let fx = fixture(include_str!(
            "testdata/sv_mqtt311_midstream_stream0_tls_appdata.hex"
        ));
        let (ev, st) = run(64001, &fx, ProtoLimits::default());
        assert_eq!(ev, vec![ProtoEvent::Detected { app: AppProto::Tls }]);
        assert!(st.encrypted());
    }

    #[test]
    fn unknown_protocol_gives_up_quietly() {
        let mut st = ProtoState::new(5555, ProtoLimits { max_buffer: 1024 });
        let mut out = Vec::new();
        st.on_data(
            Direction::Forward,
            &[0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06],
            &mut out,
        );
        st.on_data(
            Direction::Reverse,
            b"\x00\x00garbage that is nothing",
            &mut out,
        );
        for _ in 0..100 {
            st.on_data(Direction::Forward, &[0xAB; 100], &mut out);
        }
        st.on_close(&mut out);
        assert!(out.is_empty(), "{out:?}");
        assert_eq!(st.app(), AppProto::Unknown);
    }

    #[test]
    fn gap_then_data_never_panics() {
        for (fx, port) in ALL_FIXTURES {
            let chunks = fixture(fx);
            let mut st = ProtoState::new(*port, ProtoLimits::default());
            let mut out = Vec::new();
            for (i, (d, c)) in chunks.iter().enumerate() {
                if i % 3 == 2 {
                    st.on_gap(*d, c.len() as u64);
                } else {
                    st.on_data(*d, c, &mut out);
                }
            }
            st.on_gap(Direction::Forward, u64::MAX);
            st.on_data(Direction::Forward, b"x", &mut out);
            st.on_close(&mut out);
        }
    }

    /// Whole-flow fuzz: random ports, random and mutated real bytes,
    /// random splits and gaps. Must never panic.
    #[test]
    fn fuzz_proto_state_no_panic() {
        // PROTO_FUZZ_ITERS / PROTO_FUZZ_SEED allow longer one-off runs.
        let iters: u32 = std::env::var("PROTO_FUZZ_ITERS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(20_000);
        let seed: u64 = std::env::var("PROTO_FUZZ_SEED")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0x5eed_1234);
        let mut rng = XorShift::new(seed);
        let ports = [21u16, 23, 25, 80, 443, 1883, 2323, 8080, 9999];
        let fixtures: Vec<Vec<(Direction, Vec<u8>)>> =
            ALL_FIXTURES.iter().map(|(f, _)| fixture(f)).collect();
        for i in 0..iters {
            let port = ports[(rng.next() as usize) % ports.len()];
            let limits = ProtoLimits {
                max_buffer: 64 + (rng.next() as usize % 4096),
            };
            let mut st = ProtoState::new(port, limits);
            let mut out = Vec::new();
            let fx = &fixtures[(rng.next() as usize) % fixtures.len()];
            let steps = 1 + rng.next() % 8;
            for s in 0..steps {
                let dir = if rng.one_in(2) {
                    Direction::Forward
                } else {
                    Direction::Reverse
                };
                let data = if i % 3 == 0 {
                    let n = (rng.next() % 300) as usize;
                    rng.bytes(n)
                } else {
                    let (d, c) = &fx[(s as usize + i as usize) % fx.len()];
                    let m = rng.mutate(c);
                    st.on_data(*d, &m, &mut out);
                    assert!(
                        st.buffered() <= 2 * limits.max_buffer.max(64),
                        "{:?} {} > {}",
                        st.app(),
                        st.buffered(),
                        limits.max_buffer
                    );
                    continue;
                };
                if rng.one_in(10) {
                    st.on_gap(dir, rng.next() % 5000);
                }
                st.on_data(dir, &data, &mut out);
                // Every buffer is bounded by max_buffer per direction.
                assert!(
                    st.buffered() <= 2 * limits.max_buffer.max(64),
                    "{} > {}",
                    st.buffered(),
                    limits.max_buffer
                );
            }
            st.on_close(&mut out);
        }
    }
}

impl ProtoState {
    /// True when the content showed that the flow's responder is really the client (the flow was
    /// picked up mid-stream and its roles guessed wrong).
    pub fn roles_swapped(&self) -> bool {
        self.flipped
    }
}
