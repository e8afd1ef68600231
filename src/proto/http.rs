//! HTTP/1.x requests and responses (headers parsed with `httparse`).
//!
//! Each direction is a small state machine: headers (buffered up to
//! `max_buffer`), then a body skipped by counting (Content-Length or chunked
//! transfer coding) so that the next message on a keep-alive connection is
//! found. Requests are queued so that pipelined responses are matched in
//! order; a login carried by a request (Authorization header, or a
//! urlencoded form POST) gets its outcome from the matching response.
//! A `websocket` upgrade offering an `mqtt*` sub-protocol, answered by 101,
//! turns the flow into MQTT over WebSocket.

use std::collections::VecDeque;

use base64::Engine as _;

use super::mqtt::MqttAnalyzer;
use super::websocket::WsDecoder;
use super::{
    contains_ci, dir_index, starts_with_ci, to_usize, AppProto, Direction, HttpAuth, Outcome,
    PendingLogin, ProtoEvent,
};

const MAX_HEADERS: usize = 100;
/// Most requests waiting for a response.
const MAX_PENDING: usize = 128;
/// Longest chunk-size / trailer line.
const MAX_CHUNK_LINE: usize = 4096;

const USER_FIELDS: &[&str] = &[
    "user",
    "username",
    "login",
    "email",
    "usr",
    "uname",
    "name",
    "user_name",
    "userid",
];
const PASS_FIELDS: &[&str] = &["pass", "password", "pwd", "passwd", "passw"];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Headers,
    Body {
        remaining: u64,
    },
    /// A urlencoded form body being collected (bounded by max_buffer).
    Form {
        remaining: u64,
    },
    Chunked,
    /// Response without framing: the body runs to the end of the flow.
    UntilClose,
    /// Request side after a WebSocket upgrade request: bytes are held
    /// until the response says whether the upgrade happened.
    AwaitUpgrade,
    /// WebSocket frames carrying MQTT.
    Ws,
    /// After a gap: wait for a chunk that starts a message.
    Lost,
    /// Nothing more to parse in this direction.
    Dead,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ChunkPhase {
    Size,
    /// Chunk extension / rest of the size line.
    SizeRest,
    Data,
    /// CRLF after the data.
    DataEnd,
    Trailer,
}

#[derive(Clone, Copy, Debug)]
struct Chunk {
    phase: ChunkPhase,
    size: u64,
    digits: usize,
    line_len: usize,
}

impl Chunk {
    fn new() -> Self {
        Chunk {
            phase: ChunkPhase::Size,
            size: 0,
            digits: 0,
            line_len: 0,
        }
    }

    /// Consume chunked-body bytes. Returns (bytes used, finished) or an error.
    fn consume(&mut self, input: &[u8]) -> Result<(usize, bool), ()> {
        let mut i = 0usize;
        while i < input.len() {
            if self.phase == ChunkPhase::Data {
                let n = to_usize(self.size).min(input.len() - i);
                self.size -= n as u64;
                i += n;
                if self.size == 0 {
                    self.phase = ChunkPhase::DataEnd;
                    self.line_len = 0;
                }
                continue;
            }
            let Some(&b) = input.get(i) else { break };
            i += 1;
            self.line_len += 1;
            if self.line_len > MAX_CHUNK_LINE {
                return Err(());
            }
            match self.phase {
                ChunkPhase::Size => match b {
                    b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                        let d = (b as char).to_digit(16).unwrap_or(0);
                        self.size = self
                            .size
                            .checked_mul(16)
                            .and_then(|s| s.checked_add(u64::from(d)))
                            .ok_or(())?;
                        self.digits += 1;
                    }
                    b'\n' => self.end_size_line()?,
                    b';' | b' ' | b'\t' | b'\r' if self.digits > 0 => {
                        self.phase = ChunkPhase::SizeRest
                    }
                    _ => return Err(()),
                },
                ChunkPhase::SizeRest => {
                    if b == b'\n' {
                        self.end_size_line()?;
                    }
                }
                ChunkPhase::DataEnd => match b {
                    b'\r' => {}
                    b'\n' => {
                        self.phase = ChunkPhase::Size;
                        self.size = 0;
                        self.digits = 0;
                        self.line_len = 0;
                    }
                    _ => return Err(()),
                },
                ChunkPhase::Trailer => {
                    if b == b'\n' {
                        // An empty line (only "\r\n" or "\n") ends the body.
                        if self.line_len <= 2 {
                            *self = Chunk::new();
                            return Ok((i, true));
                        }
                        self.line_len = 0;
                    }
                }
                ChunkPhase::Data => {}
            }
        }
        Ok((i, false))
    }

    fn end_size_line(&mut self) -> Result<(), ()> {
        if self.digits == 0 {
            return Err(());
        }
        self.line_len = 0;
        self.phase = if self.size == 0 {
            ChunkPhase::Trailer
        } else {
            ChunkPhase::Data
        };
        Ok(())
    }
}

struct Side {
    buf: Vec<u8>,
    state: State,
    chunk: Chunk,
}

impl Side {
    fn new() -> Self {
        Side {
            buf: Vec::new(),
            state: State::Headers,
            chunk: Chunk::new(),
        }
    }
}

struct Pending {
    head: bool,
    connect: bool,
    ws_upgrade: bool,
    ws_mqtt: bool,
    login: Option<PendingLogin>,
}

struct WsMqtt {
    dec: [WsDecoder; 2],
    mqtt: MqttAnalyzer,
}

pub(crate) struct HttpAnalyzer {
    max_buffer: usize,
    app: AppProto,
    sides: [Side; 2],
    pending: VecDeque<Pending>,
    /// Bytes allocated to the waiting requests' credentials (kept as they come and go, so the
    /// memcap's count does not walk the queue).
    login_bytes: usize,
    /// A gap desynchronised request/response matching: pending logins are
    /// flushed as Unknown at the next call.
    stale: bool,
    ws: Option<Box<WsMqtt>>,
}

