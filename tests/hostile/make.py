#!/usr/bin/env python3
"""Writes hostile captures (classic pcap, Ethernet) with Python's standard library only.

    python3 tests/hostile/make.py OUTDIR [--scale small|full] [--only NAME,...] [--syn-flows N]

Never commit the output: the full scale writes hundreds of megabytes. `small` (the default) is
what tests/suite/hostile.rs uses; `full` is for measuring peak memory (tests/hostile/README.md).

Captures (packet counts at small / full scale):

  syn_flood       SYNs from random sources to three servers, never answered: one half-open flow
                  per packet (20,000 / 2,000,000 flows)
  home_flood      SYNs from random spoofed sources inside the home network 198.18.0.0/15,
                  through one MAC (a router to the sensor): each source a new device
                  (20,000 / 300,000 flows)
  scan_out        one home device (198.18.1.5) sending SYNs to random addresses on port 23, as
                  a Mirai-infected camera does, none answered (20,000 / 3,000,000 flows)
  mqtt_huge       MQTT CONNECTs claiming a 256 MB remaining length, then megabytes of filler; and
                  a CONNECT with an invalid (5-byte) remaining length
  http_headers    an HTTP request with a 1 MB header line, and one with 1 MB of small headers
  telnet_iac      a Telnet server sending endless IAC option negotiation (1 / 16 MB)
  tcp_overlap     TCP flows whose segments arrive reversed, duplicated with different bytes,
                  overlapping, and with holes larger than the out-of-order buffer
  held_buffers    MQTT sessions that each leave a nearly complete 60 KB PUBLISH buffered in both
                  directions, then 16 segments beyond a one-byte hole each way: every session holds
                  the most its parsers and reassembly buffer per flow, all at once
                  (200 / 5,000 sessions)
  memcap_pin      held_buffers' sessions (enough to fill the hostile suite's 4 MiB memcap), then
                  10 operators logging in to the broker with CONNECTs of 24 KB whose halves
                  arrive reversed: their credentials can only be read from buffered bytes
                  (60 / 600 pinning sessions)
  auth_pipeline   HTTP sessions that each pipeline requests with a 40 KB Basic Authorization
                  header (a 30 KB password), never answered: each request's credentials wait for
                  a response that never comes (50 / 1,000 sessions of 1 MB)
  long_names      MQTT clients, one per home address, each with a 30 KB client id publishing to
                  32 distinct 60 KB topics: what a device's profile keeps of its names
                  (20 / 300 clients)
  login_spray     sources that each guess 12 usernames of 300 bytes over one FTP session, all
                  within one brute-force window: what the open episodes keep (200 / 100,000
                  sources)
  tiny_fragments  IPv4 datagrams cut into 8-byte fragments, out of order and overlapping, and
                  a stream of first fragments whose rest never comes
"""
import os
import random
import struct
import sys

SERVER_MAC = b"\x02\x00\x00\x00\x01\x10"
CLIENT_MAC = b"\x02\x00\x00\x00\x01\x24"
T0 = 1_790_000_000  # packet time of the first packet


class Pcap:
    def __init__(self, path):
        self.f = open(path, "wb", buffering=1 << 20)
        self.f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        self.usec = 0
        self.count = 0

    def frame(self, data, gap_usec=10):
        self.usec += gap_usec
        self.f.write(struct.pack("<IIII", T0 + self.usec // 1_000_000, self.usec % 1_000_000, len(data), len(data)))
        self.f.write(data)
        self.count += 1

    def close(self):
        self.f.close()
        return self.count


def ip4(s):
    return bytes(int(x) for x in s.split("."))


def ipv4(src, dst, proto, payload, ident=0, frag=0):
    """IPv4 header (no checksum: tapwatch does not verify it) + payload. `frag` is the 16-bit
    flags+offset field."""
    h = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), ident, frag, 64, proto, 0, src, dst)
    return h + payload


def eth(ip, rev=False):
    a, b = (SERVER_MAC, CLIENT_MAC) if not rev else (CLIENT_MAC, SERVER_MAC)
    return a + b + b"\x08\x00" + ip


