//! SMB and DCE/RPC client requests, as evidence of remote administration and lateral movement.
//!
//! Reads the client side of SMB1 and SMB2/3 (direct TCP 445 or NetBIOS session service 139,
//! both framed by the 4-byte session header) and of connection-oriented DCE/RPC over plain TCP
//! (endpoint mapper 135 and dynamic ports). Reports what an analyst wants to see for lateral
//! movement: the shares connected to (`ADMIN$`, `IPC$`, `C$`), the files and named pipes opened
//! (`svcctl`, `atsvc`, `samr`, `PSEXESVC`...), the NTLM user of a session setup, the DCE/RPC
//! interfaces bound (with their names) and the operations called on them.
//!
//! Panic-free on arbitrary bytes and bounded: each message is kept up to [`MAX_MESSAGE`] bytes
//! (the rest of a large write is skipped, not buffered), at most [`MAX_EVENTS`] events per flow,
//! at most [`MAX_CONTEXTS`] DCE/RPC presentation contexts. Server responses are not parsed.
//! The parser switches itself off on the first client bytes that are neither SMB nor DCE/RPC,
//! so it may be attached to every TCP flow.

use crate::flow::Direction;

/// Longest prefix of one SMB/DCE-RPC message kept for parsing (bytes).
pub const MAX_MESSAGE: usize = 16 * 1024;
/// Events reported per flow at most.
pub const MAX_EVENTS: usize = 256;
/// DCE/RPC presentation contexts remembered per flow.
pub const MAX_CONTEXTS: usize = 32;
/// Longest string reported (characters).
const MAX_STRING: usize = 256;
/// NetBIOS/SMB messages longer than this mean the stream is not SMB (SMB2 caps at 8 MiB + hdr).
const MAX_FRAME: usize = 16 * 1024 * 1024;

/// What the parser reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SmbEvent {
    /// The flow carries SMB (`smb1`, `smb2`) or DCE/RPC over TCP (`dcerpc`); once per flow.
    Protocol { dialect: &'static str },
    /// SMB 3 encryption (transform header): nothing more can be read.
    Encrypted,
    /// NTLMSSP AUTHENTICATE in a session setup.
    SessionSetup {
        user: String,
        domain: String,
        workstation: String,
    },
    /// TREE_CONNECT request: the UNC path (`\\host\share`).
    TreeConnect { path: String },
    /// CREATE request: a file or named pipe name relative to the share.
    Create { name: String },
    /// DCE/RPC BIND or ALTER_CONTEXT: one abstract syntax.
    RpcBind {
        uuid: String,
        interface: Option<&'static str>,
    },
    /// DCE/RPC REQUEST.
    RpcCall {
        interface: Option<&'static str>,
        opnum: u16,
        operation: Option<&'static str>,
    },
}

impl SmbEvent {
    /// The share name of a tree-connect path (`\\dc1\ADMIN$` -> `ADMIN$`).
    pub fn share_name(path: &str) -> &str {
        path.rsplit(['\\', '/']).next().unwrap_or(path)
    }
}

/// Well-known DCE/RPC interfaces (abstract syntax UUID -> name).
pub const RPC_INTERFACES: &[(&str, &str)] = &[
    ("367abb81-9844-35f1-ad32-98f038001003", "svcctl"),
    ("1ff70682-0a51-30e8-076d-740be8cee98b", "atsvc"),
    ("86d35949-83c9-4044-b424-db363231fd0c", "taskscheduler"),
    ("378e52b0-c0a9-11cf-822d-00aa0051e40f", "sasec"),
    ("12345778-1234-abcd-ef00-0123456789ac", "samr"),
    ("12345778-1234-abcd-ef00-0123456789ab", "lsarpc"),
    ("4b324fc8-1670-01d3-1278-5a47bf6ee188", "srvsvc"),
    ("6bffd098-a112-3610-9833-46c3f87e345a", "wkssvc"),
    ("338cd001-2244-31f1-aaaa-900038001003", "winreg"),
    ("e1af8308-5d1f-11c9-91a4-08002b14a0fa", "epmapper"),
    ("e3514235-4b06-11d1-ab04-00c04fc2dcd2", "drsuapi"),
    ("12345678-1234-abcd-ef00-01234567cffb", "netlogon"),
    ("82273fdc-e32a-18c3-3f78-827929dc23ea", "eventlog"),
    ("3919286a-b10c-11d0-9ba8-00c04fd92ef5", "dssetup"),
    (
        "000001a0-0000-0000-c000-000000000046",
        "IRemoteSCMActivator",
    ),
    ("4d9f4ab8-7d1c-11cf-861e-0020af6e7c57", "IActivation"),
    ("99fcfec4-5260-101b-bbcb-00aa0021347a", "IObjectExporter"),
];

