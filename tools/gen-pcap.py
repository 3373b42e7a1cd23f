#!/usr/bin/env python3
"""Generate synthetic pcap / pcapng captures for zcap's tests, fixtures and benchmarks.

Dependency-free (standard library only; the bytes are built with the struct module) and
deterministic: the same arguments and --seed give the same bytes (with the same version of
this script; Python's Mersenne Twister and its randbytes/getrandbits are stable across
versions since 3.9).

Packets are built from a small table of precomputed link + IPv4 (or IPv6, --l3) + TCP/UDP
header templates (about a hundred flows in both directions) plus payload bytes that are either
fresh random bytes or slices of a pre-made text-like pool, and written in large batches, so a
GiB takes seconds, not minutes.

Corrupt streams (--corrupt) print one line to stderr that tests parse:

    gen-pcap: corrupt=KIND offset=BYTE_OFFSET good_records=N

offset is the byte offset of the first bad unit (the file header, record or block that a
reader must reject); good_records is the number of packet records before it that a reader
returns.
"""

from __future__ import annotations

import argparse
import decimal
import os
import random
import re
import struct
import sys
import time

MAXIMUM_SNAPLEN = 262144  # libpcap's limit; a larger caplen is an error
HUGE_CAPLEN = 300000

PCAP_MAGIC_US = 0xA1B2C3D4
PCAP_MAGIC_NS = 0xA1B23C4D
BAD_MAGIC = 0xDEADBEEF

BT_SHB = 0x0A0D0D0A
BT_IDB = 0x00000001
BT_ISB = 0x00000005
BT_EPB = 0x00000006
BT_UNKNOWN = 0x00000BEE
BYTE_ORDER_MAGIC = 0x1A2B3C4D

LT_ETHERNET = 1
LT_RAW = 101
LT_IEEE802_11 = 105
LT_LINUX_SLL = 113
LT_IPV4 = 228

CORRUPT_KINDS = ("bad-magic", "truncated-record", "huge-caplen", "bad-block-length", "garbage-tail")
MALFORMED_KINDS = ("ihl-short", "ihl-long", "options-cut", "ext-loop", "ext-overrun", "runt", "deep-vlan")

# IP lengths per size class. For Ethernet that is a 60-100 / 576 / 1514 byte frame.
SMALL_IP = (46, 86)
MEDIUM_IP = 562
LARGE_IP = 1500
MAX_IP = LARGE_IP

N_FLOWS = 48          # connections; each gives two directions
CHOICE_TABLE = 8191  # prime: (flow, size) choices repeat with this period
JITTER_TABLE = 1009
TEXT_POOL = 6 << 20
RANDOM_REFILL = 8 << 20
FLUSH_BYTES = 4 << 20


def die(msg: str) -> None:
    print(f"gen-pcap: error: {msg}", file=sys.stderr)
    sys.exit(2)


def parse_size(text: str) -> int:
    """'1G', '64M', '512k', '1GiB', '1000' -> bytes (binary multiples)."""
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]*)?)\s*([kmgt]?)(?:i?b)?\s*", text, re.IGNORECASE)
    if not m:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (try 1G, 64M, 100k, 12345)")
    mult = 1024 ** ("kmgt".index(m.group(2).lower()) + 1) if m.group(2) else 1
    return int(decimal.Decimal(m.group(1)) * mult)