impl HttpAnalyzer {
    pub(crate) fn new(max_buffer: usize) -> Self {
        HttpAnalyzer {
            max_buffer: max_buffer.max(64),
            app: AppProto::Http,
            sides: [Side::new(), Side::new()],
            pending: VecDeque::new(),
            login_bytes: 0,
            stale: false,
            ws: None,
        }
    }

    pub(crate) fn app(&self) -> AppProto {
        self.app
    }

    fn anomaly(&self, name: &'static str, out: &mut Vec<ProtoEvent>) {
        out.push(ProtoEvent::Anomaly {
            app: self.app,
            name,
        });
    }

    fn state(&self, i: usize) -> State {
        self.sides.get(i).map_or(State::Dead, |s| s.state)
    }

    fn set_state(&mut self, i: usize, st: State) {
        if let Some(s) = self.sides.get_mut(i) {
            s.state = st;
        }
    }

    /// Bytes allocated to a waiting request's credentials.
    fn login_size(p: &Pending) -> usize {
        p.login.as_ref().map_or(0, PendingLogin::size)
    }

    fn push_pending(&mut self, p: Pending) {
        self.login_bytes += Self::login_size(&p);
        self.pending.push_back(p);
    }

    fn pop_pending(&mut self) -> Option<Pending> {
        let p = self.pending.pop_front()?;
        self.login_bytes = self.login_bytes.saturating_sub(Self::login_size(&p));
        Some(p)
    }

    fn flush_pending(&mut self, out: &mut Vec<ProtoEvent>) {
        while let Some(p) = self.pop_pending() {
            self.emit_login(p.login, Outcome::Unknown, out);
        }
    }

    fn emit_login(&self, login: Option<PendingLogin>, outcome: Outcome, out: &mut Vec<ProtoEvent>) {
        if let Some(l) = login {
            out.push(l.event(AppProto::Http, outcome));
        }
    }

    pub(crate) fn on_data(&mut self, dir: Direction, data: &[u8], out: &mut Vec<ProtoEvent>) {
        if self.stale {
            self.stale = false;
            self.flush_pending(out);
        }
        let i = dir_index(dir);
        let mut input = data;
        while !input.is_empty() {
            let used = match self.state(i) {
                State::Dead | State::UntilClose => return,
                State::Ws => {
                    self.feed_ws(dir, input, out);
                    return;
                }
                State::Lost => {
                    let starts = match dir {
                        Direction::Forward => looks_like_request(input),
                        Direction::Reverse => input.starts_with(b"HTTP/1."),
                    };
                    if !starts {
                        return;
                    }
                    self.set_state(i, State::Headers);
                    0
                }
                State::Headers => self.headers(dir, input, out),
                State::Body { remaining } => {
                    let n = to_usize(remaining).min(input.len());
                    let left = remaining - n as u64;
                    self.set_state(
                        i,
                        if left == 0 {
                            State::Headers
                        } else {
                            State::Body { remaining: left }
                        },
                    );
                    n
                }
                State::Form { remaining } => {
                    let n = to_usize(remaining).min(input.len());
                    let left = remaining - n as u64;
                    if let Some(s) = self.sides.get_mut(i) {
                        s.buf.extend_from_slice(input.get(..n).unwrap_or_default());
                        if left == 0 {
                            s.state = State::Headers;
                        } else {
                            s.state = State::Form { remaining: left };
                        }
                    }
                    if left == 0 {
                        self.finish_form(i);
                    }
                    n
                }
                State::Chunked => {
                    let Some(side) = self.sides.get_mut(i) else {
                        return;
                    };
                    match side.chunk.consume(input) {
                        Ok((n, done)) => {
                            if done {
                                side.state = State::Headers;
                            }
                            n
                        }
                        Err(()) => {
                            side.state = State::Dead;
                            self.anomaly("http.bad_chunk", out);
                            return;
                        }
                    }
                }
                State::AwaitUpgrade => {
                    let room = self
                        .max_buffer
                        .saturating_sub(self.sides.get(i).map_or(0, |s| s.buf.len()));
                    if input.len() > room {
                        self.set_state(i, State::Dead);
                        self.anomaly("http.upgrade_buffer_full", out);
                        return;
                    }
                    if let Some(s) = self.sides.get_mut(i) {
                        s.buf.extend_from_slice(input);
                    }
                    input.len()
                }
            };
            input = input.get(used..).unwrap_or_default();
        }
    }

    fn feed_ws(&mut self, dir: Direction, input: &[u8], out: &mut Vec<ProtoEvent>) {
        let i = dir_index(dir);
        let Some(ws) = self.ws.as_mut() else { return };
        let WsMqtt { dec, mqtt } = &mut **ws;
        let Some(d) = dec.get_mut(i) else { return };
        let err = d.feed(input, |payload| mqtt.on_data(dir, payload, out));
        if let Some(name) = err {
            self.anomaly(name, out);
        }
    }

    /// Header phase: returns the number of input bytes used.
    fn headers(&mut self, dir: Direction, input: &[u8], out: &mut Vec<ProtoEvent>) -> usize {
        let i = dir_index(dir);
        let max = self.max_buffer;
        let Some(side) = self.sides.get_mut(i) else {
            return input.len();
        };
        if side.buf.is_empty() {
            // Stray CR/LF between messages.
            let skip = input
                .iter()
                .take_while(|&&b| b == b'\r' || b == b'\n')
                .count();
            if skip > 0 {
                return skip;
            }
        }
        let old = side.buf.len();
        let room = max.saturating_sub(old);
        let n = room.min(input.len());
        side.buf
            .extend_from_slice(input.get(..n).unwrap_or_default());
        match find_header_end(&side.buf, old.saturating_sub(3)) {
            Some(end) => {
                side.buf.truncate(end);
                let used = end.saturating_sub(old);
                let buf = std::mem::take(&mut side.buf);
                match dir {
                    Direction::Forward => self.request(&buf, out),
                    Direction::Reverse => self.response(&buf, out),
                }
                if let Some(s) = self.sides.get_mut(i) {
                    if s.buf.is_empty() {
                        let mut b = buf;
                        b.clear();
                        s.buf = b;
                    }
                }
                used
            }
            None => {
                if side.buf.len() >= max {
                    side.buf.clear();
                    side.state = State::Dead;
                    self.anomaly("http.header_too_long", out);
                }
                n.max(1).min(input.len())
            }
        }
    }