/// Operation names of the interfaces that matter for lateral movement (interface, opnum, name).
const RPC_OPERATIONS: &[(&str, u16, &str)] = &[
    ("svcctl", 0, "CloseServiceHandle"),
    ("svcctl", 1, "ControlService"),
    ("svcctl", 2, "DeleteService"),
    ("svcctl", 11, "ChangeServiceConfigW"),
    ("svcctl", 12, "CreateServiceW"),
    ("svcctl", 15, "OpenSCManagerW"),
    ("svcctl", 16, "OpenServiceW"),
    ("svcctl", 19, "StartServiceW"),
    ("svcctl", 24, "CreateServiceA"),
    ("svcctl", 27, "OpenSCManagerA"),
    ("atsvc", 0, "JobAdd"),
    ("atsvc", 1, "JobDel"),
    ("atsvc", 2, "JobEnum"),
    ("atsvc", 3, "JobGetInfo"),
    ("taskscheduler", 1, "SchRpcRegisterTask"),
    ("taskscheduler", 12, "SchRpcRun"),
    ("samr", 1, "SamrCloseHandle"),
    ("samr", 5, "SamrLookupDomainInSamServer"),
    ("samr", 6, "SamrEnumerateDomainsInSamServer"),
    ("samr", 7, "SamrOpenDomain"),
    ("samr", 13, "SamrEnumerateUsersInDomain"),
    ("samr", 16, "SamrGetAliasMembership"),
    ("samr", 17, "SamrLookupNamesInDomain"),
    ("samr", 34, "SamrOpenUser"),
    ("samr", 36, "SamrQueryInformationUser"),
    ("samr", 39, "SamrGetGroupsForUser"),
    ("samr", 62, "SamrConnect4"),
    ("samr", 64, "SamrConnect5"),
    ("drsuapi", 3, "DRSGetNCChanges"),
    ("winreg", 22, "BaseRegSetValue"),
];

/// Name of a DCE/RPC interface UUID (lower-case text form).
pub fn interface_name(uuid: &str) -> Option<&'static str> {
    RPC_INTERFACES
        .iter()
        .find(|(u, _)| u.eq_ignore_ascii_case(uuid))
        .map(|(_, n)| *n)
}

fn operation_name(iface: &str, opnum: u16) -> Option<&'static str> {
    RPC_OPERATIONS
        .iter()
        .find(|(i, o, _)| *i == iface && *o == opnum)
        .map(|(_, _, n)| *n)
}

enum Detect {
    Found(Mode, usize),
    NeedMore,
    No,
}

/// Client bytes examined to recognise SMB or DCE/RPC (and to resynchronise mid-stream).
const DETECT_WINDOW: usize = 8 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Waiting for the first client bytes.
    Unknown,
    /// NetBIOS-framed SMB.
    Smb,
    /// DCE/RPC PDUs on plain TCP.
    DceRpc,
    /// Not ours, or lost sync.
    Off,
}