SYN, ACK, PSH, FIN, RST = 0x02, 0x10, 0x08, 0x01, 0x04


def tcp(sport, dport, seq, ack, flags, payload=b""):
    return struct.pack(">HHIIBBHHH", sport, dport, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, 5 << 4, flags, 65535, 0, 0) + payload


class Session:
    """One TCP connection between a client and a server, written to a Pcap."""

    def __init__(self, pcap, cli, srv, sport, dport):
        self.p, self.cli, self.srv, self.sport, self.dport = pcap, ip4(cli), ip4(srv), sport, dport
        self.cseq, self.sseq = 1000, 5000

    def pkt(self, from_client, flags, payload=b"", seq=None, gap=10):
        if from_client:
            s = self.cseq if seq is None else seq
            seg = tcp(self.sport, self.dport, s, self.sseq, flags, payload)
            self.p.frame(eth(ipv4(self.cli, self.srv, 6, seg), rev=True), gap)
        else:
            s = self.sseq if seq is None else seq
            seg = tcp(self.dport, self.sport, s, self.cseq, flags, payload)
            self.p.frame(eth(ipv4(self.srv, self.cli, 6, seg)), gap)

    def handshake(self):
        self.pkt(True, SYN)
        self.cseq += 1
        self.pkt(False, SYN | ACK)
        self.sseq += 1
        self.pkt(True, ACK)

    def send(self, from_client, data, mss=1460):
        for i in range(0, len(data), mss):
            chunk = data[i : i + mss]
            self.pkt(from_client, PSH | ACK, chunk)
            if from_client:
                self.cseq += len(chunk)
            else:
                self.sseq += len(chunk)

    def close(self):
        self.pkt(True, FIN | ACK)
        self.cseq += 1
        self.pkt(False, FIN | ACK)
        self.sseq += 1
        self.pkt(True, ACK)


def syns(path, n, seed, pick, rev):
    """n SYNs, never answered; pick(rnd, i) gives the i-th (source, destination, port)."""
    rnd = random.Random(seed)
    p = Pcap(path)
    for i in range(n):
        src, dst, dport = pick(rnd, i)
        seg = tcp(rnd.randrange(1024, 65536), dport, rnd.getrandbits(32), 0, SYN)
        p.frame(eth(ipv4(src, dst, 6, seg, ident=i & 0xFFFF), rev=rev), 10)
    return p.close()


def syn_flood(path, full, n=None):
    servers = [ip4("198.18.1.10"), ip4("198.18.1.11"), ip4("198.18.1.12")]
    ports = [23, 80, 1883]

    def pick(rnd, i):
        src = struct.pack(">I", rnd.getrandbits(32) | 0x01000000)
        return src, servers[i % 3], ports[i % 3]

    return syns(path, n or (2_000_000 if full else 20_000), 1, pick, True)


def home_flood(path, full):
    server = ip4("198.18.1.10")

    def pick(rnd, _):
        return struct.pack(">I", 0xC6120000 | rnd.getrandbits(17)), server, 80

    return syns(path, 300_000 if full else 20_000, 2, pick, True)


def scan_out(path, full):
    src = ip4("198.18.1.5")

    def pick(rnd, _):
        return src, struct.pack(">I", rnd.getrandbits(32) | 0x01000000), 23

    return syns(path, 3_000_000 if full else 20_000, 4, pick, False)


def mqtt_remaining_length(n):
    out = bytearray()
    while True:
        b = n % 128
        n //= 128
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def mqtt_connect(cid, will=None, user=None, password=None):
    """An MQTT 3.1.1 CONNECT with client id `cid`, clean session, and optionally a will
    (topic, message), a username and a password."""
    flags = 0x02 | (0x04 if will else 0) | (0x80 if user is not None else 0) | (0x40 if password is not None else 0)
    fields = [cid] + (list(will) if will else []) + [f for f in (user, password) if f is not None]
    var = b"\x00\x04MQTT\x04" + bytes([flags]) + b"\x00\x3c"
    payload = b"".join(struct.pack(">H", len(f)) + f for f in fields)
    return b"\x10" + mqtt_remaining_length(len(var) + len(payload)) + var + payload