    fn request(&mut self, head: &[u8], out: &mut Vec<ProtoEvent>) {
        let mut hdrs = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut hdrs);
        let mut cfg = httparse::ParserConfig::default();
        cfg.allow_multiple_spaces_in_request_line_delimiters(true)
            .ignore_invalid_headers_in_requests(true);
        let res = cfg.parse_request(&mut req, head);
        match res {
            Ok(httparse::Status::Complete(_)) => {}
            Ok(httparse::Status::Partial) | Err(_) => {
                let name = match res {
                    Err(httparse::Error::TooManyHeaders) => "http.too_many_headers",
                    _ => "http.bad_request",
                };
                self.set_state(0, State::Dead);
                self.anomaly(name, out);
                return;
            }
        }
        let method = req.method.unwrap_or("").to_owned();
        let uri = req.path.unwrap_or("").to_owned();
        let version = req.version.unwrap_or(1);
        let mut host = None;
        let mut user_agent = None;
        let mut auth = None;
        let mut content_length: Option<Option<u64>> = None;
        let mut chunked = false;
        let mut form = false;
        let mut upgrade_ws = false;
        let mut ws_mqtt = false;
        for h in req.headers.iter() {
            let v = h.value;
            let name = h.name;
            if name.eq_ignore_ascii_case("host") {
                host = Some(lossy_trim(v));
            } else if name.eq_ignore_ascii_case("user-agent") {
                user_agent = Some(lossy_trim(v));
            } else if name.eq_ignore_ascii_case("authorization") {
                auth = Some(parse_auth(v));
            } else if name.eq_ignore_ascii_case("content-length") {
                content_length = Some(parse_content_length(v, content_length));
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                chunked = last_coding_is_chunked(v);
            } else if name.eq_ignore_ascii_case("content-type") {
                form = starts_with_ci(trim(v), b"application/x-www-form-urlencoded");
            } else if name.eq_ignore_ascii_case("upgrade") {
                upgrade_ws = contains_ci(v, b"websocket");
            } else if name.eq_ignore_ascii_case("sec-websocket-protocol") {
                ws_mqtt = v
                    .split(|&b| b == b',')
                    .any(|p| starts_with_ci(trim(p), b"mqtt"));
            }
        }
        let ws_mqtt = upgrade_ws && ws_mqtt;
        let login = match &auth {
            Some(HttpAuth::Basic { user, password }) => {
                Some(PendingLogin::new(user, Some(password), "http-basic"))
            }
            Some(HttpAuth::Digest { user }) => Some(PendingLogin::new(user, None, "http-digest")),
            Some(HttpAuth::Bearer { .. }) => Some(PendingLogin::new("", None, "http-bearer")),
            _ => None,
        };
        if auth.as_ref().is_some_and(
            |a| matches!(a, HttpAuth::Other { scheme } if scheme.eq_ignore_ascii_case("basic")),
        ) {
            self.anomaly("http.bad_basic_auth", out);
        }
        let head_req = method.eq_ignore_ascii_case("HEAD");
        let connect = method.eq_ignore_ascii_case("CONNECT");
        let is_post = method.eq_ignore_ascii_case("POST");
        out.push(ProtoEvent::HttpRequest {
            method,
            uri,
            version,
            host,
            user_agent,
            auth,
            websocket_mqtt: ws_mqtt,
        });
        if self.pending.len() >= MAX_PENDING {
            if let Some(p) = self.pop_pending() {
                self.emit_login(p.login, Outcome::Unknown, out);
            }
            self.anomaly("http.pipeline_overflow", out);
        }
        self.push_pending(Pending {
            head: head_req,
            connect,
            ws_upgrade: upgrade_ws,
            ws_mqtt,
            login,
        });
        let state = match content_length {
            Some(None) => {
                self.anomaly("http.bad_content_length", out);
                State::Dead
            }
            _ if chunked => State::Chunked,
            Some(Some(0)) | None => {
                if upgrade_ws {
                    State::AwaitUpgrade
                } else {
                    State::Headers
                }
            }
            Some(Some(n)) => {
                if form && is_post && n <= self.max_buffer as u64 {
                    State::Form { remaining: n }
                } else {
                    State::Body { remaining: n }
                }
            }
        };
        if let Some(s) = self.sides.get_mut(0) {
            s.state = state;
            s.chunk = Chunk::new();
        }
    }

    /// A complete urlencoded body is in the request side's buffer.
    fn finish_form(&mut self, i: usize) {
        let Some(side) = self.sides.get_mut(i) else {
            return;
        };
        let found = form_login(&side.buf);
        side.buf.clear();
        if let Some((user, password)) = found {
            if let Some(p) = self.pending.back_mut() {
                if p.login.is_none() {
                    let login = PendingLogin::new(&user, Some(&password), "http-form");
                    self.login_bytes += login.size();
                    p.login = Some(login);
                }
            }
        }
    }

    fn response(&mut self, head: &[u8], out: &mut Vec<ProtoEvent>) {
        let mut hdrs = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut resp = httparse::Response::new(&mut hdrs);
        let mut cfg = httparse::ParserConfig::default();
        cfg.allow_spaces_after_header_name_in_responses(true)
            .allow_obsolete_multiline_headers_in_responses(true)
            .allow_multiple_spaces_in_response_status_delimiters(true)
            .ignore_invalid_headers_in_responses(true);
        let res = cfg.parse_response(&mut resp, head);
        match res {
            Ok(httparse::Status::Complete(_)) => {}
            Ok(httparse::Status::Partial) | Err(_) => {
                let name = match res {
                    Err(httparse::Error::TooManyHeaders) => "http.too_many_headers",
                    _ => "http.bad_response",
                };
                self.set_state(1, State::Dead);
                self.anomaly(name, out);
                return;
            }
        }
        let status = resp.code.unwrap_or(0);
        let mut content_length: Option<Option<u64>> = None;
        let mut chunked = false;
        for h in resp.headers.iter() {
            if h.name.eq_ignore_ascii_case("content-length") {
                content_length = Some(parse_content_length(h.value, content_length));
            } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                chunked = last_coding_is_chunked(h.value);
            }
        }
        out.push(ProtoEvent::HttpResponse { status });
        if (100..200).contains(&status) && status != 101 {
            // Interim response: the request is still waiting for its answer.
            self.set_state(1, State::Headers);
            return;
        }
        let req = self.pop_pending();
        let outcome = match status {
            200..=399 => Outcome::Accepted,
            401 | 403 => Outcome::Rejected,
            _ => Outcome::Unknown,
        };
        let (head_req, connect, ws_upgrade, ws_mqtt) =
            req.as_ref().map_or((false, false, false, false), |p| {
                (p.head, p.connect, p.ws_upgrade, p.ws_mqtt)
            });
        if let Some(p) = req {
            self.emit_login(p.login, outcome, out);
        }
        if status == 101 {
            if ws_upgrade && ws_mqtt {
                self.start_ws(out);
            } else {
                // Another protocol (plain WebSocket, h2c...): stop here.
                self.set_state(0, State::Dead);
                self.set_state(1, State::Dead);
            }
            return;
        }
        if connect && (200..300).contains(&status) {
            self.set_state(0, State::Dead);
            self.set_state(1, State::Dead);
            return;
        }
        if ws_upgrade && self.state(0) == State::AwaitUpgrade {
            // Upgrade refused: what the client sent meanwhile is HTTP again.
            self.set_state(0, State::Headers);
            let held = self
                .sides
                .get_mut(0)
                .map(|s| std::mem::take(&mut s.buf))
                .unwrap_or_default();
            if !held.is_empty() {
                self.on_data(Direction::Forward, &held, out);
            }
        }
        let no_body = head_req || status == 204 || status == 304 || status < 200;
        let state = if no_body {
            State::Headers
        } else if chunked {
            State::Chunked
        } else {
            match content_length {
                Some(Some(0)) => State::Headers,
                Some(Some(n)) => State::Body { remaining: n },
                Some(None) => {
                    self.anomaly("http.bad_content_length", out);
                    State::Dead
                }
                None => State::UntilClose,
            }
        };
        if let Some(s) = self.sides.get_mut(1) {
            s.state = state;
            s.chunk = Chunk::new();
        }
    }

    fn start_ws(&mut self, out: &mut Vec<ProtoEvent>) {
        self.app = AppProto::MqttWs;
        self.ws = Some(Box::new(WsMqtt {
            dec: [WsDecoder::new(), WsDecoder::new()],
            mqtt: MqttAnalyzer::new(self.max_buffer, AppProto::MqttWs),
        }));
        self.set_state(0, State::Ws);
        self.set_state(1, State::Ws);
        let held = self
            .sides
            .get_mut(0)
            .map(|s| std::mem::take(&mut s.buf))
            .unwrap_or_default();
        if !held.is_empty() {
            self.feed_ws(Direction::Forward, &held, out);
        }
    }

    /// Bytes of the buffers, each measured by `m` (`Vec::len`: content; `Vec::capacity`:
    /// memory).
    pub(crate) fn bytes(&self, m: fn(&Vec<u8>) -> usize) -> usize {
        let ws = self.ws.as_ref().map_or(0, |w| w.mqtt.bytes(m));
        self.sides.iter().map(|s| m(&s.buf)).sum::<usize>() + ws
    }

    /// Bytes allocated to the requests waiting for their responses (with their credentials),
    /// and to what an MQTT-over-WebSocket session keeps besides its buffers.
    pub(crate) fn pending_held(&self) -> usize {
        let ws = self.ws.as_ref().map_or(0, |w| w.mqtt.pending_held());
        self.pending.capacity() * std::mem::size_of::<Pending>() + self.login_bytes + ws
    }

    pub(crate) fn on_gap(&mut self, dir: Direction, len: u64) {
        let i = dir_index(dir);
        match self.state(i) {
            State::Body { remaining } if len <= remaining => {
                let left = remaining - len;
                self.set_state(
                    i,
                    if left == 0 {
                        State::Headers
                    } else {
                        State::Body { remaining: left }
                    },
                );
            }
            State::Dead | State::UntilClose => {}
            State::Ws => {
                if let Some(ws) = self.ws.as_mut() {
                    let WsMqtt { dec, mqtt } = &mut **ws;
                    if let Some(d) = dec.get_mut(i) {
                        if d.on_gap(len) {
                            mqtt.on_gap(dir, len);
                        }
                    }
                }
            }
            _ => {
                if let Some(s) = self.sides.get_mut(i) {
                    s.buf.clear();
                    s.chunk = Chunk::new();
                    s.state = State::Lost;
                }
                self.stale = true;
            }
        }
    }

    pub(crate) fn on_close(&mut self, out: &mut Vec<ProtoEvent>) {
        self.flush_pending(out);
        if let Some(ws) = self.ws.as_mut() {
            ws.mqtt.on_close(out);
        }
    }
}

