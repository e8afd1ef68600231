#!/usr/bin/env python3
"""Seeds the fuzz corpora from the real captures in pcaps/ (Python stdlib only).

    python3 tests/fuzz/make_corpus.py            # writes tests/fuzz/corpus/TARGET/ (not committed)

capture_pcap / capture_pcapng / pipeline: whole capture files (cut to 64 KiB), with the selector
byte the harness expects in front. decode: single frames with their link type. proto_*: the TCP
streams of that protocol's captures, in the chunk format of tests/fuzz/common.rs
(`[flags, len_lo, len_hi, bytes]`, flags bit 0 = server to client). rules, config, model: the
shipped files.
"""
import hashlib
import os
import struct
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
OUT = os.path.join(ROOT, "tests", "fuzz", "corpus")
MAX_SEED = 64 * 1024

LINKS = [1, 0, 12, 14, 108, 101, 113, 228, 229, 239, 276]  # the order of LINKS in common.rs


def put(target, data):
    d = os.path.join(OUT, target)
    os.makedirs(d, exist_ok=True)
    name = hashlib.sha1(data).hexdigest()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def frames(path):
    """Yields (linktype, bytes) of every record of a pcap or pcapng file."""
    b = open(path, "rb").read()
    if len(b) < 24:
        return
    magic = b[:4]
    if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d"):
        e = "<" if magic[0] in (0xD4, 0x4D) else ">"
        link = struct.unpack(e + "I", b[20:24])[0] & 0x03FFFFFF
        pos = 24
        while pos + 16 <= len(b):
            incl = struct.unpack(e + "I", b[pos + 8 : pos + 12])[0]
            data = b[pos + 16 : pos + 16 + incl]
            pos += 16 + incl
            yield link, data
    elif magic == b"\x0a\x0d\x0d\x0a":
        pos = 0
        e = "<"
        links = []
        while pos + 12 <= len(b):
            if b[pos : pos + 4] == b"\x0a\x0d\x0d\x0a":
                e = ">" if b[pos + 8 : pos + 12] == b"\x1a\x2b\x3c\x4d" else "<"
                links = []
            btype, blen = struct.unpack(e + "II", b[pos : pos + 8])
            if blen < 12:
                return
            body = b[pos + 8 : pos + blen - 4]
            if btype == 1:
                links.append(struct.unpack(e + "H", body[:2])[0])
            elif btype == 6 and len(body) >= 20:
                ifid, _, _, cap, _ = struct.unpack(e + "IIIII", body[:20])
                if ifid < len(links):
                    yield links[ifid], body[20 : 20 + cap]
            pos += blen


def ip_of(link, f):
    """The IP packet inside a frame (Ethernet with VLAN tags, SLL, SLL2, NULL, raw), or None."""
    if link == 1:
        et, off = struct.unpack(">H", f[12:14])[0] if len(f) >= 14 else 0, 14
        while et in (0x8100, 0x88A8, 0x9100) and len(f) >= off + 4:
            et, off = struct.unpack(">H", f[off + 2 : off + 4])[0], off + 4
        return f[off:] if et in (0x0800, 0x86DD) else None
    if link == 113:
        return f[16:]
    if link == 276:
        return f[20:]
    if link in (0, 108):
        return f[4:]
    if link in (101, 12, 14, 228, 229):
        return f
    return None


def tcp_of(ip):
    """(src, dst, sport, dport, seq, flags, payload) of a TCP packet, or None."""
    if not ip:
        return None
    v = ip[0] >> 4
    if v == 4 and len(ip) >= 20:
        ihl = (ip[0] & 15) * 4
        if ip[9] != 6:
            return None
        total = struct.unpack(">H", ip[2:4])[0]
        src, dst, t = ip[12:16], ip[16:20], ip[ihl : total if total else None]
    elif v == 6 and len(ip) >= 40:
        if ip[6] != 6:
            return None
        plen = struct.unpack(">H", ip[4:6])[0]
        src, dst, t = ip[8:24], ip[24:40], ip[40 : 40 + plen]
    else:
        return None
    if len(t) < 20:
        return None
    sport, dport, seq = struct.unpack(">HHI", t[:8])
    doff = (t[12] >> 4) * 4
    return src, dst, sport, dport, seq, t[13], t[doff:]