def parse_linktypes(text: str) -> list[int]:
    try:
        out = [int(x, 0) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of link types: {text!r} (e.g. 1,101)")
    if not out:
        raise argparse.ArgumentTypeError("empty link type list")
    for lt in out:
        if not 0 <= lt <= 0xFFFF:
            raise argparse.ArgumentTypeError(f"link type out of range: {lt}")
    return out


def parse_vlans(text: str) -> list[int]:
    try:
        out = [int(x, 0) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a VLAN list: {text!r} (e.g. 100 or 200,100)")
    if not 1 <= len(out) <= 2 or not all(0 <= v < 4096 for v in out):
        raise argparse.ArgumentTypeError(f"one or two VLAN ids 0..4095: {text!r}")
    return out


def parse_epoch(text: str) -> int:
    """Epoch seconds (float allowed) -> integer nanoseconds, exactly."""
    try:
        return int(decimal.Decimal(text) * 1_000_000_000)
    except decimal.InvalidOperation:
        raise argparse.ArgumentTypeError(f"not epoch seconds: {text!r}")


def positive_float(text: str) -> float:
    v = float(text)
    if not v > 0:
        raise argparse.ArgumentTypeError("must be > 0")
    return v


# --------------------------------------------------------------------------- packets


def ip_checksum(header: bytes) -> int:
    total = sum(struct.unpack(f"!{len(header) // 2}H", header))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


class Flow:
    __slots__ = ("mac_src", "mac_dst", "ip_src", "ip_dst", "proto", "sport", "dport",
                 "seq", "ack", "ip_id", "compressible", "v6", "ext")

    def reversed(self) -> "Flow":
        r = Flow()
        r.mac_src, r.mac_dst = self.mac_dst, self.mac_src
        r.ip_src, r.ip_dst = self.ip_dst, self.ip_src
        r.proto = self.proto
        r.sport, r.dport = self.dport, self.sport
        r.seq, r.ack = self.ack, self.seq
        r.ip_id = (self.ip_id * 7 + 12345) & 0xFFFF
        r.compressible = self.compressible
        r.v6, r.ext = self.v6, self.ext
        return r


def make_flows(rng: random.Random, payload: str) -> list[Flow]:
    tcp_ports = (80, 443, 22, 8080, 5432, 6379, 3306, 9092, 25, 993)
    udp_ports = (53, 123, 514, 1812, 5353)
    server_nets = ((10, 0), (192, 168), (172, 16), (198, 51), (203, 0))
    flows = []
    for n in range(N_FLOWS):
        f = Flow()
        f.mac_src = bytes([0x02]) + rng.randbytes(5)
        f.mac_dst = bytes([0x02]) + rng.randbytes(5)
        a, b = server_nets[rng.randrange(len(server_nets))]
        f.ip_src = bytes([10, rng.randrange(256), rng.randrange(256), rng.randrange(1, 255)])
        f.ip_dst = bytes([a, b, rng.randrange(256), rng.randrange(1, 255)])
        if rng.random() < 0.85:
            f.proto = 6
            f.dport = tcp_ports[rng.randrange(len(tcp_ports))]
        else:
            f.proto = 17
            f.dport = udp_ports[rng.randrange(len(udp_ports))]
        f.sport = rng.randrange(32768, 61000)
        f.seq = rng.getrandbits(32)
        f.ack = rng.getrandbits(32)
        f.ip_id = rng.getrandbits(16)
        if payload == "compressible":
            f.compressible = True
        elif payload == "random":
            f.compressible = False
        else:
            f.compressible = n % 2 == 0
        f.v6 = f.ext = False
        flows.append(f)
        flows.append(f.reversed())
    return flows


def set_l3(flows: list[Flow], l3: str, ipv6_ext: bool) -> None:
    """--l3: which connections are IPv6 (all, or every second one); no random draws, so the
    IPv4 flows are the same as without the option. --ipv6-ext: every third IPv6 connection
    carries a hop-by-hop and a destination options header."""
    for n, f in enumerate(flows):
        conn = n // 2
        f.v6 = l3 == "ipv6" or (l3 == "mixed" and conn % 2 == 1)
        f.ext = f.v6 and ipv6_ext and conn % 3 == 0


def v6_addr(ip4: bytes) -> bytes:
    """The IPv4 address in a unique local prefix: fd00::a.b.c.d."""
    return b"\xfd" + b"\0" * 11 + ip4


# hop-by-hop (a PadN option) and destination options (a PadN option), 8 bytes each
V6_EXT_LEN = 16


def min_ip_len(flow: Flow) -> int:
    """The smallest IP packet that holds the flow's headers."""
    if not flow.v6:
        return 0
    return 40 + (V6_EXT_LEN if flow.ext else 0) + (20 if flow.proto == 6 else 8)


def l3_header(flow: Flow, ip_len: int) -> bytes:
    """IPv4 or IPv6 + TCP/UDP header for an IP packet of ip_len bytes (payload follows)."""
    if flow.v6:
        ext = b""
        nh = flow.proto
        if flow.ext:
            ext = struct.pack("!BBBB4x", 60, 0, 1, 4) + struct.pack("!BBBB4x", flow.proto, 0, 1, 4)
            nh = 0
        if flow.proto == 6:
            l4 = struct.pack("!HHIIBBHHH", flow.sport, flow.dport, flow.seq, flow.ack,
                             0x50, 0x18 if ip_len > 80 else 0x10, 502, 0, 0)
        else:
            l4 = struct.pack("!HHHH", flow.sport, flow.dport, ip_len - 40 - len(ext), 0)
        ip = struct.pack("!IHBB16s16s", 0x60000000 | (flow.ip_id & 0xFFFFF), ip_len - 40, nh, 64,
                         v6_addr(flow.ip_src), v6_addr(flow.ip_dst))
        return ip + ext + l4
    if flow.proto == 6:
        l4 = struct.pack("!HHIIBBHHH", flow.sport, flow.dport, flow.seq, flow.ack,
                         0x50, 0x18 if ip_len > 60 else 0x10, 502, 0, 0)
    else:
        l4 = struct.pack("!HHHH", flow.sport, flow.dport, ip_len - 20, 0)
    ip_id = (flow.ip_id + ip_len) & 0xFFFF
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, ip_len, ip_id, 0x4000, 64, flow.proto, 0,
                     flow.ip_src, flow.ip_dst)
    ip = ip[:10] + struct.pack("!H", ip_checksum(ip)) + ip[12:]
    return ip + l4


def vlan_tags(vlans: list[int]) -> bytes:
    """802.1Q tags (one ID), or 802.1ad outer + 802.1Q inner (two)."""
    tpids = (0x8100,) if len(vlans) == 1 else (0x88A8, 0x8100)
    return b"".join(struct.pack("!HH", tpid, vid) for tpid, vid in zip(tpids, vlans))


def link_header(linktype: int, flow: Flow, vlans: list[int] | None = None) -> bytes | None:
    """Link-layer header before the IP header, b'' for raw IP, None when the link type gets arbitrary bytes."""
    etype = b"\x86\xdd" if flow.v6 else b"\x08\x00"
    if linktype == LT_ETHERNET:
        return flow.mac_dst + flow.mac_src + (vlan_tags(vlans) if vlans else b"") + etype
    if linktype in (LT_RAW, LT_IPV4):
        return b""
    if linktype == LT_LINUX_SLL:
        # packet type (0 = to us, 4 = outgoing), ARPHRD_ETHER, address length, address, protocol
        ptype = 4 if flow.sport > flow.dport else 0
        return struct.pack("!HHH8s", ptype, 1, 6, flow.mac_src + b"\0\0") + etype
    if linktype == LT_IEEE802_11:
        # data frame, ToDS=0 FromDS=0: addr1 = DA, addr2 = SA, addr3 = BSSID; then LLC/SNAP
        return (b"\x08\x00\x00\x00" + flow.mac_dst + flow.mac_src + flow.mac_dst
                + b"\x00\x00" + b"\xaa\xaa\x03\x00\x00\x00" + etype)
    return None


def text_pool(rng: random.Random, size: int) -> bytes:
    """Text-like bytes (HTTP/log lines) that compress a few times, like real application data."""
    words = ["".join(chr(97 + rng.randrange(26)) for _ in range(rng.randrange(3, 10)))
             for _ in range(400)]
    methods = ("GET", "POST", "PUT", "HEAD")
    codes = ("200", "200", "200", "204", "301", "304", "404", "500")
    parts = []
    total = 0
    rr = rng.randrange
    while total < size:
        w1, w2, w3 = words[rr(400)], words[rr(400)], words[rr(400)]
        line = (f"{methods[rr(4)]} /api/v1/{w1}/{w2}?id={rr(1_000_000)} HTTP/1.1\r\n"
                f"Host: {w3}.example.com\r\nUser-Agent: zcap-gen/{rr(10)}.{rr(10)}\r\n"
                f"X-Request-Id: {rng.getrandbits(64):016x}\r\n\r\n"
                f'{{"status":{codes[rr(8)]},"user":"{w2}","bytes":{rr(100000)},'
                f'"path":"/{w1}/{w3}","ok":true}}\n')
        parts.append(line)
        total += len(line)
    return "".join(parts).encode()[:size]


def malformed_frame(kind: str, i: int, flow: Flow) -> tuple[bytes, int]:
    """An Ethernet frame whose headers are malformed in the way KIND names (deep-vlan is
    valid but unusual), and its wire length. Built from the flow's addresses and ports with
    no random draws."""
    if kind == "runt":
        n = i % 14
        return (flow.mac_dst + flow.mac_src + b"\x08\x00")[:n], n
    l4 = struct.pack("!HHIIBBHHH", flow.sport, flow.dport, 1, 2, 0x50, 0x10, 502, 0, 0)
    if kind in ("ext-loop", "ext-overrun"):
        if kind == "ext-loop":
            # hop-by-hop headers each naming another hop-by-hop header: a chain longer than
            # any reader should follow (12 headers, then TCP)
            ext, nh = b"\0\0\1\4\0\0\0\0" * 12, 0
        else:
            # destination options claiming 2048 bytes in a short packet
            ext, nh = b"\x06\xff\1\4\0\0\0\0", 60
        rest = ext + l4
        ip = struct.pack("!IHBB16s16s", 0x60000000, len(rest), nh, 64,
                         v6_addr(flow.ip_src), v6_addr(flow.ip_dst))
        frame = flow.mac_dst + flow.mac_src + b"\x86\xdd" + ip + rest
        return frame, len(frame)
    ihl, opts, tags = 5, b"", b""
    if kind == "ihl-short":
        ihl = i % 5
    elif kind == "ihl-long":
        ihl = 15  # 60 bytes of header in a 40-byte packet
    elif kind == "options-cut":
        ihl, opts = 15, b"\1" * 40
    elif kind == "deep-vlan":
        tags = b"".join(struct.pack("!HH", 0x8100, 100 + k) for k in range(10))
    total = 20 + len(opts) + len(l4)
    ip = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, total, flow.ip_id, 0x4000, 64, 6, 0,
                     flow.ip_src, flow.ip_dst)
    frame = flow.mac_dst + flow.mac_src + tags + b"\x08\x00" + ip + opts + l4
    if kind == "options-cut":
        # captured to a length that ends inside the options
        return frame[: 14 + 20 + 4 + i % 32], len(frame)
    return frame, len(frame)