/// End of the header block (index just past the empty line), searching from `from`.
fn find_header_end(buf: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while let Some(pos) = buf
        .get(i..)
        .and_then(|s| s.iter().position(|&b| b == b'\n'))
    {
        let nl = i + pos;
        match (buf.get(nl + 1), buf.get(nl + 2)) {
            (Some(b'\n'), _) => return Some(nl + 2),
            (Some(b'\r'), Some(b'\n')) => return Some(nl + 3),
            _ => {}
        }
        i = nl + 1;
    }
    None
}

fn looks_like_request(b: &[u8]) -> bool {
    let n = b.iter().take_while(|c| c.is_ascii_uppercase()).count();
    (3..=16).contains(&n) && b.get(n) == Some(&b' ')
}

fn trim(v: &[u8]) -> &[u8] {
    let start = v
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(v.len());
    let end = v
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |p| p + 1);
    v.get(start..end).unwrap_or_default()
}

fn lossy_trim(v: &[u8]) -> String {
    String::from_utf8_lossy(trim(v)).into_owned()
}

/// `prev`: an earlier Content-Length header; differing values are invalid.
fn parse_content_length(v: &[u8], prev: Option<Option<u64>>) -> Option<u64> {
    let s = std::str::from_utf8(trim(v)).ok()?;
    let n = s.parse::<u64>().ok()?;
    match prev {
        Some(Some(p)) if p != n => None,
        Some(None) => None,
        _ => Some(n),
    }
}