def streams(path):
    """TCP streams of a capture: list of (server_port, [(dir, bytes)]) in arrival order."""
    flows = {}
    for link, f in frames(path):
        p = tcp_of(ip_of(link, f))
        if not p:
            continue
        src, dst, sport, dport, seq, flags, payload = p
        a, b = (src, sport), (dst, dport)
        key = (min(a, b), max(a, b))
        fl = flows.setdefault(key, {"client": None, "parts": [], "next": {}, "key": key})
        if fl["client"] is None:
            # SYN without ACK names the client; otherwise the first sender.
            fl["client"] = b if (flags & 0x12) == 0x12 else a
        if not payload:
            continue
        d = 0 if a == fl["client"] else 1
        exp = fl["next"].get(d)
        if exp is not None and seq != exp:
            continue  # retransmission or out of order: skip for a seed
        fl["next"][d] = (seq + len(payload)) & 0xFFFFFFFF
        fl["parts"].append((d, payload))
    for fl in flows.values():
        if fl["parts"]:
            ports = {fl["client"][1]} ^ {k[1] for k in key_of(fl)}
            yield (ports.pop() if ports else 0), fl["parts"]


def key_of(fl):
    return fl["key"]


BY_PORT = {1883: "proto_mqtt", 80: "proto_http", 8080: "proto_http", 23: "proto_telnet",
           21: "proto_ftp", 443: "proto_tls", 8883: "proto_tls"}


def encode(parts):
    out = bytearray()
    for d, bts in parts:
        for i in range(0, len(bts), 0xFFFF):
            piece = bts[i : i + 0xFFFF]
            out += bytes([d]) + struct.pack("<H", len(piece)) + piece
            if len(out) > MAX_SEED:
                return bytes(out)
    return bytes(out)


PROTO = {
    "proto_mqtt": ("mqtt",),
    "proto_http": ("http", "websocket"),
    "proto_telnet": ("telnet", "mirai"),
    "proto_ftp": ("ftp",),
    "proto_tls": ("tls", "ssl", "starttls", "quic"),
}


def main():
    caps = []
    for d, _, fs in os.walk(os.path.join(ROOT, "pcaps")):
        caps += [os.path.join(d, f) for f in fs if f.endswith((".pcap", ".pcapng"))]
    caps.sort()
    for c in caps:
        raw = open(c, "rb").read()
        name = os.path.basename(c).lower()
        if raw[:4] == b"\x0a\x0d\x0d\x0a":
            put("capture_pcapng", b"\x00" + raw[:MAX_SEED])
        else:
            sel = {b"\xd4\xc3\xb2\xa1": 0, b"\xa1\xb2\xc3\xd4": 1, b"\x4d\x3c\xb2\xa1": 2}.get(raw[:4], 3)
            put("capture_pcap", bytes([sel]) + raw[:MAX_SEED])
        put("pipeline", b"\x00" + raw[:MAX_SEED])
        for i, (link, f) in enumerate(frames(c)):
            if i >= 20:
                break
            sel = LINKS.index(link) if link in LINKS else min(link, 255)
            put("decode", bytes([sel, 0]) + f)
        for target, words in PROTO.items():
            if any(w in name for w in words):
                for _, parts in streams(c):
                    put(target, encode(parts))
        if "/lab/" in c:
            seen = set()
            for port, parts in streams(c):
                t = BY_PORT.get(port)
                # A few streams per service and port pair are enough.
                if t and (t, len(seen)) and sum(1 for s in seen if s[0] == t) < 40:
                    seen.add((t, len(seen)))
                    put(t, encode(parts))
    rules = os.path.join(ROOT, "rules")
    for f in sorted(os.listdir(rules)):
        if f.endswith(".toml"):
            put("rules", open(os.path.join(rules, f), "rb").read())
    put("rules", b"\0".join(open(os.path.join(rules, f), "rb").read() for f in sorted(os.listdir(rules)) if f.endswith(".toml")))
    put("config", open(os.path.join(ROOT, "README.md"), "rb").read().split(b"```toml\n")[1].split(b"```")[0])
    put("config", b'[network]\nhome_net = ["10.0.0.0/8"]\n[zones]\niot = ["198.18.1.0/24"]\noffice = ["198.18.2.0/24"]\n'
        b'[[segmentation]]\nfrom = "office"\nto = "iot"\nallow = ["https", "tcp/8000-8100", "mqtt"]\n')
    put("model", open(os.path.join(ROOT, "models", "default.json"), "rb").read())
    for t in sorted(os.listdir(OUT)):
        print(f"{t:16} {len(os.listdir(os.path.join(OUT, t)))} seeds")


if __name__ == "__main__":
    sys.exit(main())