class Template:
    __slots__ = ("hdr", "n", "compressible", "caplen", "origlen")


def build_templates(rng: random.Random, flows: list[Flow], linktypes: list[int], mix: str,
                    snaplen: int, vlans: list[int] | None = None) -> list[list[Template]]:
    """tmpl[k][j]: the j-th (flow, size) choice rendered for interface k's link type."""
    choices = []
    for _ in range(CHOICE_TABLE):
        f = rng.randrange(len(flows))
        if mix == "full":
            ip_len = LARGE_IP
        elif mix == "small":
            ip_len = rng.randrange(SMALL_IP[0], SMALL_IP[1] + 1)
        else:
            u = rng.random()
            if u < 0.50:
                ip_len = rng.randrange(SMALL_IP[0], SMALL_IP[1] + 1)
            elif u < 0.60:
                ip_len = MEDIUM_IP
            else:
                ip_len = LARGE_IP
        choices.append((f, ip_len))
    out = []
    for lt in linktypes:
        cache: dict[tuple[int, int], Template] = {}
        row = []
        for f, ip_len in choices:
            t = cache.get((f, ip_len))
            if t is None:
                flow = flows[f]
                lh = link_header(lt, flow, vlans)
                if lh is None:
                    hdr, frame_len = b"", ip_len + 14
                else:
                    n = max(ip_len, min_ip_len(flow))
                    hdr = lh + l3_header(flow, n)
                    frame_len = len(lh) + n
                t = Template()
                t.origlen = frame_len
                t.caplen = min(frame_len, snaplen)
                t.hdr = hdr[: t.caplen]
                t.n = t.caplen - len(t.hdr)
                t.compressible = flow.compressible
                cache[(f, ip_len)] = t
            row.append(t)
        out.append(row)
    return out


