//! MQTT 3.1 (`MQIsdp`, level 3), 3.1.1 (level 4) and 5.0 (level 5).
//!
//! Each direction is framed independently: complete packets are parsed in
//! place; a partial packet is buffered up to `max_buffer`; a larger packet is
//! not buffered (a PUBLISH is reported from its head, the rest of its payload
//! skipped by counting; anything else is reported as
//! `mqtt.oversized_packet` and skipped). A broken remaining-length varint
//! stops the direction (`mqtt.bad_remaining_length`). After a gap the
//! direction resynchronises at the next chunk that starts with a plausible
//! fixed header, which also gives mid-stream pickup.

use super::{dir_index, to_usize, AppProto, Direction, Outcome, PendingLogin, ProtoEvent, Reader};

// Packet types.
const CONNECT: u8 = 1;
const CONNACK: u8 = 2;
const PUBLISH: u8 = 3;
const PUBREL: u8 = 6;
const SUBSCRIBE: u8 = 8;
const SUBACK: u8 = 9;
const UNSUBSCRIBE: u8 = 10;
const PINGREQ: u8 = 12;
const PINGRESP: u8 = 13;
const DISCONNECT: u8 = 14;
const AUTH: u8 = 15;

/// A parsed fixed header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Header {
    Ok {
        hlen: usize,
        rl: u64,
        ptype: u8,
        flags: u8,
    },
    /// Not enough bytes to know.
    Short,
    /// Remaining length varint longer than 4 bytes.
    Bad,
}

/// Parse a fixed header (type/flags byte + remaining-length varint).
pub(crate) fn fixed_header(b: &[u8]) -> Header {
    let Some(&first) = b.first() else {
        return Header::Short;
    };
    let mut rl: u64 = 0;
    for i in 0..4usize {
        let Some(&byte) = b.get(1 + i) else {
            return Header::Short;
        };
        rl |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Header::Ok {
                hlen: 2 + i,
                rl,
                ptype: first >> 4,
                flags: first & 0x0f,
            };
        }
    }
    Header::Bad
}

/// Flags that the packet type requires (None: any, PUBLISH).
fn required_flags(ptype: u8) -> Option<u8> {
    match ptype {
        PUBLISH => None,
        PUBREL | SUBSCRIBE | UNSUBSCRIBE => Some(2),
        _ => Some(0),
    }
}

/// Result of checking whether bytes look like a run of MQTT packets.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Plausible {
    /// Complete, plausible packets at the start.
    pub(crate) complete: usize,
    /// A plausible header of a packet that is not complete yet follows.
    pub(crate) header_ok: bool,
    /// Something implausible was found.
    pub(crate) invalid: bool,
}

/// Used by detection (mid-stream pickup) and resynchronisation after gaps.
pub(crate) fn plausible_stream(b: &[u8]) -> Plausible {
    let mut p = Plausible::default();
    let mut rest = b;
    while let Some(&first) = rest.first() {
        match fixed_header(rest) {
            Header::Short => {
                let (t, f) = (first >> 4, first & 0x0f);
                if t == 0
                    || required_flags(t).is_some_and(|r| r != f)
                    || (t == PUBLISH && (f >> 1) & 3 == 3)
                {
                    p.invalid = true;
                } else {
                    p.header_ok = true;
                }
                break;
            }
            Header::Bad => {
                p.invalid = true;
                break;
            }
            Header::Ok {
                hlen,
                rl,
                ptype,
                flags,
            } => {
                let body = rest.get(hlen..).unwrap_or_default();
                if !plausible_packet(ptype, flags, rl, body) {
                    p.invalid = true;
                    break;
                }
                let total = to_usize(rl).saturating_add(hlen);
                match rest.get(total..) {
                    Some(r) => {
                        p.complete += 1;
                        rest = r;
                    }
                    None => {
                        p.header_ok = true;
                        break;
                    }
                }
            }
        }
    }
    p
}

fn plausible_packet(ptype: u8, flags: u8, rl: u64, body: &[u8]) -> bool {
    if required_flags(ptype).is_some_and(|r| r != flags) {
        return false;
    }
    match ptype {
        CONNECT => {
            body.starts_with(b"\x00\x04MQTT")
                || body.starts_with(b"\x00\x06MQIsdp")
                || body.len() < 8
        }
        CONNACK => rl >= 2 && body.first().is_none_or(|b| b & 0xfe == 0),
        PUBLISH => {
            let qos = (flags >> 1) & 3;
            if qos == 3 {
                return false;
            }
            let pid = if qos > 0 { 2 } else { 0 };
            let mut r = Reader::new(body);
            match r.u16() {
                None => rl >= 2,
                Some(tlen) => {
                    if tlen == 0 && qos == 0 && rl < 3 {
                        return false;
                    }
                    if u64::from(tlen) + 2 + pid > rl {
                        return false;
                    }
                    let avail = r.rest();
                    let topic = avail
                        .get(..usize::from(tlen).min(avail.len()))
                        .unwrap_or_default();
                    // Topics are text: no control characters, no wildcards.
                    !topic
                        .iter()
                        .any(|&c| c < 0x20 || c == b'+' || c == b'#' || c == 0x7f)
                }
            }
        }
        4..=7 | 11 => rl >= 2,
        SUBSCRIBE | UNSUBSCRIBE | SUBACK => rl >= 3,
        PINGREQ | PINGRESP => rl == 0,
        DISCONNECT | AUTH => true,
        _ => false,
    }
}