fn last_coding_is_chunked(v: &[u8]) -> bool {
    v.rsplit(|&b| b == b',')
        .next()
        .is_some_and(|last| trim(last).eq_ignore_ascii_case(b"chunked"))
}

/// Authorization header value.
fn parse_auth(v: &[u8]) -> HttpAuth {
    let v = trim(v);
    let scheme_len = v
        .iter()
        .position(|b| b.is_ascii_whitespace())
        .unwrap_or(v.len());
    let (scheme, rest) = v.split_at(scheme_len);
    let rest = trim(rest);
    if scheme.eq_ignore_ascii_case(b"basic") {
        let compact: Vec<u8> = rest
            .iter()
            .copied()
            .filter(|b| !b.is_ascii_whitespace())
            .collect();
        let engine = base64::engine::general_purpose::STANDARD;
        let decoded = engine.decode(&compact).ok().or_else(|| {
            let no_pad: Vec<u8> = compact.iter().copied().filter(|&b| b != b'=').collect();
            base64::engine::general_purpose::STANDARD_NO_PAD
                .decode(no_pad)
                .ok()
        });
        if let Some(d) = decoded {
            let colon = d.iter().position(|&b| b == b':');
            let (user, password) = match colon {
                Some(p) => (
                    d.get(..p).unwrap_or_default(),
                    d.get(p + 1..).unwrap_or_default(),
                ),
                None => (&d[..], &[][..]),
            };
            return HttpAuth::Basic {
                user: String::from_utf8_lossy(user).into_owned(),
                password: password.to_vec(),
            };
        }
    } else if scheme.eq_ignore_ascii_case(b"digest") {
        if let Some(user) = digest_param(rest, b"username") {
            return HttpAuth::Digest { user };
        }
    } else if scheme.eq_ignore_ascii_case(b"bearer") {
        return HttpAuth::Bearer {
            token_len: rest.len(),
        };
    }
    HttpAuth::Other {
        scheme: String::from_utf8_lossy(scheme).into_owned(),
    }
}

/// A `name=value` / `name="value"` parameter of a Digest header.
fn digest_param(v: &[u8], name: &[u8]) -> Option<String> {
    let mut rest = v;
    loop {
        let s = trim(rest);
        let s = s.strip_prefix(b",").map(trim).unwrap_or(s);
        if s.is_empty() {
            return None;
        }
        let eq = s.iter().position(|&b| b == b'=')?;
        let key = trim(s.get(..eq)?);
        let after = trim(s.get(eq + 1..)?);
        let (value, next): (Vec<u8>, &[u8]) = if after.first() == Some(&b'"') {
            let mut val = Vec::new();
            let mut j = 1usize;
            let mut esc = false;
            while let Some(&c) = after.get(j) {
                j += 1;
                if esc {
                    val.push(c);
                    esc = false;
                } else if c == b'\\' {
                    esc = true;
                } else if c == b'"' {
                    break;
                } else {
                    val.push(c);
                }
            }
            (val, after.get(j..).unwrap_or_default())
        } else {
            let end = after.iter().position(|&b| b == b',').unwrap_or(after.len());
            (
                trim(after.get(..end)?).to_vec(),
                after.get(end..).unwrap_or_default(),
            )
        };
        if key.eq_ignore_ascii_case(name) {
            return Some(String::from_utf8_lossy(&value).into_owned());
        }
        rest = next;
    }
}

fn url_decode(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0usize;
    while let Some(&b) = s.get(i) {
        match b {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = s
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok());
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(v) => {
                        out.push(v);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            _ => out.push(b),
        }
        i += 1;
    }
    out
}