# --------------------------------------------------------------------------- output


class Out:
    """Buffered binary sink that counts bytes written (offsets for corruption reports)."""

    def __init__(self, f):
        self.f = f
        self.parts: list = []
        self.pending = 0
        self.written = 0

    def put(self, b) -> None:
        self.parts.append(b)
        self.pending += len(b)
        self.written += len(b)
        if self.pending >= FLUSH_BYTES:
            self.flush()

    def flush(self) -> None:
        if self.parts:
            self.f.write(b"".join(self.parts))
            self.parts.clear()
            self.pending = 0


def opt(e: str, code: int, value: bytes) -> bytes:
    pad = (-len(value)) % 4
    return struct.pack(e + "HH", code, len(value)) + value + b"\0" * pad


def block(e: str, btype: int, body: bytes) -> bytes:
    assert len(body) % 4 == 0
    total = 12 + len(body)
    return struct.pack(e + "II", btype, total) + body + struct.pack(e + "I", total)


class Generator:
    def __init__(self, a: argparse.Namespace, f):
        self.a = a
        self.e = "<" if a.endian == "little" else ">"
        self.out = Out(f)
        self.rng = random.Random(a.seed)
        rng = self.rng
        self.linktypes = a.linktypes
        self.pcapng = a.format == "pcapng"
        self.flows = make_flows(rng, a.payload)
        set_l3(self.flows, a.l3, a.ipv6_ext)
        self.tmpl = build_templates(rng, self.flows, self.linktypes, a.mix, a.snaplen, a.vlan)
        self.text = text_pool(rng, TEXT_POOL) if a.payload != "random" else b""
        self.text_offs = [rng.randrange(len(self.text) - MAX_IP - 64) for _ in range(10007)] if self.text else [0]
        self.rand = b""
        self.rpos = 0
        interval = 1e9 / a.rate
        self.interval = interval
        self.jitter = [int(rng.random() * 0.2 * interval) for _ in range(JITTER_TABLE)]
        self.jitter[0] = 0  # the first packet is at exactly --start
        self.start_ns = a.start
        self.packets = 0  # good packet records written
        self.ts_res_ns = 1 if a.nanos else 1000
        self.if_packets = [0] * len(self.linktypes)

    # -- sizing

    def avg_record(self) -> float:
        over = 32 + 1.5 if self.pcapng else 16
        rows = self.tmpl
        return sum(over + t.caplen for row in rows for t in row) / (len(rows) * CHOICE_TABLE)

    def header_size(self) -> int:
        return 24 if not self.pcapng else 28 + 40 + 32 * len(self.linktypes)

    def ts_of(self, i: int) -> int:
        return self.start_ns + int(i * self.interval) + self.jitter[i % JITTER_TABLE]

    def payload(self, t: Template, i: int) -> bytes:
        if t.compressible:
            o = self.text_offs[i % 10007]
            return self.text[o: o + t.n]
        if self.rpos + t.n > len(self.rand):
            self.rand = self.rng.randbytes(RANDOM_REFILL)
            self.rpos = 0
        p = self.rpos
        self.rpos = p + t.n
        return self.rand[p: p + t.n]

    # -- headers

    def pcap_header(self, magic: int | None = None) -> bytes:
        if magic is None:
            magic = PCAP_MAGIC_NS if self.a.nanos else PCAP_MAGIC_US
        return struct.pack(self.e + "IHHiIII", magic, 2, 4, 0, 0, self.a.snaplen, self.linktypes[0])

    def shb(self, bom: int = BYTE_ORDER_MAGIC) -> bytes:
        e = self.e
        body = struct.pack(e + "IHHq", bom, 1, 0, -1)
        body += opt(e, 4, b"zcap tools/gen-pcap.py") + opt(e, 0, b"")
        return block(e, BT_SHB, body)

    def idb(self, k: int) -> bytes:
        e = self.e
        body = struct.pack(e + "HHI", self.linktypes[k], 0, self.a.snaplen)
        body += opt(e, 2, f"gen{k}".encode())
        if self.a.nanos:
            body += opt(e, 9, bytes([9]))
        body += opt(e, 0, b"")
        return block(e, BT_IDB, body)

    def isb(self, k: int, i: int) -> bytes:
        e = self.e
        now = self.ts_of(max(i - 1, 0)) // self.ts_res_ns
        start = self.start_ns // self.ts_res_ns
        body = struct.pack(e + "III", k, now >> 32, now & 0xFFFFFFFF)
        body += opt(e, 2, struct.pack(e + "II", start >> 32, start & 0xFFFFFFFF))
        body += opt(e, 3, struct.pack(e + "II", now >> 32, now & 0xFFFFFFFF))
        body += opt(e, 4, struct.pack(e + "Q", self.if_packets[k]))
        body += opt(e, 5, struct.pack(e + "Q", 0))
        body += opt(e, 0, b"")
        return block(e, BT_ISB, body)

    def unknown(self) -> bytes:
        return block(self.e, BT_UNKNOWN, b"zcap unknown block test" + b"\0" + self.rng.randbytes(8))

    # -- records

    def record(self, i: int, k: int, t: Template, caplen: int | None = None,
               block_len_delta: int = 0) -> bytes:
        """One record (pcap) or EPB (pcapng), optionally with a lying caplen or block length."""
        data = t.hdr + self.payload(t, i)
        ts = self.ts_of(i) // self.ts_res_ns
        e = self.e
        cl = t.caplen if caplen is None else caplen
        if self.pcapng:
            pad = (-len(data)) % 4
            total = 32 + len(data) + pad + block_len_delta
            rec = (struct.pack(e + "IIIIIII", BT_EPB, total, k, ts >> 32, ts & 0xFFFFFFFF, cl, t.origlen if caplen is None else cl)
                   + data + b"\0" * pad + struct.pack(e + "I", total))
        else:
            sec, sub = divmod(ts, 1_000_000_000 if self.a.nanos else 1_000_000)
            rec = struct.pack(e + "IIII", sec, sub, cl, t.origlen if caplen is None else cl) + data
        return rec

    def run_pcap(self, i: int, end: int, limit: int) -> int:
        """Fast path: packets i..end (or until `limit` bytes are out) into a pcap stream."""
        first = i
        out = self.out
        parts = out.parts
        row = self.tmpl[0]
        pack = struct.Struct(self.e + "IIII").pack
        start_ns, interval, jitter = self.start_ns, self.interval, self.jitter
        div = 1_000_000_000 if self.a.nanos else 1_000_000
        res = self.ts_res_ns
        text, text_offs = self.text, self.text_offs
        rand, rpos, rng = self.rand, self.rpos, self.rng
        written = out.written
        pending = out.pending
        flush_at = FLUSH_BYTES
        mal = self.a.malformed
        every = self.a.malformed_every
        while i < end and written < limit:
            t = row[i % CHOICE_TABLE]
            n = t.n
            sec, sub = divmod((start_ns + int(i * interval) + jitter[i % JITTER_TABLE]) // res, div)
            if mal and i % every == every - 1:
                m = i // every
                kind = MALFORMED_KINDS[m % len(MALFORMED_KINDS)] if mal == "mixed" else mal
                frame, wire = malformed_frame(kind, m, self.flows[m % len(self.flows)])
                parts.append(pack(sec, sub, len(frame), wire))
                parts.append(frame)
                size = 16 + len(frame)
                written += size
                pending += size
                i += 1
                continue
            parts.append(pack(sec, sub, t.caplen, t.origlen))
            parts.append(t.hdr)
            if n:
                if t.compressible:
                    o = text_offs[i % 10007]
                    parts.append(text[o: o + n])
                else:
                    if rpos + n > len(rand):
                        rand = rng.randbytes(RANDOM_REFILL)
                        rpos = 0
                    parts.append(rand[rpos: rpos + n])
                    rpos += n
            size = 16 + t.caplen
            written += size
            pending += size
            i += 1
            if pending >= flush_at:
                out.written, out.pending = written, pending
                out.flush()
                pending = 0
        out.written, out.pending = written, pending
        self.rand, self.rpos = rand, rpos
        self.packets += i - first
        return i

    def run_pcapng(self, i: int, end: int, limit: int, nifs: int) -> int:
        """Fast path: EPBs i..end round-robin over the first `nifs` interfaces."""
        first = i
        out = self.out
        parts = out.parts
        e = self.e
        rows = self.tmpl
        pack = struct.Struct(e + "IIIIIII").pack
        tails = {}  # caplen -> padding + trailing block length
        pack_total = struct.Struct(e + "I").pack
        start_ns, interval, jitter = self.start_ns, self.interval, self.jitter
        res = self.ts_res_ns
        text, text_offs = self.text, self.text_offs
        rand, rpos, rng = self.rand, self.rpos, self.rng
        written = out.written
        pending = out.pending
        flush_at = FLUSH_BYTES
        counts = self.if_packets
        while i < end and written < limit:
            k = i % nifs
            t = rows[k][i % CHOICE_TABLE]
            n = t.n
            cl = t.caplen
            total = 32 + cl + (-cl) % 4
            ts = (start_ns + int(i * interval) + jitter[i % JITTER_TABLE]) // res
            parts.append(pack(BT_EPB, total, k, ts >> 32, ts & 0xFFFFFFFF, cl, t.origlen))
            parts.append(t.hdr)
            if n:
                if t.compressible:
                    o = text_offs[i % 10007]
                    parts.append(text[o: o + n])
                else:
                    if rpos + n > len(rand):
                        rand = rng.randbytes(RANDOM_REFILL)
                        rpos = 0
                    parts.append(rand[rpos: rpos + n])
                    rpos += n
            tail = tails.get(cl)
            if tail is None:
                tail = tails[cl] = b"\0" * ((-cl) % 4) + pack_total(total)
            parts.append(tail)
            counts[k] += 1
            written += total
            pending += total
            i += 1
            if pending >= flush_at:
                out.written, out.pending = written, pending
                out.flush()
                pending = 0
        out.written, out.pending = written, pending
        self.rand, self.rpos = rand, rpos
        self.packets += i - first
        return i

    # -- the whole stream

    def report(self, kind: str, offset: int, good: int) -> None:
        print(f"gen-pcap: corrupt={kind} offset={offset} good_records={good}", file=sys.stderr)

    def generate(self) -> None:
        a = self.a
        out = self.out
        limit = a.bytes if a.bytes is not None else 1 << 62
        if a.count is not None:
            total = a.count
            est = a.count
        else:
            total = 1 << 62
            est = max(1, int((a.bytes - self.header_size()) / self.avg_record()))
        K = len(self.linktypes)

        corrupt = a.corrupt
        cpos = None
        if corrupt in ("huge-caplen", "bad-block-length"):
            cpos = a.corrupt_after if a.corrupt_after is not None else est // 2
        elif corrupt in ("truncated-record", "garbage-tail"):
            cpos = a.corrupt_after if a.corrupt_after is not None else est
        if cpos is not None and a.count is not None:
            cpos = min(cpos, a.count)

        # header
        if corrupt == "bad-magic":
            self.report(corrupt, 0, 0)
        if self.pcapng:
            out.put(self.shb(BAD_MAGIC if corrupt == "bad-magic" else BYTE_ORDER_MAGIC))
            out.put(self.idb(0))
        else:
            out.put(self.pcap_header(BAD_MAGIC if corrupt == "bad-magic" else None))

        # events at packet indices: (index, order, name)
        events = []
        late_at = None
        if self.pcapng and K > 1:
            late_at = (a.late_idb_after if a.late_idb_after is not None
                       else max(1, min(100, est // 4))) if a.late_idb else 0
            events.append((late_at, 0, "idbs"))
        if a.unknown_block:
            first = max(1, est // 3)
            idxs = list(range(min(first, max(est - 1, 0)), max(est, 1), a.unknown_every))
            for idx in idxs:
                events.append((idx, 1, "unknown"))
            events.append((idxs[0], 2, "isb0"))
        if cpos is not None:
            events.append((cpos, 3, "corrupt"))
        if a.second_section_endian:
            at = a.second_section_after if a.second_section_after is not None else est // 2
            events.append((at, -1, "section"))  # before late IDBs due at the same packet
        events.sort()

        nifs = 1 if late_at else K
        i = 0
        ended = False
        for idx, _, name in events + [(total, 9, "end")]:
            idx = min(idx, total)  # a late IDB planned past the last packet comes at the end
            if idx > i:
                if self.pcapng:
                    i = self.run_pcapng(i, idx, limit, nifs)
                else:
                    i = self.run_pcap(i, idx, limit)
            if out.written >= limit and name != "corrupt":
                continue  # --bytes reached: no more blocks, but the corruption is still written
            if name == "idbs":
                for k in range(1, K):
                    out.put(self.idb(k))
                nifs = K
            elif name == "section":
                # A new section in its own byte order: SHB, then the interfaces declared so
                # far (interface numbers and ISB counts start again in each section).
                self.e = "<" if a.second_section_endian == "little" else ">"
                out.put(self.shb())
                for k in range(nifs):
                    out.put(self.idb(k))
                self.if_packets = [0] * K
            elif name == "unknown":
                out.put(self.unknown())
            elif name == "isb0":
                out.put(self.isb(0, i))
            elif name == "corrupt":
                ended = self.corrupt(corrupt, i, nifs)
                if ended:
                    break
                i += 1  # the bad record took a packet slot (not counted as a packet)
        if self.pcapng and a.unknown_block and not ended:
            for k in range(K):
                out.put(self.isb(k, i))
        out.flush()
        if a.verbose:
            print(f"gen-pcap: {self.packets} packets, {out.written} bytes", file=sys.stderr)

    def corrupt(self, kind: str, i: int, nifs: int) -> bool:
        """Write the bad unit at packet slot i; True when the stream ends here."""
        out = self.out
        k = i % nifs if self.pcapng else 0
        t = self.tmpl[k][i % CHOICE_TABLE]
        offset = out.written
        good = self.packets
        if kind == "truncated-record":
            rec = self.record(i, k, t)
            hdr = 28 if self.pcapng else 16
            out.put(rec[: hdr + max(1, t.caplen // 2)])
            self.report(kind, offset, good)
            return True
        if kind == "huge-caplen":
            out.put(self.record(i, k, t, caplen=HUGE_CAPLEN))
            self.report(kind, offset, good)
            return False
        if kind == "bad-block-length":
            out.put(self.record(i, k, t, block_len_delta=2))
            self.report(kind, offset, good)
            return False
        if kind == "garbage-tail":
            e = self.e
            while True:
                g = self.rng.randbytes(self.rng.randrange(64, 257))
                if self.pcapng:
                    blen = struct.unpack(e + "I", g[4:8])[0]
                    bad = blen % 4 != 0 or blen < 12 or blen > len(g)
                else:
                    caplen = struct.unpack(e + "I", g[8:12])[0]
                    bad = caplen > MAXIMUM_SNAPLEN or 16 + caplen > len(g)
                if bad:
                    break
            out.put(g)
            self.report(kind, offset, good)
            return True
        raise AssertionError(kind)


# --------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gen-pcap.py",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Generate deterministic synthetic pcap/pcapng captures (Ethernet/IPv4 or IPv6/TCP+UDP).",
        epilog="""\
size classes (--mix), as Ethernet frames; other link types carry the same IPv4 packets:
  realistic  50% 60-100 bytes, 10% 576, 40% 1514      full  all 1514      small  60-100
link types: 1 Ethernet, 101 raw IP, 228 IPv4, 113 Linux SLL, 105 802.11 (data + LLC/SNAP);
  any other number gets arbitrary bytes.
corruptions (--corrupt), each reported on stderr as
  gen-pcap: corrupt=KIND offset=BYTE_OFFSET good_records=N
  bad-magic          unknown magic (pcap) / byte-order magic (pcapng); offset 0
  truncated-record   the stream ends half-way through a record (after --corrupt-after, default all)
  huge-caplen        a record header claiming caplen 300000 > 262144 in the middle; no data
                     follows it, the next good records do
  bad-block-length   pcapng only: an EPB whose length is not a multiple of 4, in the middle
  garbage-tail       random bytes (never a valid record) after the good records
examples:
  gen-pcap.py --count 2000 --rate 200 -o demo.pcap
  gen-pcap.py --bytes 1G --mix realistic -o /tmp/big.pcap
  gen-pcap.py --format pcapng --linktypes 1,101 --late-idb --unknown-block --count 500 -o x.pcapng
  gen-pcap.py --count 100 --corrupt truncated-record -o bad.pcap
  gen-pcap.py --format pcapng --count 100 --second-section-endian big -o mixed-endian.pcapng
  gen-pcap.py --count 3000 --l3 mixed --ipv6-ext --vlan 200,100 -o v6-qinq.pcap
  gen-pcap.py --count 24 --mix small --malformed mixed --malformed-every 2 -o malformed.pcap
""")
    g = p.add_argument_group("format")
    g.add_argument("--format", choices=("pcap", "pcapng"), default="pcap", help="file format (default pcap)")
    g.add_argument("--endian", choices=("little", "big"), default="little", help="byte order of headers (default little)")
    g.add_argument("--nanos", action="store_true",
                   help="nanosecond timestamps (pcap magic 0xa1b23c4d; pcapng if_tsresol=9)")
    g.add_argument("--linktype", type=int, default=LT_ETHERNET, metavar="N",
                   help="link type of the (first) interface (default 1, Ethernet)")
    g.add_argument("--snaplen", type=int, default=MAXIMUM_SNAPLEN, metavar="N",
                   help="truncate longer packets: caplen=N, origlen=real length (default 262144)")
    g = p.add_argument_group("amount and timing")
    m = g.add_mutually_exclusive_group()
    m.add_argument("--count", type=int, metavar="N", help="number of packets (default 1000)")
    m.add_argument("--bytes", type=parse_size, metavar="SIZE",
                   help="approximate output size instead of a count: 1G, 64M, 100k (binary units)")
    g.add_argument("--start", type=parse_epoch, default=parse_epoch("1764057600"), metavar="EPOCH_SECONDS",
                   help="timestamp of the first packet, float seconds (default 1764057600 = 2025-11-25T08:00:00Z)")
    g.add_argument("--rate", type=positive_float, default=1000.0, metavar="PPS",
                   help="packets per second; timestamps 1/PPS apart plus up to 20%% jitter, never out of order (default 1000)")
    g = p.add_argument_group("content")
    g.add_argument("--mix", choices=("realistic", "full", "small"), default="realistic", help="packet sizes (default realistic)")
    g.add_argument("--payload", choices=("compressible", "random", "mixed"), default="mixed",
                   help="payload bytes: text-like, random, or half the flows each (default mixed)")
    g.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    g.add_argument("--l3", choices=("ipv4", "ipv6", "mixed"), default="ipv4",
                   help="network layer: IPv4, IPv6 (fd00::a.b.c.d from the same addresses), or every second "
                        "connection IPv6 (default ipv4)")
    g.add_argument("--ipv6-ext", action="store_true",
                   help="every third IPv6 connection carries hop-by-hop and destination options headers")
    g.add_argument("--vlan", type=parse_vlans, metavar="ID[,ID]",
                   help="Ethernet only: an 802.1Q tag, or an 802.1ad outer and an 802.1Q inner tag, on every frame")
    g.add_argument("--malformed", choices=MALFORMED_KINDS + ("mixed",), metavar="KIND",
                   help="pcap over Ethernet only: replace every --malformed-every-th packet with one whose headers are "
                        "malformed: " + ", ".join(MALFORMED_KINDS) + " (valid, 10 tags), or mixed (each in turn)")
    g.add_argument("--malformed-every", type=int, default=4, metavar="N",
                   help="packets per malformed one (default 4)")
    g = p.add_argument_group("pcapng")
    g.add_argument("--pcapng-interfaces", type=int, metavar="K",
                   help="number of interfaces (IDBs); packets go round-robin over them (default: as many as --linktypes)")
    g.add_argument("--linktypes", type=parse_linktypes, metavar="LIST",
                   help="comma-separated link types of the interfaces, cycled if shorter than K (e.g. 1,101)")
    g.add_argument("--late-idb", action="store_true",
                   help="write the IDBs after the first one only after some packets on interface 0")
    g.add_argument("--late-idb-after", type=int, metavar="N", help="packets before the late IDBs (default count/4, at most 100)")
    g.add_argument("--unknown-block", action="store_true",
                   help="insert blocks of unknown type 0x00000BEE (first after a third of the packets, then every "
                        "--unknown-every), an ISB after the first one, and ISBs for all interfaces at the end")
    g.add_argument("--unknown-every", type=int, default=100000, metavar="N", help="packets between unknown blocks (default 100000)")
    g.add_argument("--second-section-endian", choices=("little", "big"), metavar="ENDIAN",
                   help="start a second section (an SHB, then the IDBs declared so far) whose blocks are all in this "
                        "byte order, little or big; the other order than --endian makes a mixed-endian file, which "
                        "Wireshark reads and libpcap 1.10 does not")
    g.add_argument("--second-section-after", type=int, metavar="N",
                   help="packets before the second section (default half of them)")
    g = p.add_argument_group("corruption")
    g.add_argument("--corrupt", choices=CORRUPT_KINDS, metavar="KIND", help="make a bad stream: " + ", ".join(CORRUPT_KINDS))
    g.add_argument("--corrupt-after", type=int, metavar="N",
                   help="good packet records before the bad one (default: half for huge-caplen/bad-block-length, all otherwise)")
    g = p.add_argument_group("output")
    g.add_argument("-o", "--output", default=None, metavar="FILE", help="output file, - for stdout (required when stdout is a terminal)")
    g.add_argument("-v", "--verbose", action="store_true", help="print what was written and how long it took to stderr")
    return p


def check(a: argparse.Namespace) -> None:
    if a.count is None and a.bytes is None:
        a.count = 1000
    if a.count is not None and a.count < 0:
        die("--count must be >= 0")
    if not 1 <= a.snaplen <= 0xFFFFFFFF:
        die("--snaplen must be at least 1")
    if a.format == "pcap":
        if a.pcapng_interfaces not in (None, 1) or (a.linktypes and len(a.linktypes) > 1):
            die("several interfaces need --format pcapng")
        if a.late_idb or a.unknown_block:
            die("--late-idb and --unknown-block need --format pcapng")
        if a.corrupt == "bad-block-length":
            die("--corrupt bad-block-length needs --format pcapng (pcap records have no block length)")
        if a.second_section_endian or a.second_section_after is not None:
            die("--second-section-endian needs --format pcapng (a pcap file has one header)")
    if a.second_section_after is not None and (a.second_section_after < 0 or not a.second_section_endian):
        die("--second-section-after needs --second-section-endian and must be >= 0")
    base = a.linktypes or [a.linktype]
    k = a.pcapng_interfaces if a.pcapng_interfaces is not None else len(base)
    if k < 1:
        die("--pcapng-interfaces must be >= 1")
    a.linktypes = [base[n % len(base)] for n in range(k)]
    if a.late_idb and k < 2:
        die("--late-idb needs at least two interfaces (--pcapng-interfaces 2 or --linktypes A,B)")
    if a.unknown_every < 1:
        die("--unknown-every must be >= 1")
    if a.corrupt_after is not None and a.corrupt_after < 0:
        die("--corrupt-after must be >= 0")
    if a.l3 != "ipv4" and LT_IPV4 in a.linktypes:
        die(f"--l3 {a.l3} cannot be carried by link type {LT_IPV4} (IPv4 only)")
    if a.vlan and a.linktypes != [LT_ETHERNET]:
        die("--vlan needs Ethernet (link type 1) on every interface")
    if a.malformed and (a.format != "pcap" or a.linktypes != [LT_ETHERNET]):
        die("--malformed needs --format pcap and link type 1 (Ethernet)")
    if a.malformed_every < 1:
        die("--malformed-every must be >= 1")


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    check(a)
    if a.output is None:
        if sys.stdout.isatty():
            die("refusing to write a capture to a terminal; use -o FILE or -o - with a pipe")
        a.output = "-"
    started = time.monotonic()
    if a.output == "-":
        f = sys.stdout.buffer
        Generator(a, f).generate()
        f.flush()
    else:
        with open(a.output, "wb") as f:
            Generator(a, f).generate()
    if a.verbose:
        print(f"gen-pcap: {time.monotonic() - started:.2f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BrokenPipeError:
        # A reader that stops early (head, tcpdump -c) is not an error of ours.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        sys.exit(0)