/// Client-side SMB / DCE-RPC parser of one TCP flow.
pub struct SmbParser {
    server_port: u16,
    mode: Mode,
    /// Framing header being gathered (NetBIOS: 4 bytes; DCE/RPC: 10 bytes).
    head: Vec<u8>,
    /// Bytes of the current message still to come (after the header).
    remaining: usize,
    /// NetBIOS message type of the current message.
    nb_type: u8,
    /// Prefix of the current message, up to `MAX_MESSAGE`.
    msg: Vec<u8>,
    /// Presentation context id -> interface name (or UUID) of the flow.
    contexts: Vec<(u16, Option<&'static str>)>,
    events: usize,
    protocol_reported: bool,
    encrypted_reported: bool,
    /// Messages parsed (for tests and statistics).
    pub messages: u64,
}

fn u16le(b: &[u8], at: usize) -> Option<u16> {
    let s = b.get(at..at.checked_add(2)?)?;
    Some(u16::from_le_bytes([s[0], s[1]]))
}

fn u32le(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

fn slice(b: &[u8], off: usize, len: usize) -> &[u8] {
    // A length beyond the captured prefix is cut to what is there.
    let end = off.saturating_add(len).min(b.len());
    b.get(off..end).unwrap_or(&[])
}

/// UTF-16LE text up to its first NUL, at most `MAX_STRING` characters, control characters
/// dropped.
fn utf16(b: &[u8]) -> String {
    let units = b
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .take_while(|&u| u != 0)
        .take(MAX_STRING);
    char::decode_utf16(units)
        .map(|r| r.unwrap_or(char::REPLACEMENT_CHARACTER))
        .filter(|c| !c.is_control())
        .collect()
}

fn ascii(b: &[u8]) -> String {
    b.iter()
        .take_while(|&&c| c != 0)
        .take(MAX_STRING)
        .map(|&c| c as char)
        .filter(|c| !c.is_control())
        .collect()
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || hay.len() < needle.len() {
        return None;
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Text form of a DCE/RPC UUID in little-endian wire order.
fn uuid_le(b: &[u8]) -> Option<String> {
    let b = b.get(..16)?;
    let d1 = u32le(b, 0)?;
    let d2 = u16le(b, 4)?;
    let d3 = u16le(b, 6)?;
    Some(format!(
        "{d1:08x}-{d2:04x}-{d3:04x}-{:02x}{:02x}-{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}",
        b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]
    ))
}

const SMB2_MAGIC: &[u8] = b"\xfeSMB";
const SMB1_MAGIC: &[u8] = b"\xffSMB";
const SMB3_TRANSFORM: &[u8] = b"\xfdSMB";
const FSCTL_PIPE_TRANSCEIVE: u32 = 0x0011_c017;

impl SmbParser {
    /// `server_port`: the responder's port (139/445 allow resynchronising on a stream picked
    /// up mid-message; any port may carry DCE/RPC).
    pub fn new(server_port: u16) -> Self {
        SmbParser {
            server_port,
            mode: Mode::Unknown,
            head: Vec::new(),
            remaining: 0,
            nb_type: 0,
            msg: Vec::new(),
            contexts: Vec::new(),
            events: 0,
            protocol_reported: false,
            encrypted_reported: false,
            messages: 0,
        }
    }

    /// False once the flow showed it carries neither SMB nor DCE/RPC.
    /// Bytes allocated to the framing and message buffers.
    pub fn held(&self) -> usize {
        self.head.capacity() + self.msg.capacity()
    }

    pub fn active(&self) -> bool {
        self.mode != Mode::Off
    }

    /// In-order bytes of one direction. Only the client side (`Forward`) is parsed.
    pub fn on_data(&mut self, dir: Direction, data: &[u8], out: &mut Vec<SmbEvent>) {
        if dir != Direction::Forward || data.is_empty() {
            return;
        }
        if self.mode == Mode::Unknown {
            // Gather enough of the first client bytes to recognise the protocol.
            let room = DETECT_WINDOW.saturating_sub(self.msg.len()).min(data.len());
            self.msg.extend_from_slice(&data[..room]);
            let rest = &data[room..];
            match first_bytes(self.server_port, &self.msg) {
                Detect::Found(mode, skip) => {
                    self.mode = mode;
                    let mut first = std::mem::take(&mut self.msg);
                    first.drain(..skip.min(first.len()));
                    self.feed(&first, out);
                    self.feed(rest, out);
                }
                Detect::NeedMore => {}
                Detect::No => {
                    self.mode = Mode::Off;
                    self.msg = Vec::new();
                }
            }
            return;
        }
        self.feed(data, out);
    }

    fn feed(&mut self, data: &[u8], out: &mut Vec<SmbEvent>) {
        match self.mode {
            Mode::Smb => self.frames(data, 4, out),
            Mode::DceRpc => self.frames(data, 10, out),
            Mode::Unknown | Mode::Off => {}
        }
    }

    /// Bytes of this direction were lost: message boundaries are gone.
    pub fn on_gap(&mut self, dir: Direction) {
        if dir == Direction::Forward && self.mode != Mode::Unknown {
            self.mode = Mode::Off;
        }
    }

    /// True when a flow to `server_port` whose first client bytes are `first` (a first chunk
    /// of data) is neither SMB nor DCE/RPC: what a parser fed `first` would find, found without
    /// making one (most flows are neither, and a parser gathers the first bytes in a buffer).
    pub fn rejects(server_port: u16, first: &[u8]) -> bool {
        let d = &first[..first.len().min(DETECT_WINDOW)];
        matches!(first_bytes(server_port, d), Detect::No)
    }

    /// Splits the stream into messages: a header of `hl` bytes that gives the message length,
    /// then the body.
    fn frames(&mut self, mut data: &[u8], hl: usize, out: &mut Vec<SmbEvent>) {
        while !data.is_empty() && self.mode != Mode::Off {
            if self.remaining == 0 && self.head.len() < hl {
                let n = (hl - self.head.len()).min(data.len());
                self.head.extend_from_slice(&data[..n]);
                data = &data[n..];
                if self.head.len() < hl {
                    return;
                }
                let Some(total) = self.message_len() else {
                    self.mode = Mode::Off;
                    return;
                };
                self.msg.clear();
                if self.mode == Mode::DceRpc {
                    // The DCE/RPC header is part of the PDU.
                    self.msg.extend_from_slice(&self.head);
                }
                self.remaining = total;
                if total == 0 {
                    self.complete(out);
                }
                continue;
            }
            let n = self.remaining.min(data.len());
            let room = MAX_MESSAGE.saturating_sub(self.msg.len()).min(n);
            self.msg.extend_from_slice(&data[..room]);
            self.remaining -= n;
            data = &data[n..];
            if self.remaining == 0 {
                self.complete(out);
            }
        }
    }

    /// Length of the current message after its framing header, or `None` on desync.
    fn message_len(&mut self) -> Option<usize> {
        let h = &self.head;
        match self.mode {
            Mode::Smb => {
                let ty = *h.first()?;
                if !matches!(ty, 0x00 | 0x81 | 0x82 | 0x83 | 0x84 | 0x85) {
                    return None;
                }
                self.nb_type = ty;
                let len = (usize::from(h[1]) << 16) | (usize::from(h[2]) << 8) | usize::from(h[3]);
                (len <= MAX_FRAME).then_some(len)
            }
            Mode::DceRpc => {
                if h[0] != 5 || h[1] != 0 {
                    return None;
                }
                let le = h[4] & 0x10 != 0;
                let frag = if le {
                    u16::from_le_bytes([h[8], h[9]])
                } else {
                    u16::from_be_bytes([h[8], h[9]])
                };
                let frag = usize::from(frag);
                if frag < 16 {
                    return None;
                }
                Some(frag - 10)
            }
            _ => None,
        }
    }

    fn complete(&mut self, out: &mut Vec<SmbEvent>) {
        self.head.clear();
        let msg = std::mem::take(&mut self.msg);
        self.messages += 1;
        match self.mode {
            Mode::Smb if self.nb_type == 0 => self.smb(&msg, out),
            Mode::DceRpc => {
                self.protocol("dcerpc", out);
                self.dcerpc(&msg, out);
            }
            _ => {}
        }
        self.msg = msg;
        self.msg.clear();
    }

    fn emit(&mut self, ev: SmbEvent, out: &mut Vec<SmbEvent>) {
        if self.events < MAX_EVENTS {
            self.events += 1;
            out.push(ev);
        }
    }

    fn protocol(&mut self, dialect: &'static str, out: &mut Vec<SmbEvent>) {
        if !self.protocol_reported {
            self.protocol_reported = true;
            self.emit(SmbEvent::Protocol { dialect }, out);
        }
    }

    fn smb(&mut self, m: &[u8], out: &mut Vec<SmbEvent>) {
        match m.get(..4) {
            Some(SMB2_MAGIC) => {
                self.protocol("smb2", out);
                self.smb2(m, out);
            }
            Some(SMB1_MAGIC) => {
                self.protocol("smb1", out);
                self.smb1(m, out);
            }
            Some(SMB3_TRANSFORM) => {
                self.protocol("smb2", out);
                if !self.encrypted_reported {
                    self.encrypted_reported = true;
                    self.emit(SmbEvent::Encrypted, out);
                }
            }
            _ => {}
        }
    }

    /// One SMB2 message, possibly a compound chain.
    fn smb2(&mut self, mut m: &[u8], out: &mut Vec<SmbEvent>) {
        for _ in 0..32 {
            if m.len() < 64 || m.get(..4) != Some(SMB2_MAGIC) {
                return;
            }
            let cmd = u16le(m, 12).unwrap_or(u16::MAX);
            let flags = u32le(m, 16).unwrap_or(1);
            let next = u32le(m, 20).map_or(0, |n| n as usize);
            if flags & 1 == 0 {
                self.smb2_request(cmd, m, out);
            }
            if next < 64 || next >= m.len() {
                return;
            }
            m = &m[next..];
        }
    }

    fn smb2_request(&mut self, cmd: u16, m: &[u8], out: &mut Vec<SmbEvent>) {
        const B: usize = 64;
        match cmd {
            // SESSION_SETUP
            1 => {
                let (Some(off), Some(len)) = (u16le(m, B + 12), u16le(m, B + 14)) else {
                    return;
                };
                let blob = slice(m, usize::from(off), usize::from(len));
                self.ntlm(blob, out);
            }
            // TREE_CONNECT
            3 => {
                let (Some(off), Some(len)) = (u16le(m, B + 4), u16le(m, B + 6)) else {
                    return;
                };
                let path = utf16(slice(m, usize::from(off), usize::from(len)));
                if !path.is_empty() {
                    self.emit(SmbEvent::TreeConnect { path }, out);
                }
            }
            // CREATE
            5 => {
                let (Some(off), Some(len)) = (u16le(m, B + 44), u16le(m, B + 46)) else {
                    return;
                };
                let name = utf16(slice(m, usize::from(off), usize::from(len)));
                if !name.is_empty() {
                    self.emit(SmbEvent::Create { name }, out);
                }
            }
            // WRITE: DCE/RPC on a named pipe
            9 => {
                let (Some(off), Some(len)) = (u16le(m, B + 2), u32le(m, B + 4)) else {
                    return;
                };
                let data = slice(m, usize::from(off), len as usize);
                self.dcerpc(data, out);
            }
            // IOCTL: FSCTL_PIPE_TRANSCEIVE carries DCE/RPC
            11 => {
                let (Some(ctl), Some(off), Some(len)) =
                    (u32le(m, B + 4), u32le(m, B + 24), u32le(m, B + 28))
                else {
                    return;
                };
                if ctl == FSCTL_PIPE_TRANSCEIVE {
                    let data = slice(m, off as usize, len as usize);
                    self.dcerpc(data, out);
                }
            }
            _ => {}
        }
    }

    /// One SMB1 message (the first command of an AndX chain).
    fn smb1(&mut self, m: &[u8], out: &mut Vec<SmbEvent>) {
        if m.len() < 35 {
            return;
        }
        let cmd = m[4];
        let is_response = m[9] & 0x80 != 0;
        if is_response {
            return;
        }
        let unicode = u16le(m, 10).is_some_and(|f| f & 0x8000 != 0);
        let wc = usize::from(m[32]);
        let words = slice(m, 33, 2 * wc);
        let bytes_at = 33 + 2 * wc + 2;
        let bc = u16le(m, 33 + 2 * wc).map_or(0, usize::from);
        let string_at = |pos: usize| -> String {
            let pos = if unicode && pos % 2 == 1 {
                pos + 1
            } else {
                pos
            };
            let s = slice(m, pos, bytes_at.saturating_add(bc).saturating_sub(pos));
            if unicode {
                utf16(s)
            } else {
                ascii(s)
            }
        };
        match cmd {
            // SESSION_SETUP_ANDX
            0x73 => {
                let rest = m.get(bytes_at..).unwrap_or(&[]);
                self.ntlm(rest, out);
            }
            // TREE_CONNECT_ANDX
            0x75 => {
                let pw = u16le(words, 6).map_or(0, usize::from);
                let path = string_at(bytes_at + pw);
                if !path.is_empty() {
                    self.emit(SmbEvent::TreeConnect { path }, out);
                }
            }
            // NT_CREATE_ANDX
            0xa2 => {
                let name = string_at(bytes_at);
                let name = name.trim_start_matches('\\').to_string();
                if !name.is_empty() {
                    self.emit(SmbEvent::Create { name }, out);
                }
            }
            // TRANSACTION / WRITE_ANDX / WRITE: DCE/RPC on a pipe
            0x25 | 0x2f | 0x0b => {
                let rest = m.get(bytes_at..).unwrap_or(&[]);
                for pat in [
                    &b"\x05\x00\x0b\x03\x10\x00\x00\x00"[..],
                    b"\x05\x00\x0e\x03\x10\x00\x00\x00",
                    b"\x05\x00\x00\x03\x10\x00\x00\x00",
                ] {
                    if let Some(i) = find(rest, pat) {
                        self.dcerpc(&rest[i..], out);
                        break;
                    }
                }
            }
            _ => {}
        }
    }

    /// NTLMSSP AUTHENTICATE anywhere in a security blob.
    fn ntlm(&mut self, blob: &[u8], out: &mut Vec<SmbEvent>) {
        let Some(p) = find(blob, b"NTLMSSP\0") else {
            return;
        };
        let n = &blob[p..];
        if u32le(n, 8) != Some(3) {
            return;
        }
        let flags = u32le(n, 60).unwrap_or(1);
        let field = |at: usize| -> String {
            let (Some(len), Some(off)) = (u16le(n, at), u32le(n, at + 4)) else {
                return String::new();
            };
            let b = slice(n, off as usize, usize::from(len));
            if flags & 1 != 0 {
                utf16(b)
            } else {
                ascii(b)
            }
        };
        let domain = field(28);
        let user = field(36);
        let workstation = field(44);
        if user.is_empty() && domain.is_empty() {
            return; // anonymous
        }
        self.emit(
            SmbEvent::SessionSetup {
                user,
                domain,
                workstation,
            },
            out,
        );
    }

    /// DCE/RPC PDUs (BIND, ALTER_CONTEXT, REQUEST) at the start of `d`.
    fn dcerpc(&mut self, mut d: &[u8], out: &mut Vec<SmbEvent>) {
        for _ in 0..8 {
            if d.len() < 16 || d[0] != 5 || d[1] != 0 {
                return;
            }
            let ptype = d[2];
            let le = d[4] & 0x10 != 0;
            let rd16 = |b: &[u8], at: usize| -> Option<u16> {
                let s = b.get(at..at + 2)?;
                Some(if le {
                    u16::from_le_bytes([s[0], s[1]])
                } else {
                    u16::from_be_bytes([s[0], s[1]])
                })
            };
            let frag = rd16(d, 8).map_or(0, usize::from);
            match ptype {
                11 | 14 => {
                    // max_xmit(2) max_recv(2) assoc(4) n_ctx(1) pad(3)
                    let n_ctx = d.get(24).copied().unwrap_or(0);
                    let mut at = 28;
                    for _ in 0..n_ctx {
                        let (Some(ctx_id), Some(&n_ts)) = (rd16(d, at), d.get(at + 2)) else {
                            break;
                        };
                        let Some(uuid) = d.get(at + 4..at + 20).and_then(uuid_le) else {
                            break;
                        };
                        let interface = interface_name(&uuid);
                        if !self.contexts.iter().any(|(c, _)| *c == ctx_id) {
                            if self.contexts.len() >= MAX_CONTEXTS {
                                self.contexts.remove(0);
                            }
                            self.contexts.push((ctx_id, interface));
                        } else if let Some(e) = self.contexts.iter_mut().find(|(c, _)| *c == ctx_id)
                        {
                            e.1 = interface;
                        }
                        self.emit(SmbEvent::RpcBind { uuid, interface }, out);
                        at += 24 + 20 * usize::from(n_ts);
                    }
                }
                0 => {
                    let (Some(ctx_id), Some(opnum)) = (rd16(d, 20), rd16(d, 22)) else {
                        return;
                    };
                    let interface = self
                        .contexts
                        .iter()
                        .find(|(c, _)| *c == ctx_id)
                        .and_then(|(_, i)| *i);
                    let operation = interface.and_then(|i| operation_name(i, opnum));
                    self.emit(
                        SmbEvent::RpcCall {
                            interface,
                            opnum,
                            operation,
                        },
                        out,
                    );
                }
                _ => {}
            }
            if frag < 16 || frag >= d.len() {
                return;
            }
            d = &d[frag..];
        }
    }
}

/// What the first client bytes `d` (at most `DETECT_WINDOW` of them) of a flow to
/// `server_port` tell: [`detect`], except that a full window still undecided is neither.
fn first_bytes(server_port: u16, d: &[u8]) -> Detect {
    match detect(server_port, d) {
        Detect::NeedMore if d.len() >= DETECT_WINDOW => Detect::No,
        v => v,
    }
}

/// Recognises the protocol from the first client bytes of a flow to `server_port`; returns the
/// mode and the bytes to skip to reach a message boundary.
fn detect(server_port: u16, d: &[u8]) -> Detect {
    let smb_port = matches!(server_port, 139 | 445);
    let magic_at = |i: usize| {
        d.get(i..i + 4)
            .is_some_and(|m| m == SMB2_MAGIC || m == SMB1_MAGIC || m == SMB3_TRANSFORM)
    };
    if d.len() < 10 {
        return Detect::NeedMore;
    }
    if d[0] == 0 && magic_at(4) {
        return Detect::Found(Mode::Smb, 0);
    }
    // NetBIOS session request (port 139) before SMB.
    if d[0] == 0x81 && smb_port {
        return Detect::Found(Mode::Smb, 0);
    }
    // DCE/RPC v5.0 BIND / ALTER_CONTEXT / REQUEST.
    if d[0] == 5 && d[1] == 0 && matches!(d[2], 0 | 11 | 14) {
        return Detect::Found(Mode::DceRpc, 0);
    }
    if smb_port {
        // Picked up mid-stream: resynchronise on the next SMB header.
        for i in 4..d.len() {
            if magic_at(i) && d[i - 4] == 0 {
                return Detect::Found(Mode::Smb, i - 4);
            }
        }
        return Detect::NeedMore;
    }
    Detect::No
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fixture lines `F <hex>` / `R <hex>` (payloads from `tshark -T fields -e tcp.payload`).
    fn fixture(text: &str) -> Vec<(Direction, Vec<u8>)> {
        text.lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(|l| {
                let (d, hex) = l.split_at(1);
                let hex: Vec<u8> = hex.bytes().filter(|b| b.is_ascii_hexdigit()).collect();
                let bytes = hex
                    .chunks(2)
                    .map(|c| {
                        let h = |x: u8| (x as char).to_digit(16).unwrap_or(0) as u8;
                        (h(c[0]) << 4) | h(*c.get(1).unwrap_or(&b'0'))
                    })
                    .collect();
                let dir = if d == "F" {
                    Direction::Forward
                } else {
                    Direction::Reverse
                };
                (dir, bytes)
            })
            .collect()
    }

    fn run(port: u16, text: &str) -> Vec<SmbEvent> {
        let mut p = SmbParser::new(port);
        let mut out = Vec::new();
        for (d, b) in fixture(text) {
            p.on_data(d, &b, &mut out);
        }
        out
    }

    /// Same stream cut into 1..7-byte pieces.
    fn run_split(port: u16, text: &str) -> Vec<SmbEvent> {
        let mut p = SmbParser::new(port);
        let mut out = Vec::new();
        let mut k = 0usize;
        for (d, b) in fixture(text) {
            let mut rest = &b[..];
            while !rest.is_empty() {
                k += 1;
                let n = (k % 7 + 1).min(rest.len());
                p.on_data(d, &rest[..n], &mut out);
                rest = &rest[n..];
            }
        }
        out
    }

    fn names(ev: &[SmbEvent]) -> Vec<String> {
        ev.iter()
            .filter_map(|e| match e {
                SmbEvent::TreeConnect { path } => Some(format!("tree:{path}")),
                SmbEvent::Create { name } => Some(format!("create:{name}")),
                SmbEvent::RpcBind {
                    interface: Some(i), ..
                } => Some(format!("bind:{i}")),
                SmbEvent::RpcCall {
                    operation: Some(o), ..
                } => Some(format!("call:{o}")),
                SmbEvent::SessionSetup { user, domain, .. } => {
                    Some(format!("user:{domain}\\{user}"))
                }
                _ => None,
            })
            .collect()
    }

    const PSEXEC_ADMIN: &str = include_str!("testdata/smb/sv_smb2_psexec_admin_share.hex");
    const PSEXEC_SVCCTL: &str = include_str!("testdata/smb/sv_smb2_psexec_svcctl.hex");
    const ATSVC: &str = include_str!("testdata/smb/sv_smb2_atsvc_remote_job.hex");
    const SAMR: &str = include_str!("testdata/smb/sv_smb2_samr_net_user_enum.hex");
    const SMB311: &str = include_str!("testdata/smb/zeek_smb311_ntlm_administrator.hex");
    const DCERPC: &str = include_str!("testdata/smb/sv_dcerpc_psexec_svcctl.hex");

    /// `rejects` says of a first chunk what a parser fed it finds: the real sessions' first
    /// client bytes, whole and cut short, other protocols, and chunks that leave a parser
    /// waiting for more, on the SMB ports and others.
    #[test]
    fn rejects_agrees_with_a_parser_on_the_first_bytes() {
        let mut firsts: Vec<Vec<u8>> = [PSEXEC_ADMIN, PSEXEC_SVCCTL, ATSVC, SAMR, SMB311, DCERPC]
            .iter()
            .filter_map(|t| {
                fixture(t)
                    .into_iter()
                    .find(|(d, _)| *d == Direction::Forward)
            })
            .map(|(_, b)| b)
            .collect();
        let cut: Vec<Vec<u8>> = firsts
            .iter()
            .map(|b| b[..b.len().min(9)].to_vec())
            .collect();
        firsts.extend(cut);
        firsts.extend([
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            b"\x10\x0c\x00\x04MQTT\x04\x02\x00\x3c".to_vec(),
            b"USER admin\r\n".to_vec(),
            vec![0u8; 9],
            vec![0x41; 100],
            vec![0x41; DETECT_WINDOW + 100],
            // An SMB header past the start (picked up mid-stream), and none within the window.
            [vec![0x41; 300], vec![0, 0, 0, 64], SMB2_MAGIC.to_vec()].concat(),
        ]);
        assert_eq!(firsts.len(), 19);
        let mut rejected = 0;
        for b in &firsts {
            for port in [445, 139, 135, 49_700, 80] {
                let mut p = SmbParser::new(port);
                p.on_data(Direction::Forward, b, &mut Vec::new());
                let off = !p.active();
                assert_eq!(SmbParser::rejects(port, b), off, "port {port}: {b:02x?}");
                rejected += usize::from(off);
            }
        }
        // Both answers occur: HTTP is refused at once, except on the SMB ports, where a parser
        // waits for a header to resynchronise on, up to the window; the sessions are taken on
        // any port, and so are nine bytes (too few to tell).
        assert!(rejected > 0, "{rejected}");
        let http = &firsts[12];
        assert!(SmbParser::rejects(80, http) && !SmbParser::rejects(445, http));
        assert!(!SmbParser::rejects(49_700, &firsts[0]) && !SmbParser::rejects(80, &firsts[15]));
        assert!(SmbParser::rejects(445, &firsts[17]));
    }

    #[test]
    fn psexec_admin_share_and_service_binary() {
        // tshark: frame 19 Tree Connect \\dc1\ADMIN$, frame 21 Create PSEXESVC.exe.
        let ev = run(445, PSEXEC_ADMIN);
        assert_eq!(
            ev.first(),
            Some(&SmbEvent::Protocol { dialect: "smb1" }),
            "negotiate starts as SMB1"
        );
        let n = names(&ev);
        assert!(n.contains(&"tree:\\\\dc1\\ADMIN$".to_string()), "{n:?}");
        assert!(n.contains(&"create:PSEXESVC.exe".to_string()), "{n:?}");
        assert_eq!(names(&run_split(445, PSEXEC_ADMIN)), n);
    }

    #[test]
    fn psexec_service_control_and_pipes() {
        let ev = run(445, PSEXEC_SVCCTL);
        let n = names(&ev);
        for want in [
            "tree:\\\\dc1\\IPC$",
            "create:svcctl",
            "bind:svcctl",
            "call:OpenSCManagerW",
            "call:OpenServiceW",
            "call:DeleteService",
            "call:StartServiceW",
            "create:PSEXESVC-VICTIM-PC-2412-stdin",
            "create:PSEXESVC-VICTIM-PC-2412-stdout",
            "create:PSEXESVC-VICTIM-PC-2412-stderr",
            "tree:\\\\dc1\\ADMIN$",
        ] {
            assert!(n.contains(&want.to_string()), "missing {want}: {n:?}");
        }
        assert_eq!(names(&run_split(445, PSEXEC_SVCCTL)), n);
        let bind = ev
            .iter()
            .find_map(|e| match e {
                SmbEvent::RpcBind { uuid, .. } => Some(uuid.clone()),
                _ => None,
            })
            .unwrap();
        assert_eq!(bind, "367abb81-9844-35f1-ad32-98f038001003");
    }

    #[test]
    fn atsvc_job_add_midstream() {
        // The capture starts mid-session (no SYN, no tree connect).
        let n = names(&run(445, ATSVC));
        assert!(n.contains(&"create:atsvc".to_string()), "{n:?}");
        assert!(n.contains(&"bind:atsvc".to_string()), "{n:?}");
        assert!(n.contains(&"call:JobAdd".to_string()), "{n:?}");
    }

    #[test]
    fn samr_enumeration() {
        let n = names(&run(445, SAMR));
        assert!(
            n.contains(&"tree:\\\\DC1.contoso.local\\IPC$".to_string()),
            "{n:?}"
        );
        assert!(n.contains(&"create:samr".to_string()), "{n:?}");
        assert!(n.contains(&"bind:samr".to_string()), "{n:?}");
        assert!(n.contains(&"call:SamrConnect5".to_string()), "{n:?}");
        assert!(n.contains(&"call:SamrOpenDomain".to_string()), "{n:?}");
    }

    #[test]
    fn smb311_ntlm_user() {
        // tshark: ntlmssp.auth.username == administrator, domain NULL (empty).
        let ev = run(445, SMB311);
        let user = ev.iter().find_map(|e| match e {
            SmbEvent::SessionSetup { user, .. } => Some(user.clone()),
            _ => None,
        });
        assert_eq!(user.as_deref(), Some("administrator"));
    }

    #[test]
    fn dcerpc_over_tcp_svcctl() {
        let n = names(&run(49155, DCERPC));
        assert!(n.contains(&"bind:svcctl".to_string()), "{n:?}");
        assert!(n.contains(&"call:OpenSCManagerW".to_string()), "{n:?}");
        assert!(n.contains(&"call:StartServiceW".to_string()), "{n:?}");
        assert_eq!(names(&run_split(49155, DCERPC)), n);
    }

    #[test]
    fn other_protocols_switch_it_off() {
        let mut p = SmbParser::new(80);
        let mut out = Vec::new();
        p.on_data(Direction::Forward, b"GET / HTTP/1.1\r\n\r\n", &mut out);
        assert!(!p.active());
        assert!(out.is_empty());
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut seed = 0x1234_5678_9abc_def0u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let bases: Vec<Vec<u8>> = [PSEXEC_SVCCTL, SAMR, DCERPC, SMB311]
            .iter()
            .map(|t| {
                fixture(t)
                    .into_iter()
                    .filter(|(d, _)| *d == Direction::Forward)
                    .flat_map(|(_, b)| b)
                    .collect()
            })
            .collect();
        for round in 0..400 {
            let base = &bases[round % bases.len()];
            let mut b = base.clone();
            for _ in 0..(next() % 64) {
                if b.is_empty() {
                    break;
                }
                let i = (next() as usize) % b.len();
                b[i] = next() as u8;
            }
            let cut = (next() as usize) % (b.len() + 1);
            b.truncate(cut);
            let mut p = SmbParser::new(if round % 2 == 0 { 445 } else { 135 });
            let mut out = Vec::new();
            for chunk in b.chunks(1 + (next() as usize) % 1500) {
                p.on_data(Direction::Forward, chunk, &mut out);
            }
            assert!(out.len() <= MAX_EVENTS);
        }
    }
}