def mqtt_huge(path, full):
    filler = 16 << 20 if full else 1 << 20
    p = Pcap(path)
    # A CONNECT claiming 256 MB (the largest remaining length, 268,435,455).
    s = Session(p, "198.18.1.24", "198.18.1.10", 40001, 1883)
    s.handshake()
    var = b"\x00\x04MQTT\x04\xc2\x00\x3c"
    s.send(True, b"\x10" + mqtt_remaining_length(268_435_455) + var + b"\x00\x05dev01\x00\x05admin\x00\x05admin")
    s.send(True, bytes(range(256)) * (filler // 256))
    s.close()
    # The same claim in a PUBLISH after a valid CONNECT.
    s = Session(p, "198.18.1.24", "198.18.1.10", 40002, 1883)
    s.handshake()
    s.send(True, b"\x10" + mqtt_remaining_length(len(var) + 7) + var + b"\x00\x05dev02")
    s.send(False, b"\x20\x02\x00\x00")
    s.send(True, b"\x30" + mqtt_remaining_length(268_435_455) + b"\x00\x03a/b")
    s.send(True, b"\x00" * filler)
    s.close()
    # A remaining length that never ends (more than four continuation bytes).
    s = Session(p, "198.18.1.24", "198.18.1.10", 40003, 1883)
    s.handshake()
    s.send(True, b"\x10\xff\xff\xff\xff\xff\x7f" + var)
    s.close()
    return p.close()


def http_headers(path, full):
    p = Pcap(path)
    big = 1 << 20
    s = Session(p, "198.18.1.24", "198.18.1.10", 41001, 80)
    s.handshake()
    s.send(True, b"GET /index.html HTTP/1.1\r\nHost: cam.local\r\nX-Pad: " + b"a" * big + b"\r\n\r\n")
    s.send(False, b"HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Length: 0\r\n\r\n")
    s.close()
    s = Session(p, "198.18.1.24", "198.18.1.10", 41002, 80)
    s.handshake()
    many = b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 20) for i in range(big // 28))
    s.send(True, b"POST /login HTTP/1.1\r\nHost: cam.local\r\n" + many + b"\r\n")
    s.send(False, b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
    s.close()
    # A header block that never ends, on a persistent connection.
    s = Session(p, "198.18.1.24", "198.18.1.10", 41003, 80)
    s.handshake()
    s.send(True, b"GET / HTTP/1.1\r\n" + b"Cookie: " + b"c" * (4 * big if full else big))
    s.close()
    return p.close()


def telnet_iac(path, full):
    total = 16 << 20 if full else 1 << 20
    p = Pcap(path)
    s = Session(p, "198.18.1.24", "198.18.1.10", 42001, 23)
    s.handshake()
    # IAC DO/WILL/DONT/WONT option, and subnegotiations that never end.
    unit = b"".join(bytes([255, cmd, opt]) for cmd in (251, 252, 253, 254) for opt in (1, 3, 24, 31, 32, 33, 34, 39))
    s.send(False, unit * (total // len(unit) // 2))
    s.send(False, b"\xff\xfa\x18" + b"\x01" * (total // 2))  # SB TERMINAL-TYPE without SE
    s.send(True, b"\xff\xfd\x01" * 1000)
    s.close()
    return p.close()


def tcp_overlap(path, full):
    flows = 20_000 if full else 500
    rnd = random.Random(2)
    p = Pcap(path)
    for f in range(flows):
        s = Session(p, "198.18.1.24", "198.18.1.10", 20000 + f % 40000, [80, 1883, 23, 21][f % 4])
        s.handshake()
        data = (b"GET /f%d HTTP/1.1\r\nHost: x\r\nAuthorization: Basic YWRtaW46YWRtaW4=\r\n\r\n" % f) * 20
        segs = [(i, data[i : i + 100]) for i in range(0, len(data), 100)]
        base = s.cseq
        order = list(segs)
        kind = f % 4
        if kind == 0:
            order.reverse()  # entirely out of order
        elif kind == 1:
            rnd.shuffle(order)
            order += [(i + 50, bytes(rnd.getrandbits(8) for _ in range(len(d)))) for i, d in segs[::3]]  # overlaps with other bytes
        elif kind == 2:
            # A hole far larger than the out-of-order buffer, then data beyond it.
            order = segs[:2] + [(i + 10_000_000, d) for i, d in segs[2:]] * 3
        else:
            order = [x for seg in segs for x in (seg, seg, (seg[0] - 30, seg[1]))]  # duplicates, overlap backwards
        for off, d in order:
            s.pkt(True, PSH | ACK, d, seq=base + off)
        s.cseq = base + len(data)
        if f % 8 == 0:
            s.pkt(True, RST | ACK)
    return p.close()


def hold_buffers(p, n, net=2):
    """`n` MQTT sessions (clients 198.18.`net`.x and up) that each leave a 60 KB PUBLISH
    unfinished in both directions, then 16 segments beyond a one-byte hole each way."""
    sessions = []
    for i in range(n):
        cli = "198.18.%d.%d" % (net + i // 250, 1 + i % 250)
        sessions.append(Session(p, cli, "198.18.1.10", 30000 + i % 30000, 1883))
    body = 60_000
    # A PUBLISH claiming 61,000 bytes (under the parsers' 64 KiB buffer), 60,000 of them sent.
    publish = b"\x30" + mqtt_remaining_length(61_000) + b"\x00\x03a/b" + b"p" * body
    for s in sessions:
        s.handshake()
    for i, s in enumerate(sessions):
        s.send(True, mqtt_connect(b"dev%05d" % i))
        s.send(False, b"\x20\x02\x00\x00")
    for s in sessions:
        s.send(True, publish)
        s.send(False, publish)
    # Out of order: 16 segments of 2,000 bytes after a one-byte hole, each way.
    for s in sessions:
        for from_client in (True, False):
            base = s.cseq if from_client else s.sseq
            for k in range(16):
                s.pkt(from_client, PSH | ACK, b"o" * 2000, seq=base + 1 + 2000 * k)


def held_buffers(path, full):
    p = Pcap(path)
    hold_buffers(p, 5_000 if full else 200)
    return p.close()


def memcap_pin(path, full):
    p = Pcap(path)
    # Sessions that pin the stream memcap of the hostile suite's test (4 MiB), as held_buffers.
    hold_buffers(p, 600 if full else 60)
    # Then operators log in: each CONNECT carries a 24 KB will message before its username and
    # password, and its second half arrives before its first (reordered on the way): the
    # sensor must buffer both to read the credentials.
    for i in range(10):
        s = Session(p, "198.18.9.%d" % (1 + i), "198.18.1.10", 41000 + i, 1883)
        s.handshake()
        connect = mqtt_connect(b"op%02d" % i, (b"site/op/will", b"w" * 24_000), b"operator", b"s3cret-%02d" % i)
        half = len(connect) // 2
        for part in range(half, len(connect), 1400):
            s.pkt(True, PSH | ACK, connect[part:part + 1400], seq=s.cseq + part)
        for part in range(0, half, 1400):
            s.pkt(True, PSH | ACK, connect[part:min(part + 1400, half)], seq=s.cseq + part)
        s.cseq += len(connect)
        s.send(False, b"\x20\x02\x00\x00")
        body = struct.pack(">H", 11) + b"site/op/cmd" + b"on"
        s.send(True, b"\x30" + mqtt_remaining_length(len(body)) + body)
        s.close()
    return p.close()


def auth_pipeline(path, full):
    import base64

    n = 1_000 if full else 50
    p = Pcap(path)
    cred = base64.b64encode(b"admin:" + b"s" * 30_000)
    req = b"GET /cgi-bin/status HTTP/1.1\r\nHost: cam.local\r\nAuthorization: Basic " + cred + b"\r\n\r\n"
    sessions = [Session(p, "198.18.%d.%d" % (2 + i // 250, 1 + i % 250), "198.18.1.10", 31000 + i, 80) for i in range(n)]
    for s in sessions:
        s.handshake()
    # One megabyte of requests each (the default reassembly depth), sessions interleaved.
    for _ in range((1 << 20) // len(req) + 1):
        for s in sessions:
            s.send(True, req)
    return p.close()


def long_names(path, full):
    n = 300 if full else 20
    p = Pcap(path)
    for i in range(n):
        s = Session(p, "198.18.%d.%d" % (4 + i // 250, 1 + i % 250), "198.18.1.10", 32000 + i, 1883)
        s.handshake()
        s.send(True, mqtt_connect(b"c%05d" % i + b"c" * 30_000))
        s.send(False, b"\x20\x02\x00\x00")
        for t in range(32):
            topic = b"site/%05d/%02d/" % (i, t) + b"t" * 60_000
            body = struct.pack(">H", len(topic)) + topic + b"21.5"
            s.send(True, b"\x30" + mqtt_remaining_length(len(body)) + body)
        s.close()
    return p.close()


def login_spray(path, full):
    """Sources each guessing `tries` long usernames over one FTP session, all within one
    brute-force window, so every source's episode is open at once."""
    n = 100_000 if full else 200
    tries = 12
    p = Pcap(path)
    for i in range(n):
        a = 0xC6120000 + (16 + i // 250) * 256 + 1 + i % 250  # 198.18.16.1 onwards
        cli = "%d.%d.%d.%d" % (a >> 24, a >> 16 & 255, a >> 8 & 255, a & 255)
        s = Session(p, cli, "198.18.1.10", 20000 + i % 40000, 21)
        s.handshake()
        s.send(False, b"220 ready\r\n")
        for t in range(tries):
            s.send(True, b"USER " + b"%06d-%02d-" % (i, t) + b"u" * 290 + b"\r\n")
            s.send(False, b"331 Password required\r\n")
            s.send(True, b"PASS guess%02d\r\n" % t)
            s.send(False, b"530 Login incorrect\r\n")
        s.close()
    return p.close()


def tiny_fragments(path, full):
    n = 200_000 if full else 5_000
    rnd = random.Random(3)
    p = Pcap(path)
    src, dst = ip4("198.18.1.24"), ip4("198.18.1.10")
    for i in range(n):
        ident = i & 0xFFFF
        seg = tcp(30000 + i % 1000, 80, i, 0, PSH | ACK, b"GET / HTTP/1.1\r\nHost: frag\r\n\r\n")
        pieces = [(o, seg[o : o + 8]) for o in range(0, len(seg), 8)]
        if i % 3 == 0:
            rnd.shuffle(pieces)
        for off, piece in pieces:
            last = off + 8 >= len(seg)
            frag = (off // 8) | (0 if last else 0x2000)
            p.frame(eth(ipv4(src, dst, 6, piece, ident=ident, frag=frag), rev=True), 5)
        if i % 5 == 0:
            # An overlapping fragment rewriting the TCP ports, and a first fragment alone.
            p.frame(eth(ipv4(src, dst, 6, b"\x00\x17\x00\x17AAAA", ident=ident, frag=0x2000), rev=True), 5)
            p.frame(eth(ipv4(src, dst, 6, seg[:8], ident=(ident + 1) & 0xFFFF, frag=0x2000), rev=True), 5)
    return p.close()


ALL = {
    "syn_flood": syn_flood,
    "home_flood": home_flood,
    "scan_out": scan_out,
    "mqtt_huge": mqtt_huge,
    "http_headers": http_headers,
    "telnet_iac": telnet_iac,
    "tcp_overlap": tcp_overlap,
    "held_buffers": held_buffers,
    "memcap_pin": memcap_pin,
    "auth_pipeline": auth_pipeline,
    "long_names": long_names,
    "login_spray": login_spray,
    "tiny_fragments": tiny_fragments,
}


def main(argv):
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    out = argv[1]
    full = "--scale" in argv and argv[argv.index("--scale") + 1] == "full"
    only = argv[argv.index("--only") + 1].split(",") if "--only" in argv else list(ALL)
    os.makedirs(out, exist_ok=True)
    syn = int(argv[argv.index("--syn-flows") + 1]) if "--syn-flows" in argv else None
    for name in only:
        path = os.path.join(out, name + ".pcap")
        n = ALL[name](path, full, syn) if name == "syn_flood" else ALL[name](path, full)
        print(f"{name}\t{n}\t{os.path.getsize(path)}\t{path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