/// MQTT variable byte integer from a reader (at most 4 bytes).
fn varint(r: &mut Reader<'_>) -> Option<u64> {
    let mut v: u64 = 0;
    for i in 0..4u32 {
        let b = r.u8()?;
        v |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// Skip a v5 properties block.
fn skip_props(r: &mut Reader<'_>) -> Option<()> {
    let n = varint(r)?;
    r.take(to_usize(n)).map(|_| ())
}

/// Walk a v5 property list; returns (authentication method, well formed).
fn walk_props(p: &[u8]) -> (Option<&[u8]>, bool) {
    let mut r = Reader::new(p);
    let mut auth = None;
    while !r.is_empty() {
        let Some(id) = varint(&mut r) else {
            return (auth, false);
        };
        let ok = match id {
            0x01 | 0x17 | 0x19 | 0x24 | 0x25 | 0x28 | 0x29 | 0x2a => r.take(1).is_some(),
            0x13 | 0x21 | 0x22 | 0x23 => r.take(2).is_some(),
            0x02 | 0x11 | 0x18 | 0x27 => r.take(4).is_some(),
            0x0b => varint(&mut r).is_some(),
            0x15 => match r.block16() {
                Some(s) => {
                    auth = Some(s);
                    true
                }
                None => false,
            },
            0x03 | 0x08 | 0x09 | 0x12 | 0x16 | 0x1a | 0x1c | 0x1f => r.block16().is_some(),
            0x26 => r.block16().is_some() && r.block16().is_some(),
            _ => false,
        };
        if !ok {
            return (auth, false);
        }
    }
    (auth, true)
}

/// UTF-8 string; invalid bytes are replaced and flagged.
fn utf8(b: &[u8], bad: &mut bool) -> String {
    match std::str::from_utf8(b) {
        Ok(s) => s.to_owned(),
        Err(_) => {
            *bad = true;
            String::from_utf8_lossy(b).into_owned()
        }
    }
}

/// A PUBLISH too large to buffer: its head is collected, then skipped.
#[derive(Clone, Copy)]
struct Oversized {
    total: u64,
    hlen: usize,
    rl: u64,
    flags: u8,
}

#[derive(Default)]
struct Stream {
    buf: Vec<u8>,
    skip: u64,
    oversized: Option<Oversized>,
    dead: bool,
    lost: bool,
}

pub(crate) struct MqttAnalyzer {
    app: AppProto,
    max_buffer: usize,
    level: Option<u8>,
    streams: [Stream; 2],
    pending: Option<PendingLogin>,
    /// The last topics published (in either direction): publishing to the same topic again
    /// shares it instead of allocating a new string per message.
    last_topic: [Option<std::sync::Arc<str>>; 2],
    /// Which slot of `last_topic` the next new topic replaces.
    next_slot: usize,
}

enum PubResult {
    Done,
    Incomplete,
}

impl MqttAnalyzer {
    pub(crate) fn new(max_buffer: usize, app: AppProto) -> Self {
        MqttAnalyzer {
            app,
            max_buffer: max_buffer.max(16),
            level: None,
            streams: [Stream::default(), Stream::default()],
            pending: None,
            last_topic: [None, None],
            next_slot: 0,
        }
    }

    fn anomaly(&self, name: &'static str, out: &mut Vec<ProtoEvent>) {
        out.push(ProtoEvent::Anomaly {
            app: self.app,
            name,
        });
    }

    pub(crate) fn on_data(&mut self, dir: Direction, data: &[u8], out: &mut Vec<ProtoEvent>) {
        let i = dir_index(dir);
        let mut input = data;
        {
            let Some(st) = self.streams.get_mut(i) else {
                return;
            };
            if st.dead {
                return;
            }
            if st.lost {
                let p = plausible_stream(input);
                if p.invalid || (p.complete == 0 && !p.header_ok) {
                    return;
                }
                st.lost = false;
            }
        }
        while !input.is_empty() {
            let max_buffer = self.max_buffer;
            let Some(st) = self.streams.get_mut(i) else {
                return;
            };
            if st.dead {
                return;
            }
            if st.skip > 0 {
                let n = to_usize(st.skip).min(input.len());
                st.skip -= n as u64;
                input = input.get(n..).unwrap_or_default();
                continue;
            }
            if let Some(ov) = st.oversized {
                if st.buf.is_empty() {
                    // Try the head in place before copying anything.
                    let body = input.get(ov.hlen..).unwrap_or_default();
                    if let PubResult::Done = self.publish(ov.flags, body, ov.rl, out) {
                        if let Some(st) = self.streams.get_mut(i) {
                            st.oversized = None;
                            st.skip = ov.total;
                        }
                        continue;
                    }
                }
                let Some(st) = self.streams.get_mut(i) else {
                    return;
                };
                let limit = to_usize(ov.total).min(max_buffer);
                let want = limit.saturating_sub(st.buf.len());
                let n = want.min(input.len());
                st.buf.extend_from_slice(input.get(..n).unwrap_or_default());
                input = input.get(n..).unwrap_or_default();
                let full = st.buf.len() >= limit;
                let mut buf = std::mem::take(&mut st.buf);
                let body = buf.get(ov.hlen..).unwrap_or_default();
                let res = self.publish(ov.flags, body, ov.rl, out);
                let done = match res {
                    PubResult::Done => true,
                    PubResult::Incomplete if full => {
                        self.anomaly("mqtt.oversized_packet", out);
                        true
                    }
                    PubResult::Incomplete => false,
                };
                let Some(st) = self.streams.get_mut(i) else {
                    return;
                };
                if done {
                    st.skip = ov.total.saturating_sub(buf.len() as u64);
                    st.oversized = None;
                    buf.clear();
                }
                st.buf = buf;
                continue;
            }
            if st.buf.is_empty() {
                match fixed_header(input) {
                    Header::Bad => {
                        st.dead = true;
                        self.anomaly("mqtt.bad_remaining_length", out);
                        return;
                    }
                    Header::Short => {
                        st.buf.extend_from_slice(input);
                        return;
                    }
                    Header::Ok {
                        hlen,
                        rl,
                        ptype,
                        flags,
                    } => {
                        let total = rl.saturating_add(hlen as u64);
                        if let Some(pkt) = input.get(..to_usize(total)) {
                            input = input.get(pkt.len()..).unwrap_or_default();
                            self.packet(
                                dir,
                                ptype,
                                flags,
                                pkt.get(hlen..).unwrap_or_default(),
                                out,
                            );
                            continue;
                        }
                        if total > max_buffer as u64 {
                            self.start_oversized(i, hlen, rl, ptype, flags, out);
                            continue;
                        }
                        st.buf.extend_from_slice(input);
                        return;
                    }
                }
            } else {
                match fixed_header(&st.buf) {
                    Header::Short => {
                        if let Some((&b, rest)) = input.split_first() {
                            st.buf.push(b);
                            input = rest;
                        }
                        // A zero-length packet is complete with its header.
                        if let Header::Ok {
                            rl: 0,
                            ptype,
                            flags,
                            ..
                        } = fixed_header(&st.buf)
                        {
                            st.buf.clear();
                            self.packet(dir, ptype, flags, &[], out);
                        }
                    }
                    Header::Bad => {
                        st.dead = true;
                        st.buf.clear();
                        self.anomaly("mqtt.bad_remaining_length", out);
                        return;
                    }
                    Header::Ok {
                        hlen,
                        rl,
                        ptype,
                        flags,
                    } => {
                        let total = rl.saturating_add(hlen as u64);
                        if total > max_buffer as u64 {
                            self.start_oversized(i, hlen, rl, ptype, flags, out);
                            continue;
                        }
                        let need = to_usize(total).saturating_sub(st.buf.len());
                        let n = need.min(input.len());
                        st.buf.extend_from_slice(input.get(..n).unwrap_or_default());
                        input = input.get(n..).unwrap_or_default();
                        if st.buf.len() >= to_usize(total) {
                            let mut buf = std::mem::take(&mut st.buf);
                            self.packet(
                                dir,
                                ptype,
                                flags,
                                buf.get(hlen..).unwrap_or_default(),
                                out,
                            );
                            buf.clear();
                            if let Some(st) = self.streams.get_mut(i) {
                                st.buf = buf;
                            }
                        }
                    }
                }
            }
        }
    }

    /// A packet larger than max_buffer: PUBLISH heads are collected, others skipped.
    fn start_oversized(
        &mut self,
        i: usize,
        hlen: usize,
        rl: u64,
        ptype: u8,
        flags: u8,
        out: &mut Vec<ProtoEvent>,
    ) {
        let total = rl.saturating_add(hlen as u64);
        if ptype == PUBLISH {
            if let Some(st) = self.streams.get_mut(i) {
                st.oversized = Some(Oversized {
                    total,
                    hlen,
                    rl,
                    flags,
                });
            }
        } else {
            self.anomaly("mqtt.oversized_packet", out);
            if let Some(st) = self.streams.get_mut(i) {
                st.skip = total.saturating_sub(st.buf.len() as u64);
                st.buf.clear();
            }
        }
    }

    /// Bytes of the buffers, each measured by `m` (`Vec::len`: content; `Vec::capacity`:
    /// memory).
    pub(crate) fn bytes(&self, m: fn(&Vec<u8>) -> usize) -> usize {
        self.streams.iter().map(|s| m(&s.buf)).sum()
    }

    /// Bytes allocated to the login waiting for its CONNACK and to the last topics kept.
    pub(crate) fn pending_held(&self) -> usize {
        let login = self.pending.as_ref().map_or(0, PendingLogin::size);
        let topics: usize = self.last_topic.iter().flatten().map(|t| t.len()).sum();
        login + topics
    }

    pub(crate) fn on_gap(&mut self, dir: Direction, len: u64) {
        let Some(st) = self.streams.get_mut(dir_index(dir)) else {
            return;
        };
        if st.dead {
            return;
        }
        if st.skip >= len {
            st.skip -= len;
            return;
        }
        st.buf.clear();
        st.oversized = None;
        st.skip = 0;
        st.lost = true;
    }

    pub(crate) fn on_close(&mut self, out: &mut Vec<ProtoEvent>) {
        self.flush_login(Outcome::Unknown, out);
    }

    fn flush_login(&mut self, outcome: Outcome, out: &mut Vec<ProtoEvent>) {
        if let Some(p) = self.pending.take() {
            out.push(p.event(self.app, outcome));
        }
    }

    fn is_v5(&self) -> bool {
        self.level == Some(5)
    }

    /// One complete packet; `body` is everything after the fixed header.
    fn packet(
        &mut self,
        _dir: Direction,
        ptype: u8,
        flags: u8,
        body: &[u8],
        out: &mut Vec<ProtoEvent>,
    ) {
        if required_flags(ptype).is_some_and(|r| r != flags) {
            self.anomaly("mqtt.bad_flags", out);
        }
        match ptype {
            CONNECT => self.connect(body, out),
            CONNACK => self.connack(body, out),
            PUBLISH => {
                if let PubResult::Incomplete = self.publish(flags, body, body.len() as u64, out) {
                    self.anomaly("mqtt.malformed_publish", out);
                }
            }
            SUBSCRIBE => self.subscribe(body, out),
            UNSUBSCRIBE => self.unsubscribe(body, out),
            PINGREQ => out.push(ProtoEvent::MqttPing),
            DISCONNECT => out.push(ProtoEvent::MqttDisconnect),
            4..=7 | SUBACK | 11 | PINGRESP | AUTH => {}
            _ => self.anomaly("mqtt.reserved_type", out),
        }
    }

    fn connect(&mut self, body: &[u8], out: &mut Vec<ProtoEvent>) {
        let mut bad_utf8 = false;
        let mut r = Reader::new(body);
        let name = r.block16();
        let level = match (name, r.u8()) {
            (Some(b"MQTT"), Some(l)) => l,
            (Some(b"MQIsdp"), Some(l)) => l,
            (Some(_), Some(_)) => {
                self.anomaly("mqtt.bad_protocol_name", out);
                return;
            }
            _ => {
                self.anomaly("mqtt.malformed_connect", out);
                return;
            }
        };
        let parsed = (|| {
            let flags = r.u8()?;
            let keep_alive = r.u16()?;
            let mut auth_method = None;
            let mut props_ok = true;
            if level == 5 {
                let n = varint(&mut r)?;
                let props = r.take(to_usize(n))?;
                let (auth, ok) = walk_props(props);
                props_ok = ok;
                auth_method = auth.map(|a| utf8(a, &mut bad_utf8));
            }
            let client_id = utf8(r.block16()?, &mut bad_utf8);
            let mut will_topic = None;
            if flags & 0x04 != 0 {
                if level == 5 {
                    skip_props(&mut r)?;
                }
                will_topic = Some(utf8(r.block16()?, &mut bad_utf8));
                r.block16()?;
            }
            let username = if flags & 0x80 != 0 {
                Some(utf8(r.block16()?, &mut bad_utf8))
            } else {
                None
            };
            let password = if flags & 0x40 != 0 {
                Some(r.block16()?.to_vec())
            } else {
                None
            };
            Some((
                flags,
                keep_alive,
                auth_method,
                props_ok,
                client_id,
                will_topic,
                username,
                password,
            ))
        })();
        let Some((
            flags,
            keep_alive,
            auth_method,
            props_ok,
            client_id,
            will_topic,
            username,
            password,
        )) = parsed
        else {
            self.anomaly("mqtt.malformed_connect", out);
            return;
        };
        if !props_ok {
            self.anomaly("mqtt.bad_property", out);
        }
        if bad_utf8 {
            self.anomaly("mqtt.bad_utf8", out);
        }
        // A second CONNECT before any CONNACK: the first attempt's result is lost.
        self.flush_login(Outcome::Unknown, out);
        self.level = Some(level);
        if let Some(u) = &username {
            self.pending = Some(PendingLogin::new(u, password.as_deref(), "mqtt-connect"));
        }
        out.push(ProtoEvent::MqttConnect {
            level,
            client_id,
            clean_session: flags & 0x02 != 0,
            keep_alive,
            will_topic,
            username,
            password,
            auth_method,
        });
    }

    fn connack(&mut self, body: &[u8], out: &mut Vec<ProtoEvent>) {
        let (Some(_ack_flags), Some(&code)) = (body.first(), body.get(1)) else {
            self.anomaly("mqtt.malformed_connack", out);
            return;
        };
        let v5 = self.is_v5() || (self.level.is_none() && body.len() > 2);
        let outcome = if code == 0 {
            Outcome::Accepted
        } else {
            Outcome::Rejected
        };
        out.push(ProtoEvent::MqttConnack { code, outcome });
        // Login result: only credential-related refusals count as Rejected.
        let login = match (code, v5) {
            (0, _) => Outcome::Accepted,
            (4 | 5, false) => Outcome::Rejected,
            (0x86 | 0x87 | 0x8a | 0x8c, true) => Outcome::Rejected,
            _ => Outcome::Unknown,
        };
        self.flush_login(login, out);
    }

    /// PUBLISH from its (possibly partial) body; `rl` is the real remaining length.
    fn publish(&mut self, flags: u8, body: &[u8], rl: u64, out: &mut Vec<ProtoEvent>) -> PubResult {
        let qos = (flags >> 1) & 3;
        let mut r = Reader::new(body);
        let Some(tlen) = r.u16() else {
            return PubResult::Incomplete;
        };
        let Some(topic) = r.take(usize::from(tlen)) else {
            return PubResult::Incomplete;
        };
        if qos > 0 && r.u16().is_none() {
            return PubResult::Incomplete;
        }
        if self.is_v5() && skip_props(&mut r).is_none() {
            return PubResult::Incomplete;
        }
        let used = (body.len() - r.rest().len()) as u64;
        if used > rl {
            return PubResult::Incomplete;
        }
        if qos == 3 {
            self.anomaly("mqtt.bad_qos", out);
        }
        let cached = self
            .last_topic
            .iter()
            .flatten()
            .find(|t| t.as_bytes() == topic)
            .cloned();
        let topic = match cached {
            Some(t) => t,
            None => {
                let mut bad = false;
                let t: std::sync::Arc<str> = utf8(topic, &mut bad).into();
                if bad {
                    self.anomaly("mqtt.bad_utf8", out);
                }
                let slot = self.next_slot % 2;
                self.next_slot = slot + 1;
                if let Some(s) = self.last_topic.get_mut(slot) {
                    *s = Some(std::sync::Arc::clone(&t));
                }
                t
            }
        };
        out.push(ProtoEvent::MqttPublish {
            topic,
            qos,
            retain: flags & 1 != 0,
            dup: flags & 8 != 0,
            payload_len: u32::try_from(rl - used).unwrap_or(u32::MAX),
        });
        PubResult::Done
    }

    fn subscribe(&mut self, body: &[u8], out: &mut Vec<ProtoEvent>) {
        let v5 = self.is_v5();
        let parse = |v5: bool| -> Option<Vec<(String, u8)>> {
            let mut r = Reader::new(body);
            r.u16()?;
            if v5 {
                skip_props(&mut r)?;
            }
            let mut v = Vec::new();
            let mut bad = false;
            while !r.is_empty() {
                let f = r.block16()?;
                let opts = r.u8()?;
                v.push((utf8(f, &mut bad), opts & 3));
            }
            if v.is_empty() || bad {
                return None;
            }
            Some(v)
        };
        // Level unknown (mid-stream): try 3.1.1 first, then 5.0.
        let res = parse(v5).or_else(|| {
            if self.level.is_none() {
                parse(true)
            } else {
                None
            }
        });
        match res {
            Some(filters) => out.push(ProtoEvent::MqttSubscribe { filters }),
            None => self.anomaly("mqtt.malformed_subscribe", out),
        }
    }

    fn unsubscribe(&mut self, body: &[u8], out: &mut Vec<ProtoEvent>) {
        let v5 = self.is_v5();
        let parse = |v5: bool| -> Option<Vec<String>> {
            let mut r = Reader::new(body);
            r.u16()?;
            if v5 {
                skip_props(&mut r)?;
            }
            let mut v = Vec::new();
            let mut bad = false;
            while !r.is_empty() {
                v.push(utf8(r.block16()?, &mut bad));
            }
            if v.is_empty() || bad {
                return None;
            }
            Some(v)
        };
        let res = parse(v5).or_else(|| {
            if self.level.is_none() {
                parse(true)
            } else {
                None
            }
        });
        match res {
            Some(filters) => out.push(ProtoEvent::MqttUnsubscribe { filters }),
            None => self.anomaly("mqtt.malformed_unsubscribe", out),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::super::{ProtoLimits, ProtoState};
    use super::*;

    fn run_fx(fx: &str, port: u16) -> Vec<ProtoEvent> {
        run(port, &fixture(fx), ProtoLimits::default()).0
    }

    fn connect_of(ev: &[ProtoEvent]) -> &ProtoEvent {
        ev.iter()
            .find(|e| matches!(e, ProtoEvent::MqttConnect { .. }))
            .expect("connect")
    }

    fn login(user: &str, pass: &[u8], outcome: Outcome) -> ProtoEvent {
        ProtoEvent::login(
            AppProto::Mqtt,
            user.into(),
            Some(pass.to_vec()),
            "mqtt-connect",
            outcome,
        )
    }

    #[test]
    fn v31_connect_userpass() {
        // shared/pcaps/mqtt/sv_mqtt31_pub_userpass_ipv6.pcap (suricata-verify, MIT)
        let ev = run_fx(
            include_str!("testdata/sv_mqtt31_pub_userpass_ipv6.hex"),
            1883,
        );
        assert_eq!(
            ev.first(),
            Some(&ProtoEvent::Detected {
                app: AppProto::Mqtt
            })
        );
        match connect_of(&ev) {
            ProtoEvent::MqttConnect {
                level,
                client_id,
                username,
                password,
                ..
            } => {
                assert_eq!(*level, 3);
                assert_eq!(client_id, "myvoiceismypassport");
                assert_eq!(username.as_deref(), Some("user"));
                assert_eq!(password.as_deref(), Some(&b"pass"[..]));
            }
            _ => unreachable!(),
        }
        assert_eq!(
            logins(&ev),
            vec![&login("user", b"pass", Outcome::Accepted)]
        );
        assert!(ev
            .iter()
            .any(|e| matches!(e, ProtoEvent::MqttPublish { .. })));
    }

    #[test]
    fn v311_subscribe_userpass() {
        // shared/pcaps/mqtt/sv_mqtt311_sub_userpass_ipv6.pcap
        let ev = run_fx(
            include_str!("testdata/sv_mqtt311_sub_userpass_ipv6.hex"),
            1883,
        );
        match connect_of(&ev) {
            ProtoEvent::MqttConnect { level, .. } => assert_eq!(*level, 4),
            _ => unreachable!(),
        }
        let sub = ev.iter().find_map(|e| match e {
            ProtoEvent::MqttSubscribe { filters } => Some(filters.clone()),
            _ => None,
        });
        assert_eq!(
            sub,
            Some(vec![("topicX".to_string(), 0), ("topicY".to_string(), 0)])
        );
        assert_eq!(logins(&ev).len(), 1);
    }

    #[test]
    fn v5_connect_many_properties() {
        // shared/pcaps/mqtt/sv_mqtt5_pub_mosquittoprops_ipv6.pcap: CONNECT with
        // user properties, will properties, etc.
        let ev = run_fx(
            include_str!("testdata/sv_mqtt5_pub_mosquittoprops_ipv6.hex"),
            1883,
        );
        match connect_of(&ev) {
            ProtoEvent::MqttConnect {
                level,
                client_id,
                will_topic,
                username,
                password,
                keep_alive,
                ..
            } => {
                assert_eq!(*level, 5);
                assert_eq!(client_id, "myvoiceismypassport");
                assert_eq!(will_topic.as_deref(), Some("willtopic"));
                assert_eq!(username.as_deref(), Some("user"));
                assert_eq!(password.as_deref(), Some(&b"pass"[..]));
                assert_eq!(*keep_alive, 60);
            }
            _ => unreachable!(),
        }
        assert!(ev.contains(&ProtoEvent::MqttConnack {
            code: 0,
            outcome: Outcome::Accepted
        }));
        let publish = ev
            .iter()
            .find(|e| matches!(e, ProtoEvent::MqttPublish { .. }));
        assert_eq!(
            publish,
            Some(&ProtoEvent::MqttPublish {
                topic: "topicX".into(),
                qos: 1,
                retain: false,
                dup: false,
                payload_len: 16 // "baabaablacksheep"
            })
        );
        assert_eq!(
            logins(&ev),
            vec![&login("user", b"pass", Outcome::Accepted)]
        );
        assert!(
            !ev.iter().any(|e| matches!(e, ProtoEvent::Anomaly { .. })),
            "{ev:?}"
        );
        assert!(ev.contains(&ProtoEvent::MqttDisconnect));
    }

    #[test]
    fn v5_connack_134_rejected() {
        // shared/pcaps/mqtt/sv_mqtt5_connack134_badcreds_EDITED_ipv6.pcap (CONNECT + CONNACK 0x86)
        let ev = run_fx(
            include_str!("testdata/sv_mqtt5_connack134_badcreds_EDITED_ipv6.hex"),
            1883,
        );
        assert!(ev.contains(&ProtoEvent::MqttConnack {
            code: 134,
            outcome: Outcome::Rejected
        }));
        assert_eq!(
            logins(&ev),
            vec![&login("user", b"pass", Outcome::Rejected)]
        );
    }

    #[test]
    fn v5_custom_auth_no_login() {
        // shared/pcaps/mqtt/sv_mqtt5_customauth_rejected_ipv6.pcap: auth method
        // property, no username/password, CONNACK 140.
        let ev = run_fx(
            include_str!("testdata/sv_mqtt5_customauth_rejected_ipv6.hex"),
            1883,
        );
        match connect_of(&ev) {
            ProtoEvent::MqttConnect {
                username,
                password,
                auth_method,
                ..
            } => {
                assert_eq!(*username, None);
                assert_eq!(*password, None);
                assert_eq!(auth_method.as_deref(), Some("foo"));
            }
            _ => unreachable!(),
        }
        assert!(ev.contains(&ProtoEvent::MqttConnack {
            code: 140,
            outcome: Outcome::Rejected
        }));
        assert!(logins(&ev).is_empty());
    }

    #[test]
    fn v31_no_credentials_many_packets() {
        // shared/pcaps/mqtt/zeek_mqtt31_public_broker_noauth.pcap (zeek, BSD)
        let ev = run_fx(
            include_str!("testdata/zeek_mqtt31_public_broker_noauth.hex"),
            1883,
        );
        match connect_of(&ev) {
            ProtoEvent::MqttConnect {
                client_id,
                username,
                ..
            } => {
                assert!(client_id.starts_with("paho/"));
                assert_eq!(*username, None);
            }
            _ => unreachable!(),
        }
        assert!(logins(&ev).is_empty());
        assert!(ev.contains(&ProtoEvent::MqttPing));
        assert!(ev
            .iter()
            .any(|e| matches!(e, ProtoEvent::MqttSubscribe { .. })));
    }

    #[test]
    fn large_publish_buffered_and_split() {
        // shared/pcaps/mqtt/sv_mqtt5_pub_jpeg_37kB_ipv6.pcap: 35 KB PUBLISH over 2 chunks.
        let fx = fixture(include_str!("testdata/sv_mqtt5_pub_jpeg_37kB_ipv6.hex"));
        let (ev, _) = run(1883, &fx, ProtoLimits::default());
        let publish: Vec<_> = ev
            .iter()
            .filter(|e| matches!(e, ProtoEvent::MqttPublish { .. }))
            .collect();
        assert_eq!(publish.len(), 1);
        let expected = ProtoEvent::MqttPublish {
            topic: "topicX".into(),
            qos: 0,
            retain: false,
            dup: false,
            payload_len: 35758,
        };
        assert_eq!(publish[0], &expected);
        assert!(ev.contains(&ProtoEvent::MqttDisconnect));
        // Not buffered: max_buffer smaller than the packet. Same PUBLISH, payload skipped.
        let (small, _) = run(1883, &fx, ProtoLimits { max_buffer: 4096 });
        assert!(small.contains(&expected));
        assert!(small.contains(&ProtoEvent::MqttDisconnect), "{small:?}");
        assert!(!small
            .iter()
            .any(|e| matches!(e, ProtoEvent::Anomaly { .. })));
        // Byte by byte with a small buffer.
        let mut st = ProtoState::new(1883, ProtoLimits { max_buffer: 1024 });
        let mut out = Vec::new();
        for (d, c) in &fx {
            for b in c {
                st.on_data(*d, std::slice::from_ref(b), &mut out);
            }
        }
        assert!(out.contains(&expected));
        assert!(out.contains(&ProtoEvent::MqttDisconnect));
    }

    #[test]
    fn oversized_non_publish_is_skipped() {
        let mut a = MqttAnalyzer::new(64, AppProto::Mqtt);
        let mut out = Vec::new();
        // SUBSCRIBE with rl = 200, then PINGREQ.
        let mut pkt = vec![0x82, 0xc8, 0x01];
        pkt.extend(std::iter::repeat_n(b'a', 200));
        pkt.extend([0xc0, 0x00]);
        // Split so that the packet cannot be parsed in place.
        a.on_data(Direction::Forward, &pkt[..50], &mut out);
        a.on_data(Direction::Forward, &pkt[50..], &mut out);
        assert_eq!(
            out,
            vec![
                ProtoEvent::Anomaly {
                    app: AppProto::Mqtt,
                    name: "mqtt.oversized_packet"
                },
                ProtoEvent::MqttPing
            ]
        );
    }

    #[test]
    fn bad_remaining_length_stops_direction() {
        let mut a = MqttAnalyzer::new(1 << 16, AppProto::Mqtt);
        let mut out = Vec::new();
        a.on_data(
            Direction::Forward,
            &[0xc0, 0x00, 0x30, 0xff, 0xff, 0xff, 0xff, 0x01],
            &mut out,
        );
        a.on_data(Direction::Forward, &[0xc0, 0x00], &mut out);
        assert_eq!(
            out,
            vec![
                ProtoEvent::MqttPing,
                ProtoEvent::Anomaly {
                    app: AppProto::Mqtt,
                    name: "mqtt.bad_remaining_length"
                }
            ]
        );
    }

    #[test]
    fn several_packets_in_one_chunk_and_split() {
        // All client bytes of the qos2 capture concatenated in one chunk.
        let fx = fixture(include_str!("testdata/sv_mqtt5_pub_qos2_ipv6.hex"));
        let (per_segment, _) = run(1883, &fx, ProtoLimits::default());
        let mut fwd = Vec::new();
        let mut rev = Vec::new();
        for (d, c) in &fx {
            match d {
                Direction::Forward => fwd.extend_from_slice(c),
                Direction::Reverse => rev.extend_from_slice(c),
            }
        }
        let mut st = ProtoState::new(1883, ProtoLimits::default());
        let mut out = Vec::new();
        st.on_data(Direction::Forward, &fwd, &mut out);
        st.on_data(Direction::Reverse, &rev, &mut out);
        st.on_close(&mut out);
        let count = |ev: &[ProtoEvent]| {
            ev.iter()
                .filter(|e| !matches!(e, ProtoEvent::Login { .. }))
                .count()
        };
        assert_eq!(count(&out), count(&per_segment));
        assert!(out
            .iter()
            .any(|e| matches!(e, ProtoEvent::MqttPublish { qos: 2, .. })));
        for seed in 1..20u64 {
            assert_eq!(
                run_resplit(1883, &fx, seed, 1 + seed as usize * 3),
                per_segment
            );
        }
    }

    #[test]
    fn truncated_connect_gives_unknown_nothing() {
        // CONNECT cut in the middle, flow closes: no event beyond detection.
        let fx = fixture(include_str!("testdata/sv_mqtt311_sub_userpass_ipv6.hex"));
        let first = &fx[0].1;
        let mut st = ProtoState::new(1883, ProtoLimits::default());
        let mut out = Vec::new();
        st.on_data(Direction::Forward, &first[..first.len() - 3], &mut out);
        st.on_close(&mut out);
        assert_eq!(
            out,
            vec![ProtoEvent::Detected {
                app: AppProto::Mqtt
            }]
        );
    }

    #[test]
    fn close_before_connack_is_unknown_and_second_connect_flushes() {
        let fx = fixture(include_str!("testdata/sv_mqtt311_sub_userpass_ipv6.hex"));
        let connect = &fx[0].1;
        let mut st = ProtoState::new(1883, ProtoLimits::default());
        let mut out = Vec::new();
        st.on_data(Direction::Forward, connect, &mut out);
        st.on_data(Direction::Forward, connect, &mut out);
        st.on_close(&mut out);
        assert_eq!(
            logins(&out),
            vec![
                &login("user", b"pass", Outcome::Unknown),
                &login("user", b"pass", Outcome::Unknown)
            ]
        );
    }

    /// A 3.1.1 CONNECT (clean session, username and password), remaining length in two bytes.
    fn connect_with(user: &[u8], pass: &[u8]) -> Vec<u8> {
        let mut body = b"\x00\x04MQTT\x04\xc2\x00\x3c\x00\x03cam".to_vec();
        for field in [user, pass] {
            body.extend((field.len() as u16).to_be_bytes());
            body.extend(field);
        }
        let n = body.len();
        assert!(n < 16_384);
        let mut p = vec![0x10, 0x80 | (n % 128) as u8, (n / 128) as u8];
        p.extend(body);
        p
    }

    #[test]
    fn a_login_waiting_for_its_connack_is_cut_and_counted() {
        let mut a = MqttAnalyzer::new(64 * 1024, AppProto::Mqtt);
        let mut out = Vec::new();
        let user = "ü".repeat(500);
        a.on_data(
            Direction::Forward,
            &connect_with(user.as_bytes(), &[b'p'; 5000]),
            &mut out,
        );
        // The CONNECT event has it all; the login waiting for the CONNACK keeps 256 + 256 bytes.
        match connect_of(&out) {
            ProtoEvent::MqttConnect {
                username, password, ..
            } => {
                assert_eq!(username.as_deref(), Some(user.as_str()));
                assert_eq!(password.as_ref().map(Vec::len), Some(5000));
            }
            _ => unreachable!(),
        }
        assert_eq!(a.pending_held(), 512);
        a.on_data(Direction::Reverse, b"\x20\x02\x00\x05", &mut out);
        // The login keeps 256 bytes of the password and says it had 5,000.
        let mut want = login(&user[..256], &[b'p'; 256], Outcome::Rejected);
        if let ProtoEvent::Login { password_len, .. } = &mut want {
            *password_len = 5_000;
        }
        assert_eq!(logins(&out), vec![&want]);
        assert_eq!(a.pending_held(), 0);
    }

    #[test]
    fn midstream_pickup() {
        // shared/pcaps/mqtt/sv_mqtt311_midstream_no_connect_ipv6.pcap tcp.stream 2 (port 1883)
        let ev = run_fx(
            include_str!("testdata/sv_mqtt311_midstream_no_connect_ipv6.hex"),
            1883,
        );
        assert_eq!(
            ev.first(),
            Some(&ProtoEvent::Detected {
                app: AppProto::Mqtt
            })
        );
        // (first bytes seen: the server's CONNACK)
        assert_eq!(
            ev.get(1),
            Some(&ProtoEvent::MqttConnack {
                code: 0,
                outcome: Outcome::Accepted
            })
        );
        assert_eq!(
            ev.get(2),
            Some(&ProtoEvent::MqttSubscribe {
                filters: vec![("house/bulbs/bulb1".into(), 1)]
            })
        );
        let publishes: Vec<_> = ev
            .iter()
            .filter(|e| matches!(e, ProtoEvent::MqttPublish { .. }))
            .collect();
        assert_eq!(publishes.len(), 3);
        assert_eq!(
            publishes[0],
            &ProtoEvent::MqttPublish {
                topic: "house/bulbs/bulb1".into(),
                qos: 2,
                retain: false,
                dup: false,
                payload_len: 3
            }
        );
        assert_eq!(ev.last(), Some(&ProtoEvent::MqttDisconnect));
        assert!(logins(&ev).is_empty());
        assert!(!ev.iter().any(|e| matches!(
            e,
            ProtoEvent::MqttConnect { .. } | ProtoEvent::Anomaly { .. }
        )));
        // shared/pcaps/mqtt/sv_mqtt_pingreq_only.pcap: PINGREQ/PINGRESP only.
        let ev = run_fx(include_str!("testdata/sv_mqtt_pingreq_only.hex"), 1883);
        assert_eq!(
            ev,
            vec![
                ProtoEvent::Detected {
                    app: AppProto::Mqtt
                },
                ProtoEvent::MqttPing
            ]
        );
    }

    #[test]
    fn gap_resync() {
        let mut a = MqttAnalyzer::new(1 << 16, AppProto::Mqtt);
        let mut out = Vec::new();
        a.on_data(
            Direction::Forward,
            &[0x30, 0x0a, 0x00, 0x03, b'a'],
            &mut out,
        );
        a.on_gap(Direction::Forward, 100);
        a.on_data(Direction::Forward, b"xyz garbage", &mut out);
        a.on_data(Direction::Forward, &[0xc0, 0x00], &mut out);
        assert_eq!(out, vec![ProtoEvent::MqttPing]);
    }

    #[test]
    fn fuzz_mqtt_no_panic() {
        let mut rng = XorShift::new(0xa11ce);
        let seeds: Vec<Vec<u8>> = [
            include_str!("testdata/sv_mqtt5_pub_mosquittoprops_ipv6.hex"),
            include_str!("testdata/sv_mqtt31_pub_userpass_ipv6.hex"),
            include_str!("testdata/sv_mqtt5_customauth_rejected_ipv6.hex"),
        ]
        .iter()
        .flat_map(|f| fixture(f).into_iter().map(|(_, c)| c))
        .collect();
        for i in 0..30_000usize {
            let mut a = MqttAnalyzer::new(32 + (i % 512), AppProto::Mqtt);
            let mut out = Vec::new();
            for _ in 0..3 {
                let input = if i % 2 == 0 {
                    rng.mutate(&seeds[i % seeds.len()])
                } else {
                    rng.bytes_upto(200)
                };
                let dir = if rng.one_in(2) {
                    Direction::Forward
                } else {
                    Direction::Reverse
                };
                let cut = if input.is_empty() {
                    0
                } else {
                    (rng.next() as usize) % input.len()
                };
                a.on_data(dir, &input[..cut], &mut out);
                if rng.one_in(8) {
                    a.on_gap(dir, rng.next() % 300);
                }
                a.on_data(dir, &input[cut..], &mut out);
            }
            a.on_close(&mut out);
            let _ = plausible_stream(&rng.bytes(32));
        }
    }
}