/// (user, password) from an urlencoded form body with user- and password-like fields.
fn form_login(body: &[u8]) -> Option<(String, Vec<u8>)> {
    let mut user = None;
    let mut pass = None;
    for pair in body.split(|&b| b == b'&') {
        let eq = pair.iter().position(|&b| b == b'=').unwrap_or(pair.len());
        let key = url_decode(pair.get(..eq).unwrap_or_default());
        let val = pair.get(eq + 1..).unwrap_or_default();
        let key = String::from_utf8_lossy(&key).to_ascii_lowercase();
        if user.is_none() && USER_FIELDS.contains(&key.as_str()) {
            user = Some(String::from_utf8_lossy(&url_decode(val)).into_owned());
        } else if pass.is_none() && PASS_FIELDS.contains(&key.as_str()) {
            pass = Some(url_decode(val));
        }
    }
    Some((user?, pass?))
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::super::{ProtoLimits, ProtoState};
    use super::*;

    fn run_fx(fx: &str, port: u16) -> Vec<ProtoEvent> {
        run(port, &fixture(fx), ProtoLimits::default()).0
    }

    fn request_auth(ev: &[ProtoEvent]) -> Option<HttpAuth> {
        ev.iter().find_map(|e| match e {
            ProtoEvent::HttpRequest { auth, .. } => auth.clone(),
            _ => None,
        })
    }

    fn login(
        user: &str,
        pass: Option<&[u8]>,
        method: &'static str,
        outcome: Outcome,
    ) -> ProtoEvent {
        ProtoEvent::login(
            AppProto::Http,
            user.into(),
            pass.map(<[u8]>::to_vec),
            method,
            outcome,
        )
    }

    #[test]
    fn pipelined_credentials_are_kept_cut_and_counted() {
        use base64::Engine as _;
        let mut a = HttpAnalyzer::new(64 * 1024);
        let mut out = Vec::new();
        // 'a' then 300 two-byte characters: byte 256 falls inside one.
        let user = format!("a{}", "é".repeat(300));
        let cred = base64::engine::general_purpose::STANDARD
            .encode(format!("{user}:{}", "p".repeat(2000)));
        let req = format!("GET / HTTP/1.1\r\nHost: cam\r\nAuthorization: Basic {cred}\r\n\r\n");
        for _ in 0..100 {
            a.on_data(Direction::Forward, req.as_bytes(), &mut out);
        }
        // 100 requests wait for their responses, each with its credentials cut to 255 + 256
        // bytes (not 601 + 2,000), and the memcap counts them.
        let per = 255 + 256;
        let held = a.pending_held();
        assert!(
            (100 * per..=100 * per + 128 * std::mem::size_of::<Pending>()).contains(&held),
            "{held}"
        );
        for _ in 0..100 {
            a.on_data(
                Direction::Reverse,
                b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n",
                &mut out,
            );
        }
        let l = logins(&out);
        assert_eq!(l.len(), 100);
        // Answered, the requests give their credentials' bytes back.
        assert_eq!(a.login_bytes, 0);
        // Each login keeps 256 bytes of its password and says it had 2,000.
        let cut = &user[..255];
        let mut want = login(cut, Some(&[b'p'; 256]), "http-basic", Outcome::Rejected);
        if let ProtoEvent::Login { password_len, .. } = &mut want {
            *password_len = 2_000;
        }
        assert!(l.iter().all(|e| *e == &want), "{:?}", l.first());
        // The request event itself carries the whole credential (it is not kept).
        assert!(out.iter().any(|e| matches!(
            e,
            ProtoEvent::HttpRequest { auth: Some(HttpAuth::Basic { user: u, .. }), .. } if *u == user
        )));
    }

    #[test]
    fn basic_auth_304() {
        // shared/pcaps/http/arkime_http_basic_auth_anonymized.pcap (arkime, Apache-2.0)
        let ev = run_fx(
            include_str!("testdata/arkime_http_basic_auth_anonymized.hex"),
            2082,
        );
        assert_eq!(
            request_auth(&ev),
            Some(HttpAuth::Basic {
                user: "userrrrr".into(),
                password: b"passworddddd".to_vec()
            })
        );
        assert!(ev.contains(&ProtoEvent::HttpResponse { status: 304 }));
        assert_eq!(
            logins(&ev),
            vec![&login(
                "userrrrr",
                Some(b"passworddddd"),
                "http-basic",
                Outcome::Accepted
            )]
        );
    }

    #[test]
    fn basic_auth_colon_in_password_extra_space() {
        // shared/pcaps/http/zeek_http_basic_auth_colon_in_pass_rawip4.pcap: 'Basic  dGVzdDoxOjM0'
        let ev = run_fx(
            include_str!("testdata/zeek_http_basic_auth_colon_in_pass_rawip4.hex"),
            8000,
        );
        assert_eq!(
            request_auth(&ev),
            Some(HttpAuth::Basic {
                user: "test".into(),
                password: b"1:34".to_vec()
            })
        );
        assert_eq!(
            logins(&ev),
            vec![&login(
                "test",
                Some(b"1:34"),
                "http-basic",
                Outcome::Accepted
            )]
        );
        let ua = ev.iter().find_map(|e| match e {
            ProtoEvent::HttpRequest { user_agent, .. } => user_agent.clone(),
            _ => None,
        });
        assert!(ua.is_some_and(|u| u.starts_with("python-requests")));
    }

    #[test]
    fn basic_auth_401_rejected_and_chunked_body() {
        // The exchange of shared/pcaps/http/ndpi_http_basic_auth_401.pcap, rebuilt
        // (nDPI captures are LGPL, not copied): Basic test:fail2 -> 401 with a
        // chunked body split across segments.
        let fx = vec![
            (
                Direction::Forward,
                b"GET /password-ok.php HTTP/1.1\r\nHost: browserspy.dk\r\nUser-Agent: Mozilla/5.0\r\n\
Authorization: Basic dGVzdDpmYWlsMg==\r\nConnection: keep-alive\r\n\r\n"
                    .to_vec(),
            ),
            (
                Direction::Reverse,
                b"HTTP/1.1 401 Authorization Required\r\nWWW-Authenticate: Basic realm=\"x\"\r\n\
Transfer-Encoding: chunked\r\nContent-Type: text/html\r\n\r\n19; ext=1\r\n<html>unauthori"
                    .to_vec(),
            ),
            (Direction::Reverse, b"zed</html>\r\nD8\r\n".to_vec()),
            (Direction::Reverse, [b'x'; 216].to_vec()),
            (Direction::Reverse, b"\r\n0\r\nX-Trailer: 1\r\n\r\n".to_vec()),
        ];
        let (ev, _) = run(80, &fx, ProtoLimits::default());
        let host = ev.iter().find_map(|e| match e {
            ProtoEvent::HttpRequest { host, uri, .. } => Some((host.clone(), uri.clone())),
            _ => None,
        });
        assert_eq!(
            host,
            Some((Some("browserspy.dk".into()), "/password-ok.php".into()))
        );
        assert!(ev.contains(&ProtoEvent::HttpResponse { status: 401 }));
        assert_eq!(
            logins(&ev),
            vec![&login(
                "test",
                Some(b"fail2"),
                "http-basic",
                Outcome::Rejected
            )]
        );
        assert!(
            !ev.iter().any(|e| matches!(e, ProtoEvent::Anomaly { .. })),
            "{ev:?}"
        );
        // The same flow followed by a second keep-alive request/response on the
        // connection: the chunked body must have been skipped exactly.
        let mut st = ProtoState::new(80, ProtoLimits::default());
        let mut out = Vec::new();
        for (d, c) in &fx {
            st.on_data(*d, c, &mut out);
        }
        st.on_data(
            Direction::Forward,
            b"GET /next HTTP/1.1\r\nHost: h\r\n\r\n",
            &mut out,
        );
        st.on_data(
            Direction::Reverse,
            b"HTTP/1.1 204 No Content\r\n\r\n",
            &mut out,
        );
        assert!(
            out.contains(&ProtoEvent::HttpResponse { status: 204 }),
            "{out:?}"
        );
    }

    #[test]
    fn digest_bearer_other() {
        // shared/pcaps/http/arkime_http_digest_auth_anonymized.pcap (request only)
        let ev = run_fx(
            include_str!("testdata/arkime_http_digest_auth_anonymized.hex"),
            80,
        );
        assert_eq!(
            request_auth(&ev),
            Some(HttpAuth::Digest {
                user: "user12345678@domain.xxxx".into()
            })
        );
        assert_eq!(
            logins(&ev),
            vec![&login(
                "user12345678@domain.xxxx",
                None,
                "http-digest",
                Outcome::Unknown
            )]
        );
        // shared/pcaps/http/sv_http_bearer_token_loopback.pcap: Bearer mF_9.B5f-4.1JqM
        let ev = run_fx(
            include_str!("testdata/sv_http_bearer_token_loopback.hex"),
            8008,
        );
        assert_eq!(request_auth(&ev), Some(HttpAuth::Bearer { token_len: 15 }));
        // shared/pcaps/http/sv_http_unknown_auth_scheme_loopback.pcap: Turbo customAuthDataHere
        let ev = run_fx(
            include_str!("testdata/sv_http_unknown_auth_scheme_loopback.hex"),
            8000,
        );
        assert_eq!(
            request_auth(&ev),
            Some(HttpAuth::Other {
                scheme: "Turbo".into()
            })
        );
        assert!(logins(&ev).is_empty());
    }

    #[test]
    fn plain_get_with_content_length_body() {
        // shared/pcaps/http/zeek_http_get_plain.pcap
        let ev = run_fx(include_str!("testdata/zeek_http_get_plain.hex"), 80);
        assert!(ev.iter().any(
            |e| matches!(e, ProtoEvent::HttpRequest { method, uri, version: 1, .. }
            if method == "GET" && uri == "/download/CHANGES.bro-aux.txt")
        ));
        assert!(ev.contains(&ProtoEvent::HttpResponse { status: 200 }));
        assert!(logins(&ev).is_empty());
    }

    #[test]
    fn keep_alive_pipelined_with_logins() {
        let mut st = ProtoState::new(8080, ProtoLimits::default());
        let mut out = Vec::new();
        // Three pipelined requests in one chunk; the second one is a form login
        // whose body arrives in a later chunk.
        let reqs = b"GET /a HTTP/1.1\r\nHost: cam\r\nAuthorization: Basic YWRtaW46YWRtaW4=\r\n\r\n\
POST /login.cgi HTTP/1.1\r\nHost: cam\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 32\r\n\r\n";
        st.on_data(Direction::Forward, reqs, &mut out);
        st.on_data(
            Direction::Forward,
            b"username=root&password=p%40ss+1&",
            &mut out,
        );
        st.on_data(
            Direction::Forward,
            b"GET /c HTTP/1.0\r\nAuthorization: Basic dXNlcjp4\r\n\r\n",
            &mut out,
        );
        st.on_data(
            Direction::Reverse,
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhelloHTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 302 Found\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
            &mut out,
        );
        st.on_data(
            Direction::Reverse,
            b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n",
            &mut out,
        );
        st.on_close(&mut out);
        assert_eq!(
            logins(&out),
            vec![
                &login("admin", Some(b"admin"), "http-basic", Outcome::Accepted),
                &login("root", Some(b"p@ss 1"), "http-form", Outcome::Accepted),
                &login("user", Some(b"x"), "http-basic", Outcome::Rejected),
            ]
        );
        let statuses: Vec<u16> = out
            .iter()
            .filter_map(|e| match e {
                ProtoEvent::HttpResponse { status } => Some(*status),
                _ => None,
            })
            .collect();
        assert_eq!(statuses, vec![200, 100, 302, 401]);
    }

    #[test]
    fn header_too_long() {
        let mut a = HttpAnalyzer::new(256);
        let mut out = Vec::new();
        a.on_data(Direction::Forward, b"GET / HTTP/1.1\r\n", &mut out);
        for _ in 0..10 {
            a.on_data(
                Direction::Forward,
                b"X-Filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n",
                &mut out,
            );
        }
        a.on_data(Direction::Forward, b"\r\n", &mut out);
        assert_eq!(
            out,
            vec![ProtoEvent::Anomaly {
                app: AppProto::Http,
                name: "http.header_too_long"
            }]
        );
    }

    #[test]
    fn mqtt_over_websocket() {
        let mut st = ProtoState::new(8080, ProtoLimits::default());
        let mut out = Vec::new();
        st.on_data(
            Direction::Forward,
            b"GET /mqtt HTTP/1.1\r\nHost: broker\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Protocol: mqtt\r\nSec-WebSocket-Version: 13\r\n\r\n",
            &mut out,
        );
        st.on_data(
            Direction::Reverse,
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n",
            &mut out,
        );
        assert_eq!(st.app(), AppProto::MqttWs);
        // MQTT 3.1.1 CONNECT user=alice pass=secret, masked, split over two frames.
        let body = b"\x00\x04MQTT\x04\xc2\x00\x3c\x00\x03dev\x00\x05alice\x00\x06secret";
        let mut connect = vec![0x10, body.len() as u8];
        connect.extend_from_slice(body);
        let key = [0x11, 0x22, 0x33, 0x44];
        let mut frames = Vec::new();
        let (a, b) = connect.split_at(10);
        for (op, part) in [(0x02u8, a), (0x80u8, b)] {
            frames.push(op);
            frames.push(0x80 | part.len() as u8);
            frames.extend(key);
            frames.extend(part.iter().enumerate().map(|(i, x)| x ^ key[i % 4]));
        }
        for c in frames.chunks(5) {
            st.on_data(Direction::Forward, c, &mut out);
        }
        st.on_data(
            Direction::Reverse,
            &[0x82, 0x04, 0x20, 0x02, 0x00, 0x00],
            &mut out,
        );
        st.on_close(&mut out);
        assert!(out.iter().any(|e| matches!(
            e,
            ProtoEvent::HttpRequest {
                websocket_mqtt: true,
                ..
            }
        )));
        assert_eq!(
            logins(&out),
            vec![&ProtoEvent::login(
                AppProto::MqttWs,
                "alice".into(),
                Some(b"secret".to_vec()),
                "mqtt-connect",
                Outcome::Accepted
            )]
        );
    }

    #[test]
    fn websocket_frames_before_101_and_refused_upgrade() {
        let upgrade =
            b"GET /mqtt HTTP/1.1\r\nUpgrade: websocket\r\nSec-WebSocket-Protocol: mqttv3.1\r\n\r\n";
        // Unmasked binary frame with PINGREQ, sent before the 101 is seen.
        let ping_frame = [0x82u8, 0x02, 0xc0, 0x00];
        let mut a = HttpAnalyzer::new(1 << 16);
        let mut out = Vec::new();
        a.on_data(Direction::Forward, upgrade, &mut out);
        a.on_data(Direction::Forward, &ping_frame, &mut out);
        a.on_data(
            Direction::Reverse,
            b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
            &mut out,
        );
        assert_eq!(a.app(), AppProto::MqttWs);
        assert_eq!(out.last(), Some(&ProtoEvent::MqttPing));
        // Refused: the held bytes are parsed as HTTP again.
        let mut a = HttpAnalyzer::new(1 << 16);
        let mut out = Vec::new();
        a.on_data(Direction::Forward, upgrade, &mut out);
        a.on_data(Direction::Forward, b"GET /again HTTP/1.1\r\n\r\n", &mut out);
        a.on_data(
            Direction::Reverse,
            b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n",
            &mut out,
        );
        assert_eq!(a.app(), AppProto::Http);
        assert!(out
            .iter()
            .any(|e| matches!(e, ProtoEvent::HttpRequest { uri, .. } if uri == "/again")));
    }

    #[test]
    fn auth_header_parsing() {
        assert_eq!(
            parse_auth(b"Basic  dGVzdDoxMjM0"),
            HttpAuth::Basic {
                user: "test".into(),
                password: b"1234".to_vec()
            }
        );
        assert_eq!(
            parse_auth(b"basic dGVzdA"),
            HttpAuth::Basic {
                user: "test".into(),
                password: vec![]
            }
        );
        assert_eq!(
            parse_auth(b"Basic !!!"),
            HttpAuth::Other {
                scheme: "Basic".into()
            }
        );
        assert_eq!(
            parse_auth(b"Digest realm=\"r\", username=\"a\\\"b\", nonce=x"),
            HttpAuth::Digest {
                user: "a\"b".into()
            }
        );
        assert_eq!(
            parse_auth(b"Digest username=bob,realm=x"),
            HttpAuth::Digest { user: "bob".into() }
        );
        assert_eq!(
            form_login(b"email=a%40b.c&passwd=x&go=1"),
            Some(("a@b.c".into(), b"x".to_vec()))
        );
        assert_eq!(form_login(b"q=1&password=x"), None);
    }

    #[test]
    fn fuzz_http_no_panic() {
        let mut rng = XorShift::new(0xbeef);
        let seeds: Vec<Vec<u8>> = [
            include_str!("testdata/zeek_http_get_plain.hex"),
            include_str!("testdata/arkime_http_digest_auth_anonymized.hex"),
        ]
        .iter()
        .flat_map(|f| fixture(f).into_iter().map(|(_, c)| c))
        .chain([
            b"POST / HTTP/1.1\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 9\r\n\r\nuser=a&pass=b".to_vec(),
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;x\r\nhello\r\n0\r\nT: 1\r\n\r\n".to_vec(),
            b"GET / HTTP/1.1\r\nUpgrade: websocket\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n".to_vec(),
            b"HTTP/1.1 101 OK\r\n\r\n\x82\x02\xc0\x00".to_vec(),
        ])
        .collect();
        for i in 0..25_000usize {
            let mut a = HttpAnalyzer::new(64 + i % 2048);
            let mut out = Vec::new();
            for _ in 0..4 {
                let s = &seeds[(rng.next() as usize) % seeds.len()];
                let input = if i % 4 == 0 {
                    rng.bytes_upto(200)
                } else {
                    rng.mutate(s)
                };
                let dir = if s.starts_with(b"HTTP") {
                    Direction::Reverse
                } else {
                    Direction::Forward
                };
                let cut = if input.is_empty() {
                    0
                } else {
                    (rng.next() as usize) % input.len()
                };
                a.on_data(dir, &input[..cut], &mut out);
                if rng.one_in(8) {
                    a.on_gap(dir, rng.next() % 100);
                }
                a.on_data(dir, &input[cut..], &mut out);
            }
            a.on_close(&mut out);
        }
    }
}
