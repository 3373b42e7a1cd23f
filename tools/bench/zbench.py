#!/usr/bin/env python3
"""zcap benchmark harness: zcap side by side with its peers, same input, same run.

Started by tools/bench/run. Standard library only. What it does, in order:

1. installs the peers it needs with apt-get (unless --no-install) and builds zcap --release
   (unless --zcap PATH is given);
2. generates two corpora with tools/gen-pcap.py: a realistic size mix with partly
   compressible payloads, and all-1514-byte frames with random payloads; splits each into 8
   parts for the 8-sender cases;
3. ingest: streams each corpus over loopback TCP (PCAP-over-IP) into every receiver -- socat
   to /dev/null and to a file (ceilings), zstd -1 reading the socket, tcpdump -r - -w with and
   without -C, dumpcap -i - with a -b filesize ring, zcap record --listen for each rx backend
   and compression, with 1 and 8 senders -- and runs zstd -1 -T1/-T2 and zcap record -r over
   the corpus file;
4. replay: zcap replay --topspeed against socat and a sendfile sender (and tcpreplay onto lo,
   for reference) into the same /dev/null receiver;
5. query (--query): builds an archive of generated traffic spanning hours and times
   zcap cat --from/--to of one minute against zstd -dc | editcap -A/-B, cold cache;
6. object storage (--s3): starts s3s-fs on 127.0.0.1 (root in the workdir; cargo install s3s-fs
   and pip install awscli if missing and allowed), uploads the query archive with zcap upload
   and with aws s3 cp --recursive (round robin, cold cache; wall, CPU, MB/s, the store's CPU),
   then cuts the query window out of the uploaded copy with zcap cat s3://… --stats (bytes
   fetched, range requests; output compared byte for byte with a local zcap cat) against
   aws s3 cp of the segments that overlap the window;
7. prints one markdown report (also written as results.md) and writes results.json.

Every child runs in its own process group and is killed when the harness exits; every wait
has a deadline; all traffic goes to 127.0.0.1.

Measurements per run: wall time from the sender's first connected byte to the receiver's
exit (file jobs: from spawn to exit), CPU seconds (user+sys from wait4 rusage, which includes
the receiver's threads and any children it waited for, e.g. both sides of a pipeline), peak
RSS (ru_maxrss: the largest single process), bytes on disk of the output (du), and for the
query benchmark bytes read from the block device (ru_inblock * 512) after evicting the
archive from the page cache; for the object-storage benchmark the s3s-fs process's CPU seconds
during each run (from /proc/PID/stat) and zcap cat's `bytes fetched` / `range requests`.
"""

from __future__ import annotations

import argparse
import atexit
import json
import mmap
import os
import platform
import re
import resource
import select
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
GEN = os.path.join(REPO, "tools", "gen-pcap.py")

MB = 1e6
GIB = 1 << 30
MIB = 1 << 20

# Peers the harness runs and the Debian packages that bring them.
TOOLS = {
    "socat": "socat",
    "tcpdump": "tcpdump",
    "dumpcap": "wireshark-common",
    "editcap": "wireshark-common",
    "mergecap": "wireshark-common",
    "tshark": "tshark",
    "zstd": "zstd",
    "tcpreplay": "tcpreplay",
    "/usr/bin/time": "time",
}
# Needed for every run; the others only disable their own cases.
REQUIRED = ("socat", "zstd")

START_EPOCH = 1764057600  # 2025-11-25T08:00:00Z, gen-pcap's default


def log(msg: str) -> None:
    print(f"zbench: {msg}", file=sys.stderr, flush=True)


def die(msg: str) -> None:
    log(f"error: {msg}")
    sys.exit(2)


def parse_size(text: str) -> int:
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]*)?)\s*([kmgt]?)(?:i?b)?\s*", text, re.I)
    if not m:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (try 1G, 64M, 512K)")
    mult = 1024 ** ("kmgt".index(m.group(2).lower()) + 1) if m.group(2) else 1
    return int(float(m.group(1)) * mult)


def human(n: float) -> str:
    for unit, div in (("GiB", GIB), ("MiB", MIB), ("KiB", 1024)):
        if n >= div:
            return f"{n / div:.2f} {unit}"
    return f"{int(n)} B"


# --------------------------------------------------------------------------------------
# Children: every process the harness starts is registered here and killed on exit.

CHILDREN: dict[int, subprocess.Popen] = {}


def spawn(argv, *, stdin=None, stdout=None, stderr=None, shell=False, env=None) -> subprocess.Popen:
    p = subprocess.Popen(
        argv,
        stdin=stdin if stdin is not None else subprocess.DEVNULL,
        stdout=stdout if stdout is not None else subprocess.DEVNULL,
        stderr=stderr if stderr is not None else subprocess.DEVNULL,
        shell=shell,
        start_new_session=True,  # its own process group: killpg reaches pipelines too
        env=env,
    )
    CHILDREN[p.pid] = p
    return p


TIME = "/usr/bin/time"


def measured(argv: list[str], rss_path: str) -> list[str]:
    """Wraps argv in GNU time for its peak RSS. ru_maxrss from our own wait4 would be wrong:
    a child forked (or vforked) from this Python process inherits its RSS high-water mark
    across exec, so every tool would look at least as big as the harness. GNU time is small,
    so the mark it passes on is too."""
    if not have(TIME):
        return argv
    rm(rss_path)
    return [TIME, "-f", "%M", "-o", rss_path, *argv]


def read_rss(rss_path: str, ru) -> tuple[int, bool]:
    """Peak RSS in KiB, and whether it is exact (from GNU time) or the inflated wait4 value."""
    try:
        with open(rss_path) as f:
            last = f.read().strip().splitlines()[-1]
        return int(last), True
    except (OSError, ValueError, IndexError):
        return ru.ru_maxrss, False


def kill_group(p: subprocess.Popen) -> None:
    if p.returncode is not None:
        return
    for sig, grace in ((signal.SIGTERM, 2.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(p.pid, sig)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            try:
                pid, status = os.waitpid(p.pid, os.WNOHANG)
            except ChildProcessError:
                p.returncode = -1
                return
            if pid:
                p.returncode = os.waitstatus_to_exitcode(status)
                return
            time.sleep(0.02)


def kill_all() -> None:
    for p in list(CHILDREN.values()):
        kill_group(p)
    CHILDREN.clear()


def _on_signal(signum, _frame):
    kill_all()
    log(f"stopped by signal {signum}")
    sys.exit(128 + signum)


class Timeout(Exception):
    pass


def exited(p: subprocess.Popen) -> bool:
    """True once the child has exited, without reaping it (its rusage stays collectable)."""
    try:
        return os.waitid(os.P_PID, p.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def wait_rusage(p: subprocess.Popen, timeout: float):
    """Waits for the child (bounded), reaps it with wait4. Returns (exit_time, rc, rusage)."""
    deadline = time.monotonic() + timeout
    try:
        fd = os.pidfd_open(p.pid)
    except (AttributeError, OSError):
        fd = None
    try:
        while not exited(p):
            left = deadline - time.monotonic()
            if left <= 0:
                kill_group(p)
                CHILDREN.pop(p.pid, None)
                raise Timeout(f"pid {p.pid} still running after {timeout:.0f} s; killed")
            if fd is not None:
                select.select([fd], [], [], min(left, 1.0))
            else:
                time.sleep(min(left, 0.005))
    finally:
        if fd is not None:
            os.close(fd)
    t = time.monotonic()
    _, status, ru = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    CHILDREN.pop(p.pid, None)
    return t, p.returncode, ru


# --------------------------------------------------------------------------------------
# Sockets and files.


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listening(port: int) -> bool:
    """Is something listening on 127.0.0.1:port (or 0.0.0.0)? Read from /proc so that the
    check does not itself open a connection the receiver would take for the stream."""
    want = f":{port:04X}"
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(path) as f:
                next(f, None)
                for line in f:
                    parts = line.split()
                    if len(parts) > 3 and parts[1].endswith(want) and parts[3] == "0A":
                        return True
        except OSError:
            pass
    return False


def wait_listening(port: int, p: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not listening(port):
        if exited(p):
            raise RuntimeError("receiver exited before listening")
        if time.monotonic() > deadline:
            raise Timeout(f"nothing listens on port {port} after {timeout:.0f} s")
        time.sleep(0.005)


def du(path: str) -> int:
    """Bytes allocated on disk under path (what du reports)."""
    total = 0
    if os.path.isfile(path):
        return os.stat(path).st_blocks * 512
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
            except OSError:
                pass
    return total


def apparent(path: str) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


def evict(paths) -> None:
    """Drops the files' pages from the page cache (clean pages only: sync first)."""
    os.sync()
    for path in paths:
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def rm(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        os.unlink(path)


def pcap_scan(path: str):
    """Record offsets of a little/big-endian pcap file: (count, [offsets], header bytes)."""
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size < 24:
            raise ValueError(f"{path}: shorter than a pcap file header")
        data = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
    try:
        return _scan(path, data)
    finally:
        data.close()


def _scan(path: str, data):
    magic = struct.unpack_from("<I", data, 0)[0]
    if magic in (0xA1B2C3D4, 0xA1B23C4D):
        fmt = "<I"
    elif magic in (0xD4C3B2A1, 0x4D3CB2A1):
        fmt = ">I"
    else:
        raise ValueError(f"{path}: not a pcap file (magic {magic:#x})")
    offs = []
    pos, n = 24, len(data)
    unpack = struct.Struct(fmt).unpack_from
    while pos + 16 <= n:
        offs.append(pos)
        pos += 16 + unpack(data, pos + 8)[0]
    if pos != n:
        raise ValueError(f"{path}: truncated record at byte {offs[-1] if offs else 24}")
    return len(offs), offs, bytes(data[:24])


def pcap_records(path: str) -> bytes:
    with open(path, "rb") as f:
        f.seek(24)
        return f.read()


# --------------------------------------------------------------------------------------
# The sender (a separate process: `zbench.py _send PORT FILE...`), one thread per file,
# each streaming its file with sendfile(2) over its own connection.


def cmd_send(argv) -> int:
    port = int(argv[0])
    files = argv[1:]
    out = [None] * len(files)
    errors = []

    def one(i: int, path: str) -> None:
        try:
            deadline = time.monotonic() + 20
            while True:
                s = socket.socket()
                try:
                    s.connect(("127.0.0.1", port))
                    break
                except ConnectionRefusedError:
                    s.close()
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.01)
            t0 = time.monotonic()
            sent = 0
            with open(path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                while sent < size:
                    n = os.sendfile(s.fileno(), f.fileno(), sent, min(size - sent, 1 << 30))
                    if n == 0:
                        break
                    sent += n
            s.shutdown(socket.SHUT_WR)
            t1 = time.monotonic()
            s.close()
            out[i] = (t0, t1, sent)
        except Exception as e:  # reported to the harness as one JSON line
            errors.append(f"{path}: {e}")

    threads = [threading.Thread(target=one, args=(i, f)) for i, f in enumerate(files)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    done = [o for o in out if o]
    print(json.dumps({
        "t0": min((o[0] for o in done), default=None),
        "t1": max((o[1] for o in done), default=None),
        "bytes": sum(o[2] for o in done),
        "errors": errors,
    }), flush=True)
    return 1 if errors else 0


# --------------------------------------------------------------------------------------
# Install and build.


def have(tool: str) -> bool:
    return os.path.exists(tool) if tool.startswith("/") else shutil.which(tool) is not None


def install_peers(args) -> None:
    missing = sorted({pkg for tool, pkg in TOOLS.items() if not have(tool)})
    if args.zcap is None and not have("cc"):
        missing += ["build-essential", "pkg-config"]
    if args.zcap is None and cargo_bin() is None and not have("curl"):
        missing += ["curl", "ca-certificates"]  # for rustup
    if not missing:
        return
    if os.geteuid() != 0 or not have("apt-get"):
        log(f"not root or no apt-get; cannot install {' '.join(missing)} (cases that need them are skipped)")
        return
    log(f"installing with apt-get: {' '.join(missing)}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    # wireshark-common asks whether non-root users may capture; answer for it.
    pre = subprocess.run(["debconf-set-selections"], input=b"wireshark-common wireshark-common/install-setuid boolean false\n",
                         env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if pre.returncode != 0:
        log("debconf-set-selections failed; continuing (the install is non-interactive anyway)")
    subprocess.run(["apt-get", "update", "-q"], env=env, check=True, stdout=sys.stderr)
    subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing],
                   env=env, check=True, stdout=sys.stderr)


def cargo_bin() -> str | None:
    c = shutil.which("cargo")
    if c:
        return c
    home = os.path.expanduser("~/.cargo/bin/cargo")
    return home if os.path.exists(home) else None


def build_zcap(args) -> str:
    if args.zcap:
        if not os.access(args.zcap, os.X_OK):
            die(f"--zcap {args.zcap}: not an executable")
        return os.path.abspath(args.zcap)
    cargo = cargo_bin()
    if cargo is None:
        if args.no_install or os.geteuid() != 0:
            die("cargo not found; install Rust (https://rustup.rs) or pass --zcap PATH")
        log("installing Rust with rustup (minimal profile)")
        subprocess.run("curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal",
                       shell=True, check=True, stdout=sys.stderr)
        cargo = cargo_bin()
        if cargo is None:
            die("rustup ran but cargo is still missing")
    log("building zcap --release")
    r = subprocess.run([cargo, "build", "--release", "--bin", "zcap"], cwd=REPO, stdout=sys.stderr)
    if r.returncode != 0:
        die("cargo build --release failed")
    target = os.environ.get("CARGO_TARGET_DIR") or os.path.join(REPO, "target")
    if not os.path.isabs(target):
        target = os.path.join(REPO, target)
    path = os.path.join(target, "release", "zcap")
    if not os.access(path, os.X_OK):
        die(f"built, but {path} is missing")
    return path


# --------------------------------------------------------------------------------------
# Corpora.


class Corpus:
    def __init__(self, name: str, title: str, path: str, packets: int, size: int, parts: list[str]):
        self.name, self.title, self.path = name, title, path
        self.packets, self.size, self.parts = packets, size, parts


CORPORA = {
    "realistic": ("realistic mix (60-100 / 576 / 1514 byte frames, partly compressible payloads)",
                  ["--mix", "realistic", "--payload", "mixed"]),
    "full": ("all 1514-byte frames, random payloads", ["--mix", "full", "--payload", "random"]),
}


def make_corpus(args, name: str) -> Corpus:
    title, gen_args = CORPORA[name]
    cdir = os.path.join(args.workdir, "corpus")
    os.makedirs(cdir, exist_ok=True)
    path = os.path.join(cdir, f"{name}-{args.size}.pcap")
    meta_path = path + ".json"
    meta = None
    if os.path.exists(meta_path) and os.path.exists(path):
        try:
            with open(meta_path) as f:
                meta = json.load(f)
            if meta.get("gen_args") != gen_args or not all(os.path.exists(p) for p in meta["parts"]):
                meta = None
        except (OSError, ValueError, KeyError):
            meta = None
    if meta is None:
        if not os.path.exists(GEN):
            die(f"{GEN} is missing (the capture generator)")
        log(f"generating the {name} corpus ({human(args.size)})")
        r = subprocess.run([sys.executable, GEN, "--format", "pcap", *gen_args, "--bytes", str(args.size),
                            "--seed", "1", "-o", path], stdout=sys.stderr)
        if r.returncode != 0:
            die(f"gen-pcap.py failed for the {name} corpus")
        count, offs, header = pcap_scan(path)
        size = os.path.getsize(path)
        parts = []
        # 8 parts of about equal size, cut at record boundaries, each a whole pcap stream.
        cuts = [24]
        for k in range(1, args.senders):
            want = 24 + (size - 24) * k // args.senders
            lo, hi = 0, len(offs)
            while lo < hi:
                mid = (lo + hi) // 2
                if offs[mid] < want:
                    lo = mid + 1
                else:
                    hi = mid
            cuts.append(offs[lo] if lo < len(offs) else size)
        cuts.append(size)
        with open(path, "rb") as src:
            for k in range(args.senders):
                ppath = f"{path[:-5]}.part{k + 1}.pcap"
                with open(ppath, "wb") as dst:
                    dst.write(header)
                    dst.flush()
                    off, left = cuts[k], cuts[k + 1] - cuts[k]
                    while left > 0:
                        n = os.copy_file_range(src.fileno(), dst.fileno(), left, off)
                        if n == 0:
                            break
                        off += n
                        left -= n
                parts.append(ppath)
        meta = {"gen_args": gen_args, "packets": count, "size": size, "parts": parts}
        with open(meta_path, "w") as f:
            json.dump(meta, f)
    return Corpus(name, title, path, meta["packets"], meta["size"], meta["parts"])


# --------------------------------------------------------------------------------------
# Cases.


class Case:
    """One thing to measure. kind: 'listen' (the receiver listens itself), 'stdin' (the
    harness accepts and hands the socket to the receiver as stdin), 'file' (no network)."""

    def __init__(self, cid, label, kind, argv, *, needs=(), senders=1, stdout_file=None,
                 zcap=False, peer=False, check=None, index=None):
        self.cid, self.label, self.kind, self.argv = cid, label, kind, argv
        self.needs, self.senders, self.stdout_file = needs, senders, stdout_file
        self.zcap, self.peer, self.check = zcap, peer, check
        # zcap cases of the index-cost pairs: True when every segment must have a flow-index
        # sidecar in the manifest, False when none may (--no-flow-index), None: not checked.
        self.index = index


def ingest_cases(args, zcap: str, seg_bytes: int) -> list[Case]:
    seg_mb = max(1, seg_bytes // 1_000_000)
    seg_kb = seg_mb * 1000
    cases = [
        Case("socat-null", "socat → /dev/null (ceiling)", "listen",
             ["socat", "-b", "131072", "-u", "TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr", "STDOUT"],
             needs=("socat",), stdout_file="/dev/null", peer=True),
        Case("socat-file", "socat → file (ceiling)", "listen",
             ["socat", "-b", "131072", "-u", "TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr", "STDOUT"],
             needs=("socat",), stdout_file="{out}/capture.pcap", peer=True, check="bytes"),
        Case("zstd-sock", "zstd -1 (socket → file)", "stdin",
             ["zstd", "-1", "-q", "-c"],
             needs=("zstd",), stdout_file="{out}/capture.pcap.zst", peer=True),
        Case("tcpdump", "tcpdump -r - -w", "stdin",
             ["tcpdump", "-Z", "root", "-r", "-", "-w", "{out}/capture.pcap"],
             needs=("tcpdump",), peer=True, check="bytes"),
        Case("tcpdump-C", f"tcpdump -r - -w -C {seg_mb}", "stdin",
             ["tcpdump", "-Z", "root", "-r", "-", "-w", "{out}/capture.pcap", "-C", str(seg_mb)],
             needs=("tcpdump",), peer=True, check="bytes"),
        Case("dumpcap", f"dumpcap -i - -b filesize:{seg_kb}", "stdin",
             ["dumpcap", "-q", "-i", "-", "-w", "{out}/capture.pcapng", "-b", f"filesize:{seg_kb}"],
             needs=("dumpcap",), peer=True, check="dumpcap"),
    ]
    for senders in (1, args.senders):
        # zcrx-emulated: the zcrx backend against the in-process emulation of the kernel's
        # half (no NIC here supports zcrx); issue 4 asks for it beside ring on the same stream.
        for rx in ("ring", "recv", "zcrx-emulated"):
            for comp in ("zstd:1", "none"):
                tag = "zstd1" if comp != "none" else "none"
                suffix = f"-x{senders}" if senders > 1 else ""
                cases.append(Case(
                    f"zcap-{rx}-{tag}{suffix}",
                    f"zcap --rx {rx} --compress {comp}" + (f", {senders} senders" if senders > 1 else ""),
                    "listen",
                    [zcap, "record", "--listen", "127.0.0.1:{port}", "--rx", rx, "--compress", comp,
                     "--max-streams", str(senders), "-C", f"{seg_mb}MB", "-o", "{out}/archive"],
                    senders=senders, zcap=True, check="zcap"))
    cases += [
        Case("zstd-T1", "zstd -1 -T1 FILE (compression ceiling)", "file",
             ["zstd", "-1", "-T1", "-q", "-c", "{corpus}"],
             needs=("zstd",), stdout_file="{out}/corpus.zst", peer=True),
        Case("zstd-T2", "zstd -1 -T2 FILE", "file",
             ["zstd", "-1", "-T2", "-q", "-c", "{corpus}"],
             needs=("zstd",), stdout_file="{out}/corpus.zst", peer=True),
        Case("dd-fsync", "dd bs=1M conv=fsync FILE → file", "file",
             ["dd", "if={corpus}", "of={out}/copy.pcap", "bs=1M", "conv=fsync", "status=none"],
             needs=("dd",), peer=True),
        Case("zcap-read-zstd1", "zcap record -r FILE --compress zstd:1", "file",
             [zcap, "record", "-r", "{corpus}", "--compress", "zstd:1", "-C", f"{seg_mb}MB", "-o", "{out}/archive"],
             zcap=True, check="zcap", index=True),
        # The writer's cost of the flow index (issue 16): the same record without it.
        Case("zcap-read-zstd1-noidx", "zcap record -r FILE --compress zstd:1 --no-flow-index", "file",
             [zcap, "record", "-r", "{corpus}", "--compress", "zstd:1", "--no-flow-index", "-C", f"{seg_mb}MB",
              "-o", "{out}/archive"],
             zcap=True, check="zcap", index=False),
    ]
    # The scaling of one stream with the compress pool: 0 is the single-thread writer
    # (compression on the writer thread), then 1 .. the cores here. With 0 every cost of the
    # writer thread is in the wall time, so the index's cost is paired there too.
    for n in range(0, (os.cpu_count() or 1) + 1):
        cases.append(Case(
            f"zcap-read-zstd1-t{n}", f"zcap record -r FILE zstd:1 --compress-threads {n}", "file",
            [zcap, "record", "-r", "{corpus}", "--compress", "zstd:1", "--compress-threads", str(n),
             "-C", f"{seg_mb}MB", "-o", "{out}/archive"],
            zcap=True, check="zcap", index=True if n == 0 else None))
        if n == 0:
            cases.append(Case(
                "zcap-read-zstd1-t0-noidx", "zcap record -r FILE zstd:1 --compress-threads 0 --no-flow-index",
                "file",
                [zcap, "record", "-r", "{corpus}", "--compress", "zstd:1", "--compress-threads", "0",
                 "--no-flow-index", "-C", f"{seg_mb}MB", "-o", "{out}/archive"],
                zcap=True, check="zcap", index=False))
    cases += [
        Case("zcap-read-none", "zcap record -r FILE --compress none", "file",
             [zcap, "record", "-r", "{corpus}", "--compress", "none", "-C", f"{seg_mb}MB", "-o", "{out}/archive"],
             zcap=True, check="zcap"),
    ]
    return cases


# The flow index's cost to the writer (issue 16: "ingest throughput with and without the index
# in the same run, ≤ 10% slower at zstd:1"): (with the index, --no-flow-index, what they run).
INDEX_PAIRS = [
    ("zcap-read-zstd1", "zcap-read-zstd1-noidx", "record -r FILE, zstd:1, default compress threads"),
    ("zcap-read-zstd1-t0", "zcap-read-zstd1-t0-noidx",
     "record -r FILE, zstd:1, --compress-threads 0 (everything on the writer thread)"),
]
# --index-cost runs these and nothing else; zstd -1 -T2 on the same file is the outside
# reference the file-ingest target is stated against.
INDEX_COST_ONLY = "^(" + "|".join(re.escape(c) for pair in INDEX_PAIRS for c in pair[:2]) + "|zstd-T2)$"
INDEX_TARGET = 0.90  # index ÷ no-index throughput, at least

# Peers in the ratio table, in column order.
RATIO_PEERS = ["socat-null", "socat-file", "zstd-sock", "tcpdump", "tcpdump-C", "dumpcap", "zstd-T1",
               "zstd-T2", "dd-fsync"]


def missing_result(reason: str, status: str = "missing") -> dict:
    return {"status": status, "reason": reason}


def zcap_missing(stderr_text: str) -> str | None:
    m = re.search(r"(\S[^\n]*not built yet[^\n]*)", stderr_text)
    return m.group(1).strip() if m else None


def tail(path: str, n: int = 400) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - n))
            return f.read().decode(errors="replace").strip()
    except OSError:
        return ""


def fmt_argv(argv, subst) -> list[str]:
    return [a.format(**subst) for a in argv]


def run_sender(port: int, files: list[str], errpath: str) -> subprocess.Popen:
    return spawn([sys.executable, os.path.abspath(__file__), "_send", str(port), *files],
                 stdout=subprocess.PIPE, stderr=open(errpath, "ab"))


def read_sender(p: subprocess.Popen, timeout: float) -> dict:
    try:
        out, _ = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(p)
        raise Timeout("sender did not finish")
    CHILDREN.pop(p.pid, None)
    try:
        return json.loads(out.decode().strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {"t0": None, "errors": ["sender printed nothing"]}


def check_output(case: Case, corpus: Corpus, out: str, errpath: str) -> str | None:
    """Returns None when the output holds every packet, else what is wrong."""
    if case.check == "bytes":
        files = sorted(os.listdir(out))
        got = apparent(out) - 24 * max(0, len(files) - 1)
        want = corpus.size
        return None if got == want else f"output has {got} record bytes, input {want}"
    if case.check == "dumpcap":
        m = re.search(r"Packets captured: (\d+)", tail(errpath, 4000))
        got = int(m.group(1)) if m else -1
        return None if got == corpus.packets else f"dumpcap captured {got} of {corpus.packets} packets"
    if case.check == "zcap":
        try:
            m = zcap_manifest(os.path.join(out, "archive"))
        except (OSError, ValueError) as e:
            return f"manifest: {e}"
        got = m["packets"]
        if got != corpus.packets:
            return f"archive holds {got} of {corpus.packets} packets"
        if case.index is True and m["sidecars"] != m["segments"]:
            return f"{m['sidecars']} flow-index sidecar(s) for {m['segments']} segment(s)"
        if case.index is False and m["sidecars"]:
            return f"--no-flow-index, yet {m['sidecars']} flow-index sidecar(s)"
    return None


def zcap_manifest(arch: str) -> dict:
    """What a zcap archive's manifest says it holds: packets, segments, flow-index sidecars
    (op "flows"), their bytes and rows."""
    m = {"packets": 0, "segments": 0, "sidecars": 0, "sidecar_bytes": 0, "flows": 0}
    with open(os.path.join(arch, "manifest.jsonl")) as f:
        for line in f:
            e = json.loads(line)
            if e.get("op") == "segment":
                m["packets"] += e.get("packets", 0)
                m["segments"] += 1
            elif e.get("op") == "flows":
                m["sidecars"] += 1
                m["sidecar_bytes"] += e.get("bytes", 0)
                m["flows"] += e.get("flows", 0)
    return m


def run_once(args, case: Case, corpus: Corpus, run_no: int) -> dict:
    out = os.path.join(args.workdir, "out", case.cid)
    rm(out)
    os.makedirs(out)
    errpath = os.path.join(args.workdir, "out", f"{case.cid}.stderr")
    rm(errpath)
    port = free_port()
    subst = {"port": port, "out": out, "corpus": corpus.path}
    rss_path = os.path.join(args.workdir, "out", f"{case.cid}.rss")
    argv = measured(fmt_argv(case.argv, subst), rss_path)
    stdout = open(case.stdout_file.format(**subst), "wb") if case.stdout_file else None
    err = open(errpath, "wb")
    files = corpus.parts if case.senders > 1 else [corpus.path]
    nbytes = sum(os.path.getsize(f) for f in files) if case.kind != "file" else corpus.size
    timeout = 120 + nbytes / MB  # at least 1 MB/s, or it is broken
    load = os.getloadavg()[0]
    os.sync()  # earlier runs' dirty pages must not be written back during this one
    recv = sender = None
    t0 = None
    try:
        if case.kind == "listen":
            recv = spawn(argv, stdout=stdout, stderr=err)
            wait_listening(port, recv, 30)
            sender = run_sender(port, files, errpath)
        elif case.kind == "stdin":
            with socket.socket() as ls:
                ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                ls.bind(("127.0.0.1", port))
                ls.listen(1)
                ls.settimeout(30)
                sender = run_sender(port, files, errpath)
                try:
                    conn, _ = ls.accept()
                except socket.timeout:
                    raise Timeout("the sender never connected")
                with conn:
                    conn.setblocking(True)
                    recv = spawn(argv, stdin=conn.fileno(), stdout=stdout, stderr=err)
        else:
            t0 = time.monotonic()
            recv = spawn(argv, stdout=stdout, stderr=err)
        t_exit, rc, ru = wait_rusage(recv, timeout)
        t_sync0 = time.monotonic()
        os.sync()
        sync_s = time.monotonic() - t_sync0
        if sender is not None:
            s = read_sender(sender, 60)
            if s.get("errors"):
                raise RuntimeError("sender: " + "; ".join(s["errors"]))
            t0 = s["t0"]
            nbytes = s["bytes"]
    except (Timeout, RuntimeError) as e:
        for p in (recv, sender):
            if p is not None:
                kill_group(p)
                CHILDREN.pop(p.pid, None)
        text = tail(errpath)
        missing = zcap_missing(text) if case.zcap else None
        if missing:
            return missing_result(missing)
        return {"status": "failed", "reason": f"{e}: {text[-300:]}"}
    finally:
        if stdout:
            stdout.close()
        err.close()
    text = tail(errpath)
    if rc != 0:
        missing = zcap_missing(text) if case.zcap else None
        rm(out)
        if missing:
            return missing_result(missing)
        return {"status": "failed", "reason": f"exit status {rc}: {text[-300:]}"}
    problem = check_output(case, corpus, out, errpath)
    wall = t_exit - t0
    cpu = ru.ru_utime + ru.ru_stime
    rss, rss_exact = read_rss(rss_path, ru)
    index = {}
    if case.index is not None:
        try:
            m = zcap_manifest(os.path.join(out, "archive"))
            index = {"segments": m["segments"], "sidecars": m["sidecars"], "sidecar_bytes": m["sidecar_bytes"],
                     "flows": m["flows"]}
        except (OSError, ValueError):
            pass
    res = {
        "status": "ok" if problem is None else "wrong",
        "reason": problem,
        "run": run_no,
        "wall_s": wall,
        "sync_s": sync_s,
        "bytes": nbytes,
        "packets": corpus.packets,
        "mb_s": nbytes / MB / wall,
        "mb_s_durable": nbytes / MB / (wall + sync_s),
        "pkt_s": corpus.packets / wall,
        "user_s": ru.ru_utime,
        "sys_s": ru.ru_stime,
        "cpu_s": cpu,
        "cpu_s_per_gb": cpu / (nbytes / 1e9),
        "maxrss_kib": rss,
        "maxrss_exact": rss_exact,
        "written_bytes": du(out),
        "loadavg_1m_before": load,
        # zcap's own summary line (packets, stored ratio, the MB/s it measured itself).
        "summary_line": text.splitlines()[-1] if case.zcap and text else None,
        **index,
    }
    rm(out)
    return res


# --------------------------------------------------------------------------------------
# Statistics and the report.

SUMMARY_FIELDS = ["mb_s", "mb_s_durable", "pkt_s", "wall_s", "cpu_s", "cpu_s_per_gb", "maxrss_kib",
                  "written_bytes", "read_bytes", "out_bytes"]


def summarize(runs: list[dict]) -> dict:
    ok = [r for r in runs if r.get("status") in ("ok", "wrong")]
    s = {"runs": len(ok)}
    bad = [r for r in runs if r.get("status") not in ("ok",)]
    if bad:
        s["status"] = bad[0]["status"]
        s["reason"] = bad[0].get("reason")
    else:
        s["status"] = "ok"
    for k in SUMMARY_FIELDS:
        vals = [r[k] for r in ok if r.get(k) is not None]
        if vals:
            s[k] = {"min": min(vals), "median": statistics.median(vals), "max": max(vals)}
    return s


def med(s: dict, k: str):
    v = s.get(k)
    return v["median"] if v else None


def f3(x: float) -> str:
    if x is None:
        return "–"
    if x >= 100:
        return f"{x:,.0f}"
    if x >= 10:
        return f"{x:.1f}"
    if x >= 1:
        return f"{x:.2f}"
    return f"{x:.3f}"


def spread(s: dict, k: str, scale: float = 1.0) -> str:
    v = s.get(k)
    if not v:
        return "–"
    lo, m, hi = v["min"] / scale, v["median"] / scale, v["max"] / scale
    if s.get("runs", 0) <= 1 or f3(lo) == f3(hi):
        return f3(m)
    return f"{f3(m)} ({f3(lo)}–{f3(hi)})"


def status_cell(s: dict) -> str | None:
    if s["status"] == "ok":
        return None
    reason = (s.get("reason") or "").replace("|", "/").replace("\n", " ")
    return f"{s['status']}: {reason[:120]}"


def md_cell(text: str) -> str:
    return text.replace("|", "\\|")


def ingest_table(cases: list[Case], summ: dict) -> list[str]:
    lines = [
        "| case | MB/s | MB/s incl. sync | packets/s | CPU s | CPU s/GB | peak RSS MiB | on disk MB | ÷ socat→file |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    base = med(summ.get("socat-file", {}), "mb_s")
    for c in cases:
        s = summ.get(c.cid)
        if s is None:
            continue
        bad = status_cell(s)
        if bad and not s.get("mb_s"):
            lines.append(f"| {md_cell(c.label)} | {bad} |  |  |  |  |  |  |  |")
            continue
        m = med(s, "mb_s")
        ratio = f"{m / base:.2f}×" if base and m else "–"
        label = md_cell(c.label + (f" ⚠ {bad}" if bad else ""))
        lines.append(
            f"| {label} | {spread(s, 'mb_s')} | {f3(med(s, 'mb_s_durable'))} | {f3(med(s, 'pkt_s'))} | "
            f"{spread(s, 'cpu_s')} | {f3(med(s, 'cpu_s_per_gb'))} | {spread(s, 'maxrss_kib', 1024)} | "
            f"{f3(med(s, 'written_bytes') / MB) if med(s, 'written_bytes') is not None else '–'} | {ratio} |")
    return lines


def index_cost(cases: dict) -> list[dict]:
    """Per INDEX_PAIRS pair whose both cases ran: the medians, the ratio of the medians, and
    the ratio within each round (run i of both; the round robin measures them seconds apart),
    of throughput and of CPU seconds; what the sidecars add."""
    out = []
    for idx, noidx, what in INDEX_PAIRS:
        a, b = cases.get(idx), cases.get(noidx)
        if not a or not b or a["summary"]["status"] != "ok" or b["summary"]["status"] != "ok":
            continue
        sa, sb = a["summary"], b["summary"]
        by_run = {r["run"]: r for r in b["runs"] if r.get("status") == "ok"}
        pairs = [(r, by_run[r["run"]]) for r in a["runs"] if r.get("status") == "ok" and r["run"] in by_run]
        per_round = [x["mb_s"] / y["mb_s"] for x, y in pairs]
        cpu_round = [x["cpu_s"] / y["cpu_s"] for x, y in pairs if y["cpu_s"] > 0]
        runs_a = [r for r in a["runs"] if r.get("status") == "ok"]

        def mm(vals):
            return {"min": min(vals), "median": statistics.median(vals), "max": max(vals)} if vals else None

        out.append({
            "what": what, "index": idx, "no_index": noidx,
            "mb_s": med(sa, "mb_s"), "mb_s_no_index": med(sb, "mb_s"),
            "ratio_of_medians": med(sa, "mb_s") / med(sb, "mb_s"),
            "ratio_per_round": mm(per_round),
            "cpu_s_per_gb": med(sa, "cpu_s_per_gb"), "cpu_s_per_gb_no_index": med(sb, "cpu_s_per_gb"),
            "cpu_ratio_per_round": mm(cpu_round),
            "sidecar_bytes": statistics.median([r.get("sidecar_bytes", 0) for r in runs_a]) if runs_a else None,
            "sidecars": runs_a[0].get("sidecars") if runs_a else None,
            "flows": runs_a[0].get("flows") if runs_a else None,
            "stored_bytes": med(sa, "written_bytes"), "stored_bytes_no_index": med(sb, "written_bytes"),
            "rounds": len(pairs),
        })
    return out


def index_cost_table(cases: dict) -> list[str]:
    rows = index_cost(cases)
    if not rows:
        return []

    def mm(v, fmt="{:.3f}"):
        if not v:
            return "–"
        m, lo, hi = (fmt.format(v[k]) for k in ("median", "min", "max"))
        return m if lo == hi else f"{m} ({lo}–{hi})"

    sa = {r["index"]: cases[r["index"]]["summary"] for r in rows}
    sb = {r["no_index"]: cases[r["no_index"]]["summary"] for r in rows}
    lines = ["| writer | with index MB/s | --no-flow-index MB/s | index ÷ no-index, medians | per round | "
             "CPU s/GB with / without | CPU s ratio per round | sidecars: files, flows, MB | target ≥ "
             f"{INDEX_TARGET:.2f}× |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for r in rows:
        met = "yes" if r["ratio_of_medians"] >= INDEX_TARGET else f"**no** ({(1 - r['ratio_of_medians']) * 100:.1f}% slower)"
        side = (f"{r['sidecars']}, {r['flows']:,}, {r['sidecar_bytes'] / MB:.2f}"
                if r.get("sidecars") is not None and r.get("sidecar_bytes") is not None else "–")
        lines.append(
            f"| {md_cell(r['what'])} | {spread(sa[r['index']], 'mb_s')} | {spread(sb[r['no_index']], 'mb_s')} | "
            f"{r['ratio_of_medians']:.3f}× | {mm(r['ratio_per_round'])} | "
            f"{f3(r['cpu_s_per_gb'])} / {f3(r['cpu_s_per_gb_no_index'])} | {mm(r['cpu_ratio_per_round'])} | "
            f"{side} | {met} |")
    return lines


def ratio_table(cases: list[Case], summ: dict) -> list[str]:
    peers = [p for p in RATIO_PEERS if med(summ.get(p, {}), "mb_s")]
    zc = [c for c in cases if c.zcap and med(summ.get(c.cid, {}), "mb_s")]
    if not peers or not zc:
        return []
    labels = {c.cid: c.label for c in cases}
    lines = ["| zcap case | " + " | ".join(md_cell(labels[p]) for p in peers) + " |",
             "| --- |" + " ---: |" * len(peers)]
    for c in zc:
        m = med(summ[c.cid], "mb_s")
        cells = [f"{m / med(summ[p], 'mb_s'):.2f}×" for p in peers]
        lines.append(f"| {md_cell(c.label)} | " + " | ".join(cells) + " |")
    return lines


def machine_info(args, zcap: str | None) -> dict:
    info = {"nproc": os.cpu_count(), "kernel": platform.release(), "python": platform.python_version()}
    try:
        info["affinity_cpus"] = len(os.sched_getaffinity(0))
    except OSError:
        pass
    try:
        with open("/proc/cpuinfo") as f:
            m = re.search(r"^model name\s*:\s*(.+)$", f.read(), re.M)
            info["cpu"] = m.group(1).strip() if m else platform.machine()
    except OSError:
        pass
    try:
        with open("/proc/meminfo") as f:
            m = re.search(r"^MemTotal:\s*(\d+) kB", f.read(), re.M)
            info["memory"] = human(int(m.group(1)) * 1024) if m else None
    except OSError:
        pass
    try:
        st = os.stat(args.workdir)
        dev = f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}"
        # The mount the workdir is on: of the mounts of its device, the longest prefix of it
        # (not the last listed: bind mounts such as /run/netns/* share the device).
        best = ""
        with open("/proc/self/mountinfo") as f:
            for line in f:
                parts = line.split()
                mnt = parts[4]
                if parts[2] == dev and len(mnt) >= len(best) and \
                        (args.workdir == mnt or args.workdir.startswith(mnt.rstrip("/") + "/")):
                    sep = parts.index("-")
                    info["disk"] = f"{parts[sep + 2]} ({parts[sep + 1]}) at {mnt}"
                    best = mnt
        name = os.path.basename(os.path.realpath(f"/sys/dev/block/{dev}"))
        base = re.sub(r"\d+$", "", name) if not os.path.exists(f"/sys/block/{name}") else name
        rot = f"/sys/block/{base}/queue/rotational"
        if os.path.exists(rot):
            with open(rot) as f:
                info["disk"] = info.get("disk", name) + (", virtio-blk" if name.startswith("vd") else "") + (", rotational" if f.read().strip() == "1" else ", non-rotational")
        ra = f"/sys/block/{base}/queue/read_ahead_kb"
        if os.path.exists(ra):
            with open(ra) as f:
                info["disk"] += f", read_ahead_kb {f.read().strip()}"
        model = f"/sys/block/{base}/device/model"
        if os.path.exists(model):
            with open(model) as f:
                info["disk"] += f", {f.read().strip()}"
        tot = shutil.disk_usage(args.workdir)
        info["disk"] += f", {human(tot.total)}"
    except (OSError, ValueError, IndexError):
        pass
    info["loadavg_start"] = list(os.getloadavg())
    versions = {}
    probes = {
        "zcap": ([zcap, "--version"] if zcap else None),
        "tcpdump": ["tcpdump", "--version"],
        "dumpcap": ["dumpcap", "-v"],
        "socat": ["socat", "-V"],
        "zstd": ["zstd", "-V"],
        "tcpreplay": ["tcpreplay", "-V"],
    }
    for name, argv in probes.items():
        if not argv or not have(argv[0]):
            continue
        try:
            r = subprocess.run(argv, capture_output=True, timeout=10)
            text = (r.stdout + r.stderr).decode(errors="replace")
            m = re.search(r"\bv?(\d+\.\d+(?:\.\d+)*)", text)
            if m:
                versions[name] = m.group(1) + (" (debug build)" if "(debug)" in text else "")
        except (OSError, subprocess.TimeoutExpired):
            pass
    info["versions"] = versions
    try:
        r = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"], capture_output=True, timeout=10)
        info["git"] = r.stdout.decode().strip()
        r = subprocess.run(["git", "-C", REPO, "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, timeout=10)
        if r.stdout.strip():
            info["git"] += " (with uncommitted changes)"
    except (OSError, subprocess.TimeoutExpired):
        pass
    return info


# --------------------------------------------------------------------------------------
# Replay benchmark.


def run_replay(args, zcap: str, corpus: Corpus, archive: str | None) -> tuple[list[dict], dict]:
    senders = [
        ("sendfile", "sendfile(2) sender (timed from its first byte)", None),
        ("socat", "socat -b 131072 -u FILE TCP:…", ["socat", "-b", "131072", "-u", corpus.path, "TCP:127.0.0.1:{port}"]),
        ("zcap-file", "zcap replay FILE --topspeed", [zcap, "replay", corpus.path, "--to", "127.0.0.1:{port}", "--topspeed"]),
    ]
    if archive:
        senders.append(("zcap-archive", "zcap replay ARCHIVE --topspeed (zstd:1)",
                        [zcap, "replay", archive, "--to", "127.0.0.1:{port}", "--topspeed"]))
    results = {}
    meta = []
    for sid, label, argv in senders:
        meta.append({"id": sid, "label": label})
        runs = []
        for i in range(args.runs):
            runs.append(replay_once(args, sid, argv, corpus, i + 1))
            note_run(f"replay {sid}", i, args.runs, runs[-1])
            if runs[-1]["status"] == "missing":
                break
        results[sid] = runs
    # tcpreplay injects the capture's frames onto an interface; there is no PCAP-over-IP
    # stream to receive, so it is timed alone, for reference.
    meta.append({"id": "tcpreplay", "label": "tcpreplay -i lo --topspeed (frames onto lo; no stream)"})
    runs = []
    if not have("tcpreplay"):
        runs.append(missing_result("tcpreplay not installed", "unavailable"))
    elif os.geteuid() != 0:
        runs.append(missing_result("tcpreplay needs root (a raw socket on lo)", "unavailable"))
    else:
        for i in range(args.runs):
            errpath = os.path.join(args.workdir, "out", "tcpreplay.stderr")
            rss_path = errpath + ".rss"
            with open(errpath, "wb") as err:
                t0 = time.monotonic()
                p = spawn(measured(["tcpreplay", "-q", "-i", "lo", "--topspeed", corpus.path], rss_path),
                          stderr=err, stdout=err)
                try:
                    t1, rc, ru = wait_rusage(p, 120 + corpus.size / MB)
                except Timeout as e:
                    runs.append({"status": "failed", "reason": str(e)})
                    break
            if rc != 0:
                runs.append({"status": "failed", "reason": tail(errpath)})
                break
            runs.append(replay_result(corpus, t1 - t0, ru, read_rss(rss_path, ru)[0], corpus.size, i + 1))
            note_run("replay tcpreplay", i, args.runs, runs[-1])
    results["tcpreplay"] = runs
    return meta, results


def replay_result(corpus: Corpus, wall: float, ru, rss: int, nbytes: int, run_no: int) -> dict:
    cpu = ru.ru_utime + ru.ru_stime
    return {"status": "ok", "run": run_no, "wall_s": wall, "bytes": nbytes, "mb_s": nbytes / MB / wall,
            "pkt_s": corpus.packets / wall, "cpu_s": cpu, "cpu_s_per_gb": cpu / (nbytes / 1e9),
            "maxrss_kib": rss}


def replay_once(args, sid, argv, corpus: Corpus, run_no: int) -> dict:
    port = free_port()
    os.makedirs(os.path.join(args.workdir, "out"), exist_ok=True)
    errpath = os.path.join(args.workdir, "out", f"replay-{sid}.stderr")
    rm(errpath)
    recv_err = open(errpath + ".recv", "wb")
    err = open(errpath, "wb")
    timeout = 120 + corpus.size / MB
    recv = sender = None
    rss_path = errpath + ".rss"
    try:
        with open(os.devnull, "wb") as null:
            recv = spawn(["socat", "-b", "131072", "-u", f"TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr", "STDOUT"],
                         stdout=null, stderr=recv_err)
        wait_listening(port, recv, 30)
        if argv is None:
            argv = [sys.executable, os.path.abspath(__file__), "_send", "{port}", corpus.path]
        t0 = time.monotonic()
        sender = spawn(measured([a.format(port=port) for a in argv], rss_path), stderr=err,
                       stdout=subprocess.PIPE if sid == "sendfile" else None)
        ts, src, sru = wait_rusage(sender, timeout)
        if sid == "sendfile" and src == 0:
            # The Python sender's start-up is not sending; time it from its first byte.
            try:
                t0 = json.loads(sender.stdout.read().decode().strip().splitlines()[-1])["t0"] or t0
            except (ValueError, IndexError, KeyError):
                pass
        if src != 0:
            kill_group(recv)
            CHILDREN.pop(recv.pid, None)
            text = tail(errpath)
            missing = zcap_missing(text) if sid.startswith("zcap") else None
            if missing:
                return missing_result(missing)
            return {"status": "failed", "reason": f"exit status {src}: {text[-300:]}"}
        tr, rrc, _ = wait_rusage(recv, 60)
    except (Timeout, RuntimeError) as e:
        for p in (recv, sender):
            if p is not None:
                kill_group(p)
                CHILDREN.pop(p.pid, None)
        return {"status": "failed", "reason": f"{e}: {tail(errpath)[-300:]}"}
    finally:
        err.close()
        recv_err.close()
    if rrc != 0:
        return {"status": "failed", "reason": f"receiver exit status {rrc}: {tail(errpath + '.recv')[-300:]}"}
    return replay_result(corpus, max(ts, tr) - t0, sru, read_rss(rss_path, sru)[0], corpus.size, run_no)


def replay_table(meta, results) -> list[str]:
    lines = ["| sender | MB/s | packets/s | sender CPU s | sender CPU s/GB | sender peak RSS MiB |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for m in meta:
        s = summarize(results.get(m["id"], []))
        bad = status_cell(s)
        if bad and not s.get("mb_s"):
            lines.append(f"| {md_cell(m['label'])} | {bad} |  |  |  |  |")
            continue
        lines.append(f"| {md_cell(m['label'])} | {spread(s, 'mb_s')} | {f3(med(s, 'pkt_s'))} | {spread(s, 'cpu_s')} | "
                     f"{f3(med(s, 'cpu_s_per_gb'))} | {spread(s, 'maxrss_kib', 1024)} |")
    return lines


# --------------------------------------------------------------------------------------
# Query benchmark.


def build_query_archive(args, zcap: str) -> tuple[str, dict]:
    qdir = os.path.join(args.workdir, "query")
    arch = os.path.join(qdir, f"archive-{args.query_size}")
    meta_path = arch + ".json"
    avg_record = 705  # gen-pcap's realistic mix: about 689 bytes a frame plus the 16-byte header
    packets = max(1, args.query_size // avg_record)
    rate = packets / args.query_span
    if os.path.exists(meta_path) and os.path.isdir(arch):
        with open(meta_path) as f:
            meta = json.load(f)
        if meta.get("rate") == rate:
            log(f"reusing the query archive {arch}")
            return arch, meta
    rm(arch)
    os.makedirs(qdir, exist_ok=True)
    log(f"building the query archive: {human(args.query_size)} of generated traffic at {rate:.0f} packets/s "
        f"({args.query_span / 3600:.1f} h), zstd:1")
    seg = "256MiB" if args.query_size >= 4 * GIB else f"{max(1, args.query_size // 16 // MIB)}MiB"
    pipeline = (f"{sys.executable} {GEN} --format pcap --mix realistic --payload mixed --seed 2 "
                f"--bytes {args.query_size} --rate {rate:.6f} --start {START_EPOCH} -o - | "
                f"{zcap} record -r - --stream-name query -C {seg} --compress zstd:1 -o {arch}")
    errpath = os.path.join(qdir, "build.stderr")
    with open(errpath, "wb") as err:
        p = spawn(["sh", "-c", "set -e; " + pipeline], stderr=err)
        _, rc, _ = wait_rusage(p, 300 + args.query_size / MB)
    if rc != 0:
        die(f"building the query archive failed: {tail(errpath)}")
    segs = []
    with open(os.path.join(arch, "manifest.jsonl")) as f:
        for line in f:
            e = json.loads(line)
            if e.get("op") == "segment":
                segs.append({"path": e["path"], "first_ns": e["first_ns"], "last_ns": e["last_ns"],
                             "bytes": e["bytes"], "raw": e["raw"], "packets": e["packets"]})
    meta = {"rate": rate, "segments": segs, "raw": sum(s["raw"] for s in segs),
            "stored": sum(s["bytes"] for s in segs), "packets": sum(s["packets"] for s in segs),
            "first_ns": min(s["first_ns"] for s in segs), "last_ns": max(s["last_ns"] for s in segs)}
    with open(meta_path, "w") as f:
        json.dump(meta, f)
    return arch, meta


def stock_script(segs: list[str], a: int, b: int, out: str, tmp: str) -> str:
    """The cheapest stock way to cut a time window out of zstd-compressed pcap segments:
    zstd -dc each into editcap -A/-B (tcpdump's filters cannot test time), then mergecap -a
    to concatenate when more than one segment was involved."""
    q = lambda s: "'" + s.replace("'", "'\\''") + "'"
    if len(segs) == 1:
        return f"set -e; zstd -dcq {q(segs[0])} | editcap -A {a} -B {b} -F pcap - {q(out)}"
    lines = ["set -e", f"mkdir -p {q(tmp)}"]
    for i, s in enumerate(segs):
        lines.append(f"zstd -dcq {q(s)} | editcap -A {a} -B {b} -F pcap - {q(tmp)}/part{i:06d}.pcap")
    lines.append(f"mergecap -a -F pcap -w {q(out)} {q(tmp)}/part*.pcap")
    return "; ".join(lines)


def query_window(args, meta: dict) -> tuple[int, int, list[dict]]:
    """The window the query benchmarks cut out: --query-window seconds from the middle of the
    archive's span (whole seconds), and the segments (manifest entries) whose
    [first_ns, last_ns] overlaps it."""
    span_s = (meta["last_ns"] - meta["first_ns"]) / 1e9
    a = int(meta["first_ns"] / 1e9 + span_s / 2)
    b = a + args.query_window
    a_ns, b_ns = a * 10**9, b * 10**9
    return a, b, [s for s in meta["segments"] if s["first_ns"] <= b_ns and s["last_ns"] >= a_ns]


def run_query(args, zcap: str) -> dict:
    arch, meta = build_query_archive(args, zcap)
    span_s = (meta["last_ns"] - meta["first_ns"]) / 1e9
    a, b, overlap = query_window(args, meta)
    all_segs = [os.path.join(arch, s["path"]) for s in meta["segments"]]
    hit = [os.path.join(arch, s["path"]) for s in overlap]
    qout = os.path.join(args.workdir, "query", "out")
    methods = [
        ("zcap-cat", f"zcap cat ARCH --from {a} --to {b}", None),
        ("stock-hit", f"zstd -dc SEG | editcap -A -B [| mergecap -a], the {len(hit)} segment(s) overlapping the window",
         hit),
        ("stock-all", f"the same over all {len(all_segs)} segments (no index to pick them)", all_segs),
    ]
    results = {}
    outputs = {}
    for mid, _label, segs in methods:
        runs = []
        absent = [t for t in ("zstd", "editcap") + (("mergecap",) if len(segs) > 1 else ()) if not have(t)] \
            if segs is not None else []
        if absent:
            results[mid] = [missing_result(f"{', '.join(absent)} not installed", "unavailable")]
            continue
        for i in range(args.runs):
            rm(qout)
            os.makedirs(qout)
            out = os.path.join(qout, "window.pcap")
            errpath = os.path.join(args.workdir, "query", f"{mid}.stderr")
            rss_path = errpath + ".rss"
            evict([os.path.join(r, f) for r, _d, fs in os.walk(arch) for f in fs])
            with open(errpath, "wb") as err:
                if segs is None:
                    argv = [zcap, "cat", arch, "--from", str(a), "--to", str(b)]
                    stdout = open(out, "wb")
                else:
                    argv = ["sh", "-c", stock_script(segs, a, b, out, os.path.join(qout, "parts"))]
                    stdout = None
                t0 = time.monotonic()
                p = spawn(measured(argv, rss_path), stdout=stdout, stderr=err)
                try:
                    t1, rc, ru = wait_rusage(p, 300 + meta["raw"] / MB / 20)
                except Timeout as e:
                    runs.append({"status": "failed", "reason": str(e)})
                    break
                finally:
                    if stdout:
                        stdout.close()
            if rc != 0:
                text = tail(errpath)
                miss = zcap_missing(text) if mid == "zcap-cat" else None
                runs.append(missing_result(miss) if miss else {"status": "failed", "reason": f"exit {rc}: {text[-300:]}"})
                break
            try:
                count = pcap_scan(out)[0]
            except (ValueError, OSError, struct.error) as e:
                runs.append({"status": "wrong", "reason": f"output: {e}"})
                break
            runs.append({"status": "ok", "run": i + 1, "wall_s": t1 - t0, "cpu_s": ru.ru_utime + ru.ru_stime,
                         "read_bytes": ru.ru_inblock * 512, "maxrss_kib": read_rss(rss_path, ru)[0],
                         "out_bytes": os.path.getsize(out), "packets": count})
            note_run(f"query {mid}", i, args.runs, runs[-1])
            if i == 0:
                keep = os.path.join(args.workdir, "query", f"{mid}.pcap")
                os.replace(out, keep)
                outputs[mid] = keep
        results[mid] = runs
    rm(qout)
    # The methods must agree on the records (headers may differ: mergecap rewrites them).
    agree = {}
    if "zcap-cat" in outputs:
        ref = pcap_records(outputs["zcap-cat"])
        for mid, path in outputs.items():
            if mid != "zcap-cat":
                agree[mid] = pcap_records(path) == ref
    for path in outputs.values():
        rm(path)
    return {"archive": {"path": arch, "raw_bytes": meta["raw"], "stored_bytes": meta["stored"],
                        "packets": meta["packets"], "segments": len(all_segs), "span_s": span_s,
                        "window": [a, b], "segments_hit": len(hit)},
            "methods": [{"id": m[0], "label": m[1]} for m in methods],
            "runs": results, "same_records_as_zcap_cat": agree}


def query_table(q: dict) -> list[str]:
    lines = ["| method | wall s | CPU s | read from disk MB | peak RSS MiB | output MB | packets | same records as zcap cat |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for m in q["methods"]:
        s = summarize(q["runs"].get(m["id"], []))
        bad = status_cell(s)
        if bad and not s.get("wall_s"):
            lines.append(f"| {md_cell(m['label'])} | {bad} |  |  |  |  |  |  |")
            continue
        runs = [r for r in q["runs"][m["id"]] if r.get("status") == "ok"]
        pk = runs[0]["packets"] if runs else "–"
        same = q["same_records_as_zcap_cat"].get(m["id"])
        same = "–" if m["id"] == "zcap-cat" else ("yes" if same else ("no" if same is not None else "–"))
        lines.append(f"| {md_cell(m['label'])} | {spread(s, 'wall_s')} | {spread(s, 'cpu_s')} | "
                     f"{spread(s, 'read_bytes', MB)} | {f3(med(s, 'maxrss_kib') / 1024)} | "
                     f"{f3(med(s, 'out_bytes') / MB)} | {pk} | {same} |")
    return lines


# --------------------------------------------------------------------------------------
# Filtered query benchmark (--flow-query): one rare host out of an archive, through the flow
# index (zcap cat ARCH FILTER) against decompressing everything into tcpdump's filter.

FLOWQ_BURST = 150          # packets of the rare traffic per burst
FLOWQ_BURST_RATE = 1e6     # their rate: a burst lasts 150 µs, inside one frame or across two
FLOWQ_SHARE = 0.01         # bursts ≈ this share of the data frames


def segment_frames(path: str) -> list[tuple[int, int, int]]:
    """(earliest ns, latest ns, packets) of each data frame, from a finalized segment's index
    trailer (docs/ARCHIVE.md, "Segment file")."""
    with open(path, "rb") as f:
        f.seek(-12, 2)
        length, end = struct.unpack("<I8s", f.read(12))
        if end != b"ZCAPEND1":
            raise ValueError(f"{path}: no index trailer")
        f.seek(-(8 + length), 2)
        payload = f.read(8 + length)[8:]
    if payload[:8] != b"ZCAPIDX1":
        raise ValueError(f"{path}: bad trailer")
    n = struct.unpack_from("<I", payload, 20)[0]
    out = []
    for i in range(n):
        _off, _clen, _raw, lo, hi, pk, _fl = struct.unpack_from("<QIIqqII", payload, 32 + 40 * i)
        out.append((lo, hi, pk))
    return out


def pcap_times_of_host(path: str, addr: bytes) -> list[int]:
    """Timestamps (ns) of the Ethernet/IPv6 records of a microsecond pcap file whose source or
    destination address is addr."""
    out = []
    with open(path, "rb") as f:
        data = f.read()
    pos = 24
    while pos + 16 <= len(data):
        sec, usec, incl, _orig = struct.unpack_from("<IIII", data, pos)
        p = pos + 16
        if incl >= 54 and data[p + 12:p + 14] == b"\x86\xdd" and addr in (data[p + 22:p + 38], data[p + 38:p + 54]):
            out.append(sec * 10**9 + usec * 1000)
        pos = p + incl
    return out


def build_flowq_archive(args, zcap: str) -> tuple[str, dict]:
    """An archive of args.flow_query_size raw bytes: the query benchmark's generated IPv4
    traffic (same generator arguments and packet rate) with short bursts of IPv6 traffic
    merged in, evenly spread, about FLOWQ_SHARE of the data frames' worth. Every IPv4 host of
    the generator talks in every 1 MiB frame, so a host in 1% of the frames has to be added;
    the host queried is an address of the bursts. Kept with --keep, like the query archive."""
    import ipaddress
    qdir = os.path.join(args.workdir, "flowq")
    arch = os.path.join(qdir, f"archive-{args.flow_query_size}")
    meta_path = arch + ".json"
    avg_record = 705
    rate = (args.query_size // avg_record) / args.query_span  # the query archive's packet rate
    packets = max(1, args.flow_query_size // avg_record)
    span = packets / rate
    frames = max(1, args.flow_query_size // MIB)
    bursts = max(1, round(frames * FLOWQ_SHARE))
    want = {"rate": rate, "size": args.flow_query_size, "bursts": bursts, "burst": FLOWQ_BURST}
    if os.path.exists(meta_path) and os.path.isdir(arch):
        with open(meta_path) as f:
            meta = json.load(f)
        if meta.get("want") == want:
            log(f"reusing the filtered-query archive {arch}")
            return arch, meta
    rm(arch)
    os.makedirs(qdir, exist_ok=True)
    base, rare, merged = (os.path.join(qdir, n) for n in ("base.pcap", "rare.pcap", "input.pcap"))
    log(f"building the filtered-query archive: {human(args.flow_query_size)} of generated traffic at "
        f"{rate:.0f} packets/s ({span / 3600:.1f} h) and {bursts} burst(s) of {FLOWQ_BURST} IPv6 packets, zstd:1")
    errpath = os.path.join(qdir, "build.stderr")
    err = open(errpath, "wb")
    try:
        def run(argv, timeout):
            p = spawn(argv, stderr=err)
            _, rc, _ = wait_rusage(p, timeout)
            if rc != 0:
                die(f"building the filtered-query archive: {' '.join(argv[:3])}… failed: {tail(errpath)}")

        run([sys.executable, GEN, "--format", "pcap", "--mix", "realistic", "--payload", "mixed", "--seed", "2",
             "--bytes", str(args.flow_query_size), "--rate", f"{rate:.6f}", "--start", str(START_EPOCH), "-o", base],
            300 + args.flow_query_size / MB)
        with open(rare, "wb") as out:
            for k in range(bursts):
                start = START_EPOCH + span * (k + 0.5) / bursts
                part = rare + f".{k}"
                run([sys.executable, GEN, "--format", "pcap", "--l3", "ipv6", "--seed", "7", "--count",
                     str(FLOWQ_BURST), "--rate", str(FLOWQ_BURST_RATE), "--start", f"{start:.6f}", "-o", part], 60)
                with open(part, "rb") as f:
                    data = f.read()
                out.write(data if k == 0 else data[24:])
                rm(part)
        run(["mergecap", "-F", "pcap", "-w", merged, base, rare], 300 + args.flow_query_size / MB)
        rm(base)
        seg = "256MiB" if args.flow_query_size >= 4 * GIB else f"{max(1, args.flow_query_size // 8 // MIB)}MiB"
        run([zcap, "record", "-r", merged, "--stream-name", "flowq", "-C", seg, "--compress", "zstd:1", "-o", arch],
            300 + args.flow_query_size / MB)
        rm(merged)
    finally:
        err.close()
    # The host: the source address of the bursts' first packet.
    with open(rare, "rb") as f:
        f.seek(24 + 16 + 22)
        addr = f.read(16)
    host_ns = pcap_times_of_host(rare, addr)
    rare_packets = pcap_scan(rare)[0]
    rm(rare)
    m = zcap_manifest(arch)
    segs = []
    with open(os.path.join(arch, "manifest.jsonl")) as f:
        for line in f:
            e = json.loads(line)
            if e.get("op") == "segment":
                segs.append({"path": e["path"], "bytes": e["bytes"], "raw": e["raw"], "packets": e["packets"],
                             "frames": e["frames"], "first_ns": e["first_ns"], "last_ns": e["last_ns"]})
    # The data frames that hold a packet of the host: those whose [earliest, latest] holds
    # one of its timestamps (the merged stream is in time order, so frames do not overlap).
    holding = 0
    for s in segs:
        for lo, hi, pk in segment_frames(os.path.join(arch, s["path"])):
            if pk and any(lo <= t <= hi for t in host_ns):
                holding += 1
    meta = {"want": want, "segments": segs, "raw": sum(s["raw"] for s in segs),
            "stored": sum(s["bytes"] for s in segs), "packets": sum(s["packets"] for s in segs),
            "frames": sum(s["frames"] for s in segs), "sidecars": m["sidecars"], "sidecar_bytes": m["sidecar_bytes"],
            "span_s": span, "host": str(ipaddress.IPv6Address(addr)), "host_packets": len(host_ns),
            "rare_packets": rare_packets, "frames_holding_host": holding}
    with open(meta_path, "w") as f:
        json.dump(meta, f)
    return arch, meta


def stock_filter_script(segs: list[str], expr: str, out: str, tmp: str) -> str:
    """The stock way to pull one host out of zstd-compressed pcap segments: each segment's
    `zstd -dc` through tcpdump's filter (every segment starts with its own pcap header, so
    they cannot be one stream), then mergecap -a when there are several."""
    q = lambda s: "'" + s.replace("'", "'\\''") + "'"
    if len(segs) == 1:
        return f"set -e; zstd -dcq {q(segs[0])} | tcpdump -Z root -r - -w {q(out)} {q(expr)}"
    lines = ["set -e", f"mkdir -p {q(tmp)}"]
    for i, s in enumerate(segs):
        lines.append(f"zstd -dcq {q(s)} | tcpdump -Z root -r - -w {q(tmp)}/part{i:06d}.pcap {q(expr)}")
    lines.append(f"mergecap -a -F pcap -w {q(out)} {q(tmp)}/part*.pcap")
    return "; ".join(lines)


CAT_STATS = {
    "frames decompressed": "frames_decompressed",
    "header frames decompressed": "header_frames",
    "segments read": "segments_read",
    "bytes decompressed": "bytes_decompressed",
    "frames skipped by the flow index": "frames_skipped",
    "sidecars read": "sidecars_read",
    "segments without a usable flow index": "unindexed",
    "packets checked by the filter": "packets_checked",
    "packets matched": "packets_matched",
}


def parse_cat_stats(text: str) -> dict:
    out = {}
    for line in text.splitlines():
        k, _, v = line.partition(":")
        if k.strip() in CAT_STATS and v.strip().isdigit():
            out[CAT_STATS[k.strip()]] = int(v)
    return out


def run_flow_query(args, zcap: str) -> dict:
    if not all(have(t) for t in ("mergecap", "zstd", "tcpdump")):
        return {"skipped": "needs mergecap, zstd and tcpdump"}
    arch, meta = build_flowq_archive(args, zcap)
    expr = f"host {meta['host']}"
    all_segs = [os.path.join(arch, s["path"]) for s in meta["segments"]]
    qout = os.path.join(args.workdir, "flowq", "out")
    methods = [
        ("zcap-cat-filter", f"zcap cat ARCH --stats -w OUT '{expr}'", None),
        ("stock-tcpdump", f"zstd -dc SEG \\| tcpdump -r - -w - '{expr}' per segment [\\| mergecap -a], "
                          f"all {len(all_segs)} segments", all_segs),
    ]
    results = {m[0]: [] for m in methods}
    outputs = {}
    live = [m for m in methods]
    cold = [os.path.join(r, f) for r, _d, fs in os.walk(arch) for f in fs]
    for i in range(-args.warmup, args.runs):  # warm-ups (negative), then round robin
        for mid, _label, segs in list(live):
            rm(qout)
            os.makedirs(qout)
            out = os.path.join(qout, "host.pcap")
            errpath = os.path.join(args.workdir, "flowq", f"{mid}.stderr")
            rss_path = errpath + ".rss"
            evict(cold)
            if segs is None:
                argv = [zcap, "cat", arch, "--stats", "-w", out, expr]
            else:
                argv = ["sh", "-c", stock_filter_script(segs, expr, out, os.path.join(qout, "parts"))]
            with open(errpath, "wb") as err:
                t0 = time.monotonic()
                p = spawn(measured(argv, rss_path), stderr=err)
                try:
                    t1, rc, ru = wait_rusage(p, 300 + meta["raw"] / MB / 20)
                except Timeout as e:
                    results[mid].append({"status": "failed", "reason": str(e)})
                    live.remove((mid, _label, segs))
                    continue
            text = tail(errpath, 4000)
            if rc != 0:
                miss = zcap_missing(text) if segs is None else None
                if segs is None and miss is None and re.search(r"unexpected argument|unrecognized", text):
                    miss = "zcap cat FILTER is not built yet (this zcap takes no filter)"
                results[mid].append(missing_result(miss) if miss else
                                    {"status": "failed", "reason": f"exit {rc}: {text[-300:]}"})
                live.remove((mid, _label, segs))
                continue
            try:
                count = pcap_scan(out)[0]
            except (ValueError, OSError, struct.error) as e:
                results[mid].append({"status": "wrong", "reason": f"output: {e}"})
                live.remove((mid, _label, segs))
                continue
            r = {"status": "ok", "run": i + 1, "wall_s": t1 - t0, "cpu_s": ru.ru_utime + ru.ru_stime,
                 "read_bytes": ru.ru_inblock * 512, "maxrss_kib": read_rss(rss_path, ru)[0],
                 "out_bytes": os.path.getsize(out), "packets": count}
            if segs is None:
                r.update(parse_cat_stats(text))
            if i < 0:
                note_run(f"flow query {mid} warm-up", i + args.warmup, args.warmup, r)
            else:
                results[mid].append(r)
                note_run(f"flow query {mid}", i, args.runs, r)
            if mid not in outputs:
                keep = os.path.join(args.workdir, "flowq", f"{mid}.pcap")
                os.replace(out, keep)
                outputs[mid] = keep
    rm(qout)
    agree = {}
    if "zcap-cat-filter" in outputs:
        ref = pcap_records(outputs["zcap-cat-filter"])
        for mid, path in outputs.items():
            if mid != "zcap-cat-filter":
                agree[mid] = pcap_records(path) == ref
    for path in outputs.values():
        rm(path)
    return {"archive": {k: v for k, v in meta.items() if k != "segments"} | {"path": arch,
                                                                            "segments": len(all_segs)},
            "filter": expr, "methods": [{"id": m[0], "label": m[1]} for m in methods], "runs": results,
            "same_records_as_zcap_cat": agree}


def flowq_failed(fq: dict) -> int:
    if not fq or fq.get("skipped"):
        return 0
    bad = sum(1 for m in fq["methods"] if summarize(fq["runs"].get(m["id"], []))["status"] in ("failed", "wrong"))
    return bad + (0 if all(fq["same_records_as_zcap_cat"].values()) else 1)


def render_flow_query(args, fq: dict) -> list[str]:
    if fq.get("skipped"):
        return ["## Filtered query", "", f"Skipped: {fq['skipped']}.", ""]
    a = fq["archive"]
    out = [f"## Filtered query: `{fq['filter']}` out of {human(a['raw'])} "
           f"({a['packets']:,} packets over {a['span_s'] / 3600:.1f} h, {a['segments']} segments, "
           f"{a['frames']:,} data frames, {human(a['stored'])} stored, {a['sidecars']} flow-index sidecars "
           f"of {human(a['sidecar_bytes'])})", ""]
    out.append(f"The query benchmark's generated IPv4 traffic with {a['want']['bursts']} burst(s) of "
               f"{a['want']['burst']} IPv6 packets merged in, evenly spread; the host is one address of the bursts: "
               f"{a['host_packets']:,} packets, in {a['frames_holding_host']:,} of the {a['frames']:,} data frames "
               f"({a['frames_holding_host'] / a['frames'] * 100:.2f}%; counted from the trailers' frame time ranges). "
               "Cold cache: the archive's pages are evicted before every run; the methods run round robin.")
    out.append("")
    out.append("| method | wall s | CPU s | read from disk MB | peak RSS MiB | output MB | packets | "
               "data frames decompressed | of all | same records as zcap cat |")
    out.append("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for m in fq["methods"]:
        s = summarize(fq["runs"].get(m["id"], []))
        bad = status_cell(s)
        if bad and not s.get("wall_s"):
            out.append(f"| {m['label']} | {bad} |  |  |  |  |  |  |  |  |")
            continue
        runs = [r for r in fq["runs"][m["id"]] if r.get("status") == "ok"]
        pk = f"{runs[0]['packets']:,}" if runs else "–"
        if m["id"] == "zcap-cat-filter":
            fd = runs[0].get("frames_decompressed") if runs else None
            frames = f"{fd:,}" if fd is not None else "?"
            share = f"{fd / a['frames'] * 100:.2f}%" if fd is not None else "–"
            same = "–"
        else:
            frames, share = f"{a['frames']:,} (all)", "100%"
            v = fq["same_records_as_zcap_cat"].get(m["id"])
            same = "yes" if v else ("no" if v is not None else "–")
        out.append(f"| {m['label']} | {spread(s, 'wall_s')} | {spread(s, 'cpu_s')} | {spread(s, 'read_bytes', MB)} | "
                   f"{f3(med(s, 'maxrss_kib') / 1024)} | {f3(med(s, 'out_bytes') / MB)} | {pk} | {frames} | {share} | "
                   f"{same} |")
    out.append("")
    z = [r for r in fq["runs"].get("zcap-cat-filter", []) if r.get("status") == "ok"]
    if z and z[0].get("frames_decompressed") is not None:
        fd = z[0]["frames_decompressed"]
        budget = a["frames_holding_host"] + 2 * a["segments"]
        st = z[0]
        out.append(f"`cat --stats` of the first measured run: {fd:,} data frames decompressed, "
                   f"{st.get('frames_skipped', 0):,} skipped by the flow index, {st.get('header_frames', 0)} header "
                   f"frames, {st.get('sidecars_read', 0)} sidecars read, {st.get('packets_checked', 0):,} packets "
                   f"checked, {st.get('packets_matched', 0):,} matched. Issue 16's bound, the frames holding the host "
                   f"plus 2 per segment: {a['frames_holding_host']:,} + 2 × {a['segments']} = {budget:,}; "
                   f"{'met' if fd <= budget else '**not met**'}.")
        out.append("")
    return out


# --------------------------------------------------------------------------------------
# Object-storage benchmark (--s3): an s3s-fs store on 127.0.0.1 with its root in the
# workdir; zcap upload against aws s3 cp --recursive (the stock client), then zcap cat
# s3://… of the query window against downloading the segments that overlap it.

S3S_FS_VERSION = "0.14.1"
S3_BUCKET = "bench"
S3_REGION = "us-east-1"
# zcap upload's journal of confirmed uploads, which it keeps beside the manifest.
UPLOAD_JOURNAL = ".uploads"


def find_s3s_fs() -> str | None:
    p = shutil.which("s3s-fs")
    if p:
        return p
    home = os.path.expanduser("~/.cargo/bin/s3s-fs")  # where cargo install puts it
    return home if os.access(home, os.X_OK) else None


def find_aws() -> str | None:
    """The aws command, with a pyenv shim resolved to the script it runs: the shim is a bash
    script that runs pyenv, whose start-up would be timed with the client's."""
    p = shutil.which("aws")
    if p is None:
        import sysconfig
        for d in (sysconfig.get_path("scripts"), os.path.expanduser("~/.local/bin")):
            cand = os.path.join(d or "", "aws")
            if d and os.access(cand, os.X_OK):
                p = cand
                break
    if p and "/.pyenv/shims/" in p and have("pyenv"):
        try:
            r = subprocess.run(["pyenv", "which", "aws"], capture_output=True, timeout=30)
            real = r.stdout.decode().strip()
            if r.returncode == 0 and os.access(real, os.X_OK):
                return real
        except (OSError, subprocess.TimeoutExpired):
            pass
    return p


def s3_tools(args) -> tuple[str | None, str | None, dict]:
    """(s3s-fs, aws, why each missing one is missing), installing them unless --no-install:
    s3s-fs with cargo install (the version the tests use), awscli with pip."""
    why = {}
    s3s = find_s3s_fs()
    if s3s is None:
        cargo = cargo_bin()
        if args.no_install:
            why["s3s-fs"] = "s3s-fs not installed (--no-install)"
        elif cargo is None:
            why["s3s-fs"] = "s3s-fs not installed, and no cargo to install it with"
        else:
            log(f"installing s3s-fs {S3S_FS_VERSION} with cargo install")
            r = subprocess.run([cargo, "install", "s3s-fs", "--version", S3S_FS_VERSION, "--features", "binary",
                                "--locked"], stdout=sys.stderr)
            s3s = find_s3s_fs()
            if s3s is None:
                why["s3s-fs"] = f"cargo install s3s-fs failed (exit status {r.returncode})"
    aws = find_aws()
    if aws is None:
        if args.no_install:
            why["aws"] = "awscli not installed (--no-install)"
        else:
            log("installing awscli with pip")
            r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "awscli"], stdout=sys.stderr)
            aws = find_aws()
            if aws is None:
                why["aws"] = f"pip install awscli failed (exit status {r.returncode})"
    return s3s, aws, why


class S3Store:
    """s3s-fs on a free port of 127.0.0.1, serving WORKDIR/s3/root (bucket `bench` is the
    directory root/bench; an object is stored as the file root/bench/KEY, with two small
    JSON sidecars in root named after the base64 of bucket and key). A throwaway key pair,
    checked by the store (SigV4). close() kills it and deletes the root."""

    def __init__(self, args, binary: str):
        self.dir = os.path.join(args.workdir, "s3")
        rm(self.dir)
        self.root = os.path.join(self.dir, "root")
        os.makedirs(os.path.join(self.root, S3_BUCKET))
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.access, self.secret = "zbench", os.urandom(16).hex()
        self.log_path = os.path.join(self.dir, "s3s-fs.log")
        # The clients see only these settings: no profile, config file or endpoint of the
        # user's, no instance-metadata lookups.
        cfg = os.path.join(self.dir, "aws-config")
        with open(cfg, "w") as f:
            f.write(f"[default]\nregion = {S3_REGION}\n")
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        self.env.update(AWS_ACCESS_KEY_ID=self.access, AWS_SECRET_ACCESS_KEY=self.secret, AWS_REGION=S3_REGION,
                        AWS_DEFAULT_REGION=S3_REGION, AWS_CONFIG_FILE=cfg, AWS_SHARED_CREDENTIALS_FILE=cfg,
                        AWS_EC2_METADATA_DISABLED="true")
        with open(self.log_path, "wb") as err:
            self.proc = spawn([binary, "--host", "127.0.0.1", "--port", str(self.port), "--access-key", self.access,
                               "--secret-key", self.secret, self.root], stdout=err, stderr=err)
        try:
            wait_listening(self.port, self.proc, 30)
        except (Timeout, RuntimeError) as e:
            self.close()
            raise RuntimeError(f"s3s-fs did not start: {e}: {tail(self.log_path)}")

    def cpu(self) -> float:
        """The store's CPU seconds so far (utime + stime of all its threads)."""
        try:
            with open(f"/proc/{self.proc.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, IndexError):
            return 0.0

    def path(self, prefix: str) -> str:
        return os.path.join(self.root, S3_BUCKET, prefix)

    def objects(self, prefix: str) -> dict:
        """rel -> size of every object under prefix, from the store's files."""
        base = self.path(prefix)
        out = {}
        for r, _d, fs in os.walk(base):
            for name in fs:
                full = os.path.join(r, name)
                out[os.path.relpath(full, base)] = os.path.getsize(full)
        return out

    def files(self, prefix: str) -> list[str]:
        base = self.path(prefix)
        return [os.path.join(r, f) for r, _d, fs in os.walk(base) for f in fs]

    def delete(self, prefix: str) -> None:
        """Deletes every object under prefix, behind the store's back: its files and sidecars."""
        rm(self.path(prefix))
        import base64

        def b64(s: str) -> str:
            return base64.urlsafe_b64encode(s.encode()).decode().rstrip("=")

        def unb64(s: str) -> str:
            try:
                return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4)).decode()
            except (ValueError, UnicodeDecodeError):
                return ""

        head = f".bucket-{b64(S3_BUCKET)}.object-"
        try:
            names = os.listdir(self.root)
        except OSError:
            return
        for name in names:
            if name.startswith(head):
                key = unb64(name[len(head):].split(".", 1)[0])
                if key.startswith(prefix + "/"):
                    rm(os.path.join(self.root, name))

    def close(self) -> None:
        kill_group(self.proc)
        CHILDREN.pop(self.proc.pid, None)
        rm(self.root)


def archive_files(arch: str, meta: dict) -> dict:
    """rel -> size of what an upload must put in the store: the manifest and every segment."""
    want = {"manifest.jsonl": os.path.getsize(os.path.join(arch, "manifest.jsonl"))}
    for s in meta["segments"]:
        want[s["path"]] = os.path.getsize(os.path.join(arch, s["path"]))
    return want


def s3_timed(argv: list[str], env: dict, errpath: str, timeout: float, store: S3Store, cold: list[str]):
    """Runs argv once, after sync and evicting `cold` from the page cache; returns
    (wall s, rc, rusage, peak RSS KiB, store CPU s)."""
    rss_path = errpath + ".rss"
    evict(cold)
    cpu0 = store.cpu()
    with open(errpath, "wb") as err:
        t0 = time.monotonic()
        p = spawn(measured(argv, rss_path), stdout=err, stderr=err, env=env)
        t1, rc, ru = wait_rusage(p, timeout)
    return t1 - t0, rc, ru, read_rss(rss_path, ru)[0], store.cpu() - cpu0


def s3_failure(errpath: str, rc: int, zcap: bool) -> dict:
    text = tail(errpath, 2000)
    if zcap:
        miss = zcap_missing(text)
        if miss is None and re.search(r"unrecognized subcommand", text):
            miss = "zcap upload is not built yet (this zcap has no upload subcommand)"
        if miss:
            return missing_result(miss)
    return {"status": "failed", "reason": f"exit status {rc}: {text[-300:]}"}


def s3_upload_once(args, store: S3Store, pid: str, argv: list[str], arch: str, want: dict, prefix: str,
                   run_no: int) -> dict:
    nbytes = sum(want.values())
    errpath = os.path.join(store.dir, f"upload-{pid}.stderr")
    store.delete(prefix)
    # Every zcap run starts as the first did: no journal of an earlier run's uploads.
    rm(os.path.join(arch, UPLOAD_JOURNAL))
    cold = [os.path.join(r, f) for r, _d, fs in os.walk(arch) for f in fs]
    load = os.getloadavg()[0]
    try:
        wall, rc, ru, rss, store_cpu = s3_timed(argv, store.env, errpath, 300 + nbytes / MB, store, cold)
    except Timeout as e:
        return {"status": "failed", "reason": str(e)}
    if rc != 0:
        return s3_failure(errpath, rc, pid == "zcap")
    got = store.objects(prefix)
    absent = [k for k in want if k not in got]
    differ = [k for k in want if k in got and got[k] != want[k]]
    problem = None
    if absent or differ:
        problem = (f"{len(absent)} object(s) missing (e.g. {absent[:1]}), " if absent else "") + \
                  (f"{len(differ)} of another size (e.g. {differ[:1]})" if differ else "")
    elif open(os.path.join(store.path(prefix), "manifest.jsonl"), "rb").read() != \
            open(os.path.join(arch, "manifest.jsonl"), "rb").read():
        problem = "the stored manifest differs from the archive's"
    cpu = ru.ru_utime + ru.ru_stime
    return {"status": "ok" if problem is None else "wrong", "reason": problem, "run": run_no, "prefix": prefix,
            "wall_s": wall, "bytes": nbytes, "mb_s": nbytes / MB / wall, "user_s": ru.ru_utime,
            "sys_s": ru.ru_stime, "cpu_s": cpu, "cpu_s_per_gb": cpu / (nbytes / 1e9), "maxrss_kib": rss,
            "store_cpu_s": store_cpu, "objects": len(got), "extra_objects": sorted(set(got) - set(want))[:10],
            "loadavg_1m_before": load}


def run_s3(args, zcap: str) -> dict:
    s3s, aws, why = s3_tools(args)
    result = {"skipped": None, "unavailable": why}
    if s3s is None:
        log(f"object-storage benchmark skipped: {why['s3s-fs']}")
        result["skipped"] = why["s3s-fs"]
        return result
    arch, meta = build_query_archive(args, zcap)
    want = archive_files(arch, meta)
    nbytes = sum(want.values())
    store = S3Store(args, s3s)
    try:
        result["store"] = {"server": f"s3s-fs {s3s_version(s3s)}", "endpoint": store.endpoint,
                           "root": store.root, "bucket": S3_BUCKET}
        result["archive"] = {"path": arch, "objects": len(want), "bytes": nbytes, "segments": len(meta["segments"]),
                             "raw_bytes": meta["raw"], "packets": meta["packets"],
                             "span_s": (meta["last_ns"] - meta["first_ns"]) / 1e9}
        ep = store.endpoint
        methods = [
            ("zcap", "zcap upload ARCH s3://bench/zcap-N",
             lambda n: [zcap, "upload", arch, f"s3://{S3_BUCKET}/zcap-{n}", "--s3-endpoint", ep]),
            ("aws", f"aws s3 cp --recursive ARCH s3://bench/aws-N --exclude .lock --exclude {UPLOAD_JOURNAL}",
             lambda n: [aws, "s3", "cp", "--recursive", arch, f"s3://{S3_BUCKET}/aws-{n}", "--endpoint-url", ep,
                        "--exclude", ".lock", "--exclude", UPLOAD_JOURNAL, "--no-progress", "--only-show-errors"]),
        ]
        upload = {m[0]: [] for m in methods}
        live = []
        for mid, _label, argv in methods:
            if mid == "aws" and aws is None:
                upload[mid] = [missing_result(why["aws"], "unavailable")]
                continue
            ok = True
            for i in range(args.warmup):
                r = s3_upload_once(args, store, mid, argv("warmup"), arch, want, f"{mid}-warmup", 0)
                store.delete(f"{mid}-warmup")
                note_run(f"[s3] upload {mid} warm-up", i, args.warmup, r)
                if r["status"] in ("missing", "failed"):
                    upload[mid] = [r]
                    ok = False
                    break
            if ok:
                live.append((mid, argv))
        # Round robin, as the other benchmarks: run 1 of each client, then run 2, ... Every
        # prefix is deleted after its run but in the last round, whose last good upload is
        # kept for the remote query.
        kept = None
        for i in range(args.runs):
            last_round = i == args.runs - 1
            for mid, argv in list(live):
                prefix = f"{mid}-{i + 1}"
                r = s3_upload_once(args, store, mid, argv(i + 1), arch, want, prefix, i + 1)
                upload[mid].append(r)
                note_run(f"[s3] upload {mid}", i, args.runs, r)
                if r["status"] == "ok" and last_round:
                    if kept:
                        store.delete(kept)
                    kept = prefix
                else:
                    store.delete(prefix)
                if r["status"] in ("missing", "failed"):
                    live.remove((mid, argv))
        result["upload"] = {"methods": [{"id": m[0], "label": m[1]} for m in methods], "runs": upload}
        if kept is None:
            result["query"] = {"skipped": "no upload succeeded in the last round"}
            return result
        result["query"] = s3_query(args, store, zcap, aws, why, arch, meta, kept)
    finally:
        store.close()
        rm(store.dir)
        rm(os.path.join(arch, UPLOAD_JOURNAL))
    return result


def s3s_version(binary: str) -> str:
    try:
        r = subprocess.run([binary, "--version"], capture_output=True, timeout=10)
        m = re.search(r"(\d+\.\d+\.\d+)", r.stdout.decode(errors="replace"))
        return m.group(1) if m else "?"
    except (OSError, subprocess.TimeoutExpired):
        return "?"


def files_equal(x: str, y: str) -> bool:
    """Byte for byte (what cmp does)."""
    if os.path.getsize(x) != os.path.getsize(y):
        return False
    with open(x, "rb") as fx, open(y, "rb") as fy:
        while True:
            bx, by = fx.read(1 << 20), fy.read(1 << 20)
            if bx != by:
                return False
            if not bx:
                return True


def s3_query(args, store: S3Store, zcap: str, aws: str | None, why: dict, arch: str, meta: dict,
             prefix: str) -> dict:
    """zcap cat s3://… of the query window against aws s3 cp of the segments overlapping it,
    round robin, the store's copy evicted from the page cache before every run."""
    a, b, overlap = query_window(args, meta)
    overlap_bytes = sum(s["bytes"] for s in overlap)
    manifest_bytes = os.path.getsize(os.path.join(arch, "manifest.jsonl"))
    url = f"s3://{S3_BUCKET}/{prefix}"
    ref = os.path.join(store.dir, "local-window.pcap")
    r = subprocess.run([zcap, "cat", arch, "--from", str(a), "--to", str(b), "-w", ref],
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=300 + meta["raw"] / MB / 20)
    if r.returncode != 0:
        return {"skipped": f"local zcap cat failed: {r.stderr.decode(errors='replace')[-300:]}"}
    ref_packets = pcap_scan(ref)[0]
    out = os.path.join(store.dir, "window.pcap")
    dl = os.path.join(store.dir, "download")
    includes = []
    for s in overlap:
        includes += ["--include", s["path"]]
    methods = [
        ("zcap-cat", f"zcap cat {url} --from {a} --to {b} --stats -w OUT",
         [zcap, "cat", url, "--s3-endpoint", store.endpoint, "--from", str(a), "--to", str(b), "--stats", "-w", out]),
        ("aws-hit", f"aws s3 cp --recursive {url} DIR --exclude '*' --include SEG… (the {len(overlap)} overlapping "
                    f"segment(s), download only)",
         [aws, "s3", "cp", "--recursive", url, dl, "--endpoint-url", store.endpoint, "--exclude", "*", *includes,
          "--no-progress", "--only-show-errors"] if aws else None),
    ]
    runs = {m[0]: [] for m in methods}
    live = []
    for mid, _label, argv in methods:
        if argv is None:
            runs[mid] = [missing_result(why.get("aws", "aws not installed"), "unavailable")]
        else:
            live.append((mid, argv))
    timeout = 300 + meta["stored"] / MB
    for i in range(args.runs):
        for mid, argv in list(live):
            rm(out)
            rm(dl)
            errpath = os.path.join(store.dir, f"query-{mid}.stderr")
            try:
                wall, rc, ru, rss, store_cpu = s3_timed(argv, store.env, errpath, timeout, store, store.files(prefix))
            except Timeout as e:
                res = {"status": "failed", "reason": str(e)}
            else:
                if rc != 0:
                    res = s3_failure(errpath, rc, False)
                else:
                    res = {"status": "ok", "run": i + 1, "wall_s": wall, "cpu_s": ru.ru_utime + ru.ru_stime,
                           "maxrss_kib": rss, "store_cpu_s": store_cpu}
                    if mid == "zcap-cat":
                        text = tail(errpath, 4000)
                        fetched = re.search(r"bytes fetched: (\d+)", text)
                        reqs = re.search(r"range requests: (\d+)", text)
                        try:
                            count = pcap_scan(out)[0]
                        except (ValueError, OSError, struct.error) as e:
                            count = None
                            res.update(status="wrong", reason=f"output: {e}")
                        same = files_equal(out, ref)
                        res.update(fetched_bytes=int(fetched.group(1)) if fetched else None,
                                   requests=int(reqs.group(1)) if reqs else None,
                                   out_bytes=os.path.getsize(out), packets=count, same_as_local=same)
                        if not same and res["status"] == "ok":
                            res.update(status="wrong", reason="the output differs from local zcap cat's (cmp)")
                    else:
                        got = {}
                        for s in overlap:
                            p = os.path.join(dl, s["path"])
                            got[s["path"]] = os.path.getsize(p) if os.path.exists(p) else None
                        bad = [k for k in got if got[k] != os.path.getsize(os.path.join(arch, k))]
                        extra = sum(len(fs) for _r, _d, fs in os.walk(dl)) - len(overlap)
                        res.update(fetched_bytes=sum(v or 0 for v in got.values()), objects=len(overlap))
                        if bad or extra:
                            res.update(status="wrong", reason=f"downloaded {len(bad)} segment(s) wrong or "
                                                              f"missing, {extra} extra file(s)")
            runs[mid].append(res)
            note_run(f"[s3] query {mid}", i, args.runs, res)
            if res["status"] in ("missing", "failed"):
                live.remove((mid, argv))
    rm(out)
    rm(dl)
    rm(ref)
    return {"prefix": prefix, "window": [a, b], "segments_hit": len(overlap),
            "segments_hit_paths": [s["path"] for s in overlap], "overlap_bytes": overlap_bytes,
            "manifest_bytes": manifest_bytes, "local_packets": ref_packets,
            "methods": [{"id": m[0], "label": m[1]} for m in methods], "runs": runs}


S3_FIELDS = ["store_cpu_s", "fetched_bytes", "requests"]


def s3_summary(runs: list[dict]) -> dict:
    s = summarize(runs)
    ok = [r for r in runs if r.get("status") in ("ok", "wrong")]
    for k in S3_FIELDS:
        vals = [r[k] for r in ok if r.get(k) is not None]
        if vals:
            s[k] = {"min": min(vals), "median": statistics.median(vals), "max": max(vals)}
    return s


def s3_failed(s3: dict) -> int:
    """Failed or wrong rows of the object-storage benchmark (missing and unavailable are not)."""
    n = 0
    for part in ("upload", "query"):
        block = s3.get(part) or {}
        for runs in (block.get("runs") or {}).values():
            if summarize(runs)["status"] in ("failed", "wrong"):
                n += 1
    return n


def render_s3(args, s3: dict) -> list[str]:
    out = ["## Object storage: the query archive on s3s-fs", ""]
    if s3.get("skipped"):
        return out + [f"Skipped: {s3['skipped']}.", ""]
    a, st = s3["archive"], s3["store"]
    out.append(f"{st['server']} on 127.0.0.1 (objects are files in a directory of the workdir, on this disk; "
               f"SigV4 checked), the query archive: {human(a['bytes'])} in {a['objects']} objects (the manifest and "
               f"{a['segments']} zstd:1 segments; {human(a['raw_bytes'])} raw, {a['packets']:,} packets over "
               f"{a['span_s'] / 3600:.1f} h). Cold cache: what is read is evicted from the page cache before every "
               f"run (the archive for uploads, the store's objects for the query). The clients run round robin. "
               f"MB/s = archive bytes ÷ wall, spawn to exit; store CPU s = the s3s-fs process's CPU during the run.")
    out.append("")
    up = s3["upload"]
    out += ["| upload | MB/s | wall s | CPU s | CPU s/GB | peak RSS MiB | store CPU s | objects |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    summ = {}
    for m in up["methods"]:
        s = summ[m["id"]] = s3_summary(up["runs"].get(m["id"], []))
        bad = status_cell(s)
        if bad and not s.get("mb_s"):
            out.append(f"| {md_cell(m['label'])} | {bad} |  |  |  |  |  |  |")
            continue
        runs = [r for r in up["runs"][m["id"]] if r.get("status") in ("ok", "wrong")]
        label = md_cell(m["label"] + (f" ⚠ {bad}" if bad else ""))
        out.append(f"| {label} | {spread(s, 'mb_s')} | {spread(s, 'wall_s')} | {spread(s, 'cpu_s')} | "
                   f"{f3(med(s, 'cpu_s_per_gb'))} | {spread(s, 'maxrss_kib', 1024)} | {spread(s, 'store_cpu_s')} | "
                   f"{runs[0]['objects'] if runs else '–'} |")
    out.append("")
    z, w = med(summ.get("zcap", {}), "mb_s"), med(summ.get("aws", {}), "mb_s")
    if z and w and summ["zcap"]["status"] == "ok" and summ["aws"]["status"] == "ok":
        out.append(f"zcap upload ÷ aws s3 cp, median MB/s of the same run set: {z / w:.2f}× (above 1: zcap is faster).")
        out.append("")
    q = s3.get("query") or {}
    if q.get("skipped"):
        return out + [f"Remote query skipped: {q['skipped']}.", ""]
    lo, hi = q["window"]
    utc = lambda t: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))
    out.append(f"Remote query: `--from {lo} --to {hi}` ({utc(lo)} – {utc(hi)}, {hi - lo} s from the middle of the "
               f"span) out of s3://{S3_BUCKET}/{q['prefix']}. {q['segments_hit']} segment(s) overlap the window "
               f"(manifest first_ns/last_ns): {f3(q['overlap_bytes'] / MB)} MB, what a client without the index "
               f"downloads; zcap's fetched bytes include the manifest ({f3(q['manifest_bytes'] / MB)} MB).")
    out.append("")
    out += ["| method | wall s | CPU s | fetched MB | range requests | fetched ÷ overlapping segments | store CPU s | "
            "output MB | packets | output = local zcap cat (cmp) |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for m in q["methods"]:
        s = s3_summary(q["runs"].get(m["id"], []))
        bad = status_cell(s)
        if bad and not s.get("wall_s"):
            out.append(f"| {md_cell(m['label'])} | {bad} |" + "  |" * 8)
            continue
        runs = [r for r in q["runs"][m["id"]] if r.get("status") in ("ok", "wrong")]
        fetched = med(s, "fetched_bytes")
        share = f"{fetched / q['overlap_bytes'] * 100:.1f}%" if fetched is not None and q["overlap_bytes"] else "–"
        if m["id"] == "zcap-cat":
            same = "yes" if runs and all(r.get("same_as_local") for r in runs) else "no"
            pk = count(runs[0].get("packets")) if runs else "–"
            outmb = f3(med(s, "out_bytes") / MB) if med(s, "out_bytes") is not None else "–"
        else:
            same, pk, outmb = "– (segments only)", "–", "–"
        r = s.get("requests")
        reqs = "–" if not r else count(r["median"]) if r["min"] == r["max"] else \
            f"{count(r['median'])} ({count(r['min'])}–{count(r['max'])})"
        label = md_cell(m["label"] + (f" ⚠ {bad}" if bad else ""))
        out.append(f"| {label} | {spread(s, 'wall_s')} | {spread(s, 'cpu_s')} | "
                   f"{spread(s, 'fetched_bytes', MB)} | {reqs} | {share} | {spread(s, 'store_cpu_s')} | {outmb} | "
                   f"{pk} | {same} |")
    out.append("")
    out.append("The aws row only downloads: cutting the window out of the downloaded segments is the query table's "
               "`zstd -dc | editcap` row on top.")
    out.append("")
    return out


# --------------------------------------------------------------------------------------
# Live-capture benchmark (--capture): tcpreplay floods a veth pair between two network
# namespaces; zcap record -i, tcpdump and dumpcap capture its near end.

CAPTURE_MTU = 1500
RING_MIB = 256  # zcap's default ring per capture thread: --block-count 64 × --block-size 4MiB


class Veth:
    """Two network namespaces joined by a veth pair, as tests/afpacket.rs builds them: MTU
    1500, IPv6 off on both ends (no router solicitations on the wire), lo and the pair up.
    close() deletes both namespaces, which deletes the pair; it is registered with atexit
    and the harness's signal handlers exit through it too."""

    def __init__(self):
        tag = f"{os.getpid() % 100000}"
        self.near_ns, self.far_ns = f"zbench-cap-{tag}", f"zbench-snd-{tag}"
        self.near, self.far = f"zbc{tag}a", f"zbc{tag}b"
        self.made = []
        atexit.register(self.close)
        try:
            for ns in (self.near_ns, self.far_ns):
                self.ip("netns", "add", ns)
                self.made.append(ns)
            self.ip("link", "add", self.near, "mtu", str(CAPTURE_MTU), "type", "veth",
                    "peer", "name", self.far, "mtu", str(CAPTURE_MTU))
            for ns, dev in ((self.near_ns, self.near), (self.far_ns, self.far)):
                self.ip("link", "set", dev, "netns", ns)
            for ns, dev in ((self.near_ns, self.near), (self.far_ns, self.far)):
                for conf in ("all", "default", dev):
                    self.ip("netns", "exec", ns, "sysctl", "-qw", f"net.ipv6.conf.{conf}.disable_ipv6=1")
                self.ip("-n", ns, "link", "set", "lo", "up")
                self.ip("-n", ns, "link", "set", dev, "up")
        except Exception:
            self.close()
            raise

    @staticmethod
    def ip(*argv: str) -> None:
        r = subprocess.run(["ip", *argv], capture_output=True, timeout=30)
        if r.returncode != 0:
            raise RuntimeError(f"ip {' '.join(argv)}: {r.stderr.decode(errors='replace').strip()}")

    def near_exec(self, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.near_ns, *argv]

    def far_exec(self, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.far_ns, *argv]

    def rx_stats(self) -> dict:
        """The near end's receive counters (what reached the interface; veth counts a frame
        the backlog refused as rx dropped)."""
        r = subprocess.run(["ip", "-n", self.near_ns, "-s", "-j", "link", "show", self.near],
                           capture_output=True, timeout=30)
        try:
            rx = json.loads(r.stdout)[0]["stats64"]["rx"]
            return {"packets": rx["packets"], "dropped": rx["dropped"]}
        except (ValueError, IndexError, KeyError):
            return {"packets": 0, "dropped": 0}

    def close(self) -> None:
        while self.made:
            ns = self.made.pop()
            subprocess.run(["ip", "netns", "del", ns], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


class CaptureCase:
    """A capturer on the near end. ready: a regex its stderr prints once the capture socket
    is open (the flood starts only then); output: 'zcap' (an archive) or 'pcap' (one file)."""

    def __init__(self, cid, label, argv, *, needs=(), ready, output, zcap=False):
        self.cid, self.label, self.argv, self.needs = cid, label, argv, needs
        self.ready, self.output, self.zcap = ready, output, zcap


def capture_cases(zcap: str) -> list[CaptureCase]:
    cases = []
    for comp, tag in (("zstd:1", "zstd1"), ("none", "none")):
        for fanout in (1, 2):
            cases.append(CaptureCase(
                f"capture-zcap-{tag}-f{fanout}", f"zcap record -i --compress {comp} --fanout {fanout}",
                [zcap, "record", "-i", "{iface}", "--compress", comp, "--fanout", str(fanout), "-o", "{out}/archive"],
                ready=r"zcap: rx: afpacket", output="zcap", zcap=True))
    cases += [
        CaptureCase("capture-tcpdump", f"tcpdump -i -B {RING_MIB * 1024} -w",
                    ["tcpdump", "-Z", "root", "-i", "{iface}", "-B", str(RING_MIB * 1024), "-w", "{out}/capture.pcap"],
                    needs=("tcpdump",), ready=r"listening on", output="pcap"),
        CaptureCase("capture-dumpcap", f"dumpcap -i -B {RING_MIB} -P -w",
                    ["dumpcap", "-i", "{iface}", "-B", str(RING_MIB), "-P", "-w", "{out}/capture.pcap"],
                    needs=("dumpcap",), ready=r"Capturing on", output="pcap"),
    ]
    return cases


def make_capture_corpus(args) -> Corpus:
    """The realistic corpus's generator arguments with a fixed packet count: every run floods
    the same frames. Its largest frame (1514 bytes) fits the 1500-byte MTU; checked anyway,
    since tcpreplay cannot send a frame larger than the MTU plus the Ethernet header."""
    gen_args = CORPORA["realistic"][1] + ["--count", str(args.capture_packets)]
    cdir = os.path.join(args.workdir, "corpus")
    os.makedirs(cdir, exist_ok=True)
    path = os.path.join(cdir, f"capture-{args.capture_packets}.pcap")
    meta_path = path + ".json"
    try:
        with open(meta_path) as f:
            meta = json.load(f)
        if meta.get("gen_args") != gen_args or not os.path.exists(path):
            meta = None
    except (OSError, ValueError):
        meta = None
    if meta is None:
        log(f"generating the capture corpus ({args.capture_packets:,} packets, realistic mix)")
        r = subprocess.run([sys.executable, GEN, "--format", "pcap", *gen_args, "--seed", "1", "-o", path],
                           stdout=sys.stderr)
        if r.returncode != 0:
            die("gen-pcap.py failed for the capture corpus")
        count, offs, _ = pcap_scan(path)
        with open(path, "rb") as f:
            data = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
        try:
            largest = max(struct.unpack_from("<I", data, o + 8)[0] for o in offs)
        finally:
            data.close()
        if largest > CAPTURE_MTU + 14:
            die(f"the capture corpus has a {largest}-byte frame, larger than MTU {CAPTURE_MTU} + 14")
        meta = {"gen_args": gen_args, "packets": count, "size": os.path.getsize(path), "largest": largest}
        with open(meta_path, "w") as f:
            json.dump(meta, f)
    return Corpus("capture", f"realistic mix, {meta['packets']:,} packets", path, meta["packets"], meta["size"], [])


def wait_ready(p: subprocess.Popen, errpath: str, pattern: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not re.search(pattern, tail(errpath, 4000)):
        if exited(p):
            raise RuntimeError("the capturer exited before it was capturing")
        if time.monotonic() > deadline:
            raise Timeout(f"the capturer did not say /{pattern}/ within {timeout:.0f} s")
        time.sleep(0.02)


def wait_settled(p: subprocess.Popen, out: str, quiet: float = 1.0, limit: float = 60.0) -> float:
    """After the flood: waits until the capturer's output has not grown for `quiet` seconds
    (it has drained its ring to disk), at most `limit`. Returns the seconds waited."""
    t0 = time.monotonic()
    last, since = -1, t0
    while time.monotonic() - t0 < limit and not exited(p):
        size = apparent(out)
        now = time.monotonic()
        if size != last:
            last, since = size, now
        elif now - since >= quiet:
            break
        time.sleep(0.1)
    return time.monotonic() - t0


def parse_tcpreplay(text: str) -> dict:
    m = re.search(r"Actual: (\d+) packets \((\d+) bytes\) sent in ([0-9.]+) seconds", text)
    if not m:
        raise RuntimeError(f"tcpreplay printed no statistics: {text[-300:]}")
    failed = re.search(r"Failed packets:\s+(\d+)", text)
    return {"sent": int(m.group(1)), "sent_bytes": int(m.group(2)), "flood_s": float(m.group(3)),
            "send_failed": int(failed.group(1)) if failed else 0}


def count_capture(case: CaptureCase, out: str, errpath: str) -> tuple[int, int | None]:
    """(packets in the output, kernel drops the capturer reported)."""
    text = tail(errpath, 8000)
    if case.output == "zcap":
        got = drops = 0
        with open(os.path.join(out, "archive", "manifest.jsonl")) as f:
            for line in f:
                e = json.loads(line)
                if e.get("op") == "segment":
                    got += e.get("packets", 0)
                    drops += e.get("drops") or 0
        m = re.search(r"zcap: capture: .*? dropped (\d+)", text)
        return got, int(m.group(1)) if m else drops
    got = pcap_scan(os.path.join(out, "capture.pcap"))[0]
    m = (re.search(r"(\d+) packets? dropped by kernel", text)  # tcpdump
         or re.search(r"Packets received/dropped on interface [^:]*: \d+/(\d+)", text))  # dumpcap
    return got, int(m.group(1)) if m else None


def capture_once(args, veth: Veth, case: CaptureCase, corpus: Corpus, run_no: int) -> dict:
    odir = os.path.join(args.workdir, "out")
    out = os.path.join(odir, case.cid)
    rm(out)
    os.makedirs(out)
    errpath = os.path.join(odir, f"{case.cid}.stderr")
    floodpath = os.path.join(odir, f"{case.cid}.tcpreplay")
    rss_path = os.path.join(odir, f"{case.cid}.rss")
    argv = measured(veth.near_exec(fmt_argv(case.argv, {"iface": veth.near, "out": out})), rss_path)
    load = os.getloadavg()[0]
    os.sync()
    cap = flood = None
    try:
        with open(errpath, "wb") as err, open(floodpath, "wb") as fout:
            rx0 = veth.rx_stats()
            cap = spawn(argv, stdout=err, stderr=err)
            wait_ready(cap, errpath, case.ready, 30)
            time.sleep(0.3)
            # -K: the whole corpus in memory first, so the flood does not wait for the disk.
            flood = spawn(measured(veth.far_exec(["tcpreplay", "-K", "-i", veth.far, "--topspeed", corpus.path]),
                                   floodpath + ".rss"), stdout=fout, stderr=fout)
            _, frc, fru = wait_rusage(flood, 120 + corpus.size / MB)
            if frc != 0:
                raise RuntimeError(f"tcpreplay exit status {frc}: {tail(floodpath)}")
            settle = wait_settled(cap, out)
            rx1 = veth.rx_stats()
            if not exited(cap):
                os.killpg(cap.pid, signal.SIGINT)
            t_stop = time.monotonic()
            _, rc, ru = wait_rusage(cap, 60)
            stop_s = time.monotonic() - t_stop
    except (Timeout, RuntimeError, OSError) as e:
        for p in (cap, flood):
            if p is not None:
                kill_group(p)
                CHILDREN.pop(p.pid, None)
        text = tail(errpath)
        missing = zcap_missing(text) if case.zcap else None
        rm(out)
        return missing_result(missing) if missing else {"status": "failed", "reason": f"{e}: {text[-300:]}"}
    text = tail(errpath)
    if rc != 0:
        missing = zcap_missing(text) if case.zcap else None
        rm(out)
        return missing_result(missing) if missing else {"status": "failed", "reason": f"exit status {rc}: {text[-300:]}"}
    try:
        fl = parse_tcpreplay(tail(floodpath, 4000))
        captured, kdrops = count_capture(case, out, errpath)
    except (RuntimeError, OSError, ValueError, struct.error) as e:
        rm(out)
        return {"status": "failed", "reason": str(e)}
    cpu = ru.ru_utime + ru.ru_stime
    rss, rss_exact = read_rss(rss_path, ru)
    sent = fl["sent"]
    res = {
        "status": "ok",
        "run": run_no,
        **fl,
        "flood_pkt_s": sent / fl["flood_s"],
        "flood_cpu_s": fru.ru_utime + fru.ru_stime,
        "reached_iface": rx1["packets"] - rx0["packets"],
        "iface_rx_dropped": rx1["dropped"] - rx0["dropped"],
        "captured": captured,
        "kernel_drops": kdrops,
        "missing": max(0, sent - captured),
        "capture_ratio": captured / sent if sent else 0.0,
        "drop_rate": max(0, sent - captured) / sent if sent else 0.0,
        "pkt_s": captured / fl["flood_s"],
        "settle_s": settle,
        "stop_s": stop_s,
        "user_s": ru.ru_utime,
        "sys_s": ru.ru_stime,
        "cpu_s": cpu,
        "cpu_s_per_mpkt": cpu / (captured / 1e6) if captured else None,
        "maxrss_kib": rss,
        "maxrss_exact": rss_exact,
        "written_bytes": du(out),
        "loadavg_1m_before": load,
    }
    rm(out)
    return res


CAPTURE_FIELDS = ["pkt_s", "capture_ratio", "drop_rate", "captured", "missing", "kernel_drops", "sent",
                  "flood_s", "flood_pkt_s", "flood_cpu_s", "reached_iface", "cpu_s", "cpu_s_per_mpkt", "maxrss_kib",
                  "written_bytes"]


def capture_summary(runs: list[dict]) -> dict:
    s = summarize(runs)
    ok = [r for r in runs if r.get("status") == "ok"]
    for k in CAPTURE_FIELDS:
        vals = [r[k] for r in ok if r.get(k) is not None]
        if vals:
            s[k] = {"min": min(vals), "median": statistics.median(vals), "max": max(vals)}
    return s


def run_capture(args, zcap: str) -> dict:
    cases = capture_cases(zcap)
    if args.only:
        cases = [c for c in cases if re.search(args.only, c.cid)]
    meta = [{"id": c.cid, "label": c.label, "argv": c.argv} for c in cases]
    result = {"cases": meta, "runs": {}, "corpus": None, "skipped": None}
    why = None
    if os.geteuid() != 0:
        why = "needs root (network namespaces, a veth pair, raw packet sockets)"
    elif not have("ip"):
        why = "needs ip (apt-get install iproute2)"
    elif not have("tcpreplay"):
        why = "needs tcpreplay (apt-get install tcpreplay) for the flood"
    if why or not cases:
        why = why or "no capture case matches --only"
        log(f"capture benchmark skipped: {why}")
        result["skipped"] = why
        return result
    corpus = make_capture_corpus(args)
    result["corpus"] = {"title": corpus.title, "packets": corpus.packets, "bytes": corpus.size, "path": corpus.path}
    veth = Veth()
    try:
        result["veth"] = {"near": f"{veth.near} in {veth.near_ns}", "far": f"{veth.far} in {veth.far_ns}",
                          "mtu": CAPTURE_MTU}
        for c in cases:
            absent = [t for t in c.needs if not have(t)]
            if absent:
                result["runs"][c.cid] = [missing_result(f"{', '.join(absent)} not installed", "unavailable")]
                continue
            runs = []
            for i in range(args.warmup + args.runs):
                warm = i < args.warmup
                r = capture_once(args, veth, c, corpus, 0 if warm else i - args.warmup + 1)
                note_capture(f"[capture] {c.cid}" + (" warm-up" if warm else ""),
                             i if warm else i - args.warmup, args.warmup if warm else args.runs, r)
                if r["status"] in ("missing", "failed"):
                    runs = [r]
                    break
                if not warm:
                    runs.append(r)
            result["runs"][c.cid] = runs
    finally:
        veth.close()
    return result


def note_capture(what: str, i: int, n: int, r: dict) -> None:
    if r.get("status") != "ok":
        log(f"{what}: {r['status']}: {(r.get('reason') or '')[:200]}")
        return
    log(f"{what} run {i + 1}/{n}: sent {r['sent']:,} in {r['flood_s']:.2f} s, captured {r['captured']:,} "
        f"({r['capture_ratio'] * 100:.2f}%), kernel drops {r['kernel_drops']}, {r['pkt_s']:,.0f} packets/s, "
        f"cpu {r['cpu_s']:.2f} s, rss {r['maxrss_kib'] / 1024:.0f} MiB, settle {r['settle_s']:.1f} s")


def pct(x) -> str:
    return "–" if x is None else f"{x * 100:.2f}%"


def count(x) -> str:
    return "–" if x is None else f"{round(x):,}"


def capture_table(cap: dict) -> list[str]:
    lines = ["| case | captured packets/s | capture ratio | missing | kernel drops (reported) | sent | "
             "flood s | CPU s | CPU s per M packets | peak RSS MiB | on disk MB |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for m in cap["cases"]:
        s = capture_summary(cap["runs"].get(m["id"], []))
        bad = status_cell(s)
        if bad and not s.get("pkt_s"):
            lines.append(f"| {md_cell(m['label'])} | {bad} |" + "  |" * 9)
            continue
        cr = s["capture_ratio"]
        ratio = pct(cr["median"]) if s["runs"] <= 1 or pct(cr["min"]) == pct(cr["max"]) else \
            f"{pct(cr['median'])} ({pct(cr['min'])}–{pct(cr['max'])})"
        lines.append(
            f"| {md_cell(m['label'])} | {spread(s, 'pkt_s')} | {ratio} | {count(med(s, 'missing'))} | "
            f"{count(med(s, 'kernel_drops'))} | {count(med(s, 'sent'))} | {spread(s, 'flood_s')} | {spread(s, 'cpu_s')} | "
            f"{f3(med(s, 'cpu_s_per_mpkt'))} | {spread(s, 'maxrss_kib', 1024)} | {f3(med(s, 'written_bytes') / MB)} |")
    return lines


def capture_ratio_table(cap: dict) -> list[str]:
    summ = {m["id"]: capture_summary(cap["runs"].get(m["id"], [])) for m in cap["cases"]}
    peers = [p for p in ("capture-tcpdump", "capture-dumpcap") if med(summ.get(p, {}), "pkt_s")]
    zc = [m for m in cap["cases"] if m["id"].startswith("capture-zcap") and med(summ[m["id"]], "pkt_s")]
    if not peers or not zc:
        return []
    name = {"capture-tcpdump": "tcpdump", "capture-dumpcap": "dumpcap"}
    lines = ["| zcap case | " + " | ".join(f"packets/s ÷ {name[p]}" for p in peers) + " | "
             + " | ".join(f"capture ratio ÷ {name[p]}" for p in peers) + " |",
             "| --- |" + " ---: |" * (2 * len(peers))]
    for m in zc:
        z = summ[m["id"]]
        cells = [f"{med(z, 'pkt_s') / med(summ[p], 'pkt_s'):.2f}×" for p in peers]
        cells += [f"{med(z, 'capture_ratio') / med(summ[p], 'capture_ratio'):.2f}×" if med(summ[p], "capture_ratio")
                  else "–" for p in peers]
        lines.append(f"| {md_cell(m['label'])} | " + " | ".join(cells) + " |")
    return lines


def render_capture(args, cap: dict) -> list[str]:
    out = ["## Live capture: tcpreplay --topspeed over a veth pair", ""]
    if cap.get("skipped"):
        return out + [f"Skipped: {cap['skipped']}.", ""]
    c = cap["corpus"]
    v = cap.get("veth", {})
    out.append(f"`tcpreplay -K -i {v.get('far', 'vethB')} --topspeed` floods {c['title']} ({human(c['bytes'])}) "
               f"from the far namespace; each capturer runs on the near end ({v.get('near', 'vethA')}, MTU "
               f"{v.get('mtu', CAPTURE_MTU)}) via `ip netns exec` and is stopped with SIGINT once its output "
               f"has not grown for 1 s after the flood. Captured packets/s = packets in the output ÷ the flood's "
               f"duration (tcpreplay's own); capture ratio = in the output ÷ sent; missing = sent − in the output; "
               f"kernel drops as the capturer reports them. Rings: zcap's default {RING_MIB} MiB per capture "
               f"thread (64 × 4 MiB; twice that with --fanout 2), tcpdump and dumpcap -B {RING_MIB} MiB. The flood "
               f"and the capturer share this host's CPUs: a veth measures the capture path here, not a NIC. "
               f"Packets/s cannot exceed the flood's rate, which moves with the host's load: where every case "
               f"captures everything, compare capture ratio and CPU s, not packets/s. The kernel's copy into "
               f"the ring runs in the sender's softirq and is mostly charged to tcpreplay (flood_cpu_s in "
               f"results.json), so CPU s is the capturer's own work: reading the ring, writing, compressing.")
    out.append("")
    out += capture_table(cap)
    out.append("")
    rt = capture_ratio_table(cap)
    if rt:
        out.append("zcap ÷ peer, medians (above 1: zcap captured more per second / a larger share):")
        out.append("")
        out += rt
        out.append("")
    for m in cap["cases"]:
        argv = re.sub(r"\S*/zcap ", "zcap ", " ".join(fmt_argv(m["argv"], {"iface": "IF", "out": "OUT"})) + " ")
        out.append(f"- `{m['id']}`: `ip netns exec NEAR_NS {argv.strip()}`")
    out.append("")
    return out


# --------------------------------------------------------------------------------------


def note_run(what: str, i: int, n: int, r: dict) -> None:
    if r.get("status") not in ("ok", "wrong"):
        log(f"{what}: {r['status']}: {(r.get('reason') or '')[:200]}")
        return
    bits = []
    if "mb_s" in r:
        bits.append(f"{r['mb_s']:.0f} MB/s")
    if "wall_s" in r:
        bits.append(f"{r['wall_s']:.2f} s")
    if "cpu_s" in r:
        bits.append(f"cpu {r['cpu_s']:.2f} s")
    if "maxrss_kib" in r:
        bits.append(f"rss {r['maxrss_kib'] / 1024:.0f} MiB")
    if "read_bytes" in r:
        bits.append(f"read {r['read_bytes'] / MB:.1f} MB")
    if r.get("status") == "wrong":
        bits.append(f"WRONG: {r.get('reason')}")
    log(f"{what} run {i + 1}/{n}: " + ", ".join(bits))


def parse_args(argv):
    p = argparse.ArgumentParser(
        prog="tools/bench/run",
        description="Benchmark zcap side by side with socat, tcpdump, dumpcap, zstd and tcpreplay on the same "
                    "input in the same run, and print one table.",
        epilog="Results go to WORKDIR/results/<time>/results.{md,json}; the markdown is also printed. "
               "Sizes take K/M/G suffixes (binary).")
    p.add_argument("--size", type=parse_size, default=GIB, help="corpus size (default 1G)")
    p.add_argument("--tiny", action="store_true",
                   help="smoke run: 4 MiB corpora, 16 MiB query archive (query included)")
    p.add_argument("--runs", type=int, default=3, help="runs of every case (default 3; medians need 3)")
    p.add_argument("--warmup", type=int, default=1, help="discarded runs before the measured ones (default 1; 0 with --tiny)")
    p.add_argument("--no-install", action="store_true", help="do not apt-get anything; skip cases whose tool is missing")
    p.add_argument("--zcap", metavar="PATH", help="use this zcap binary instead of building --release")
    p.add_argument("--workdir", default="/tmp/zcap-bench", help="corpora, outputs and results (default /tmp/zcap-bench)")
    p.add_argument("--keep", action="store_true", help="keep corpora and the query archive for the next run")
    p.add_argument("--only", metavar="REGEX", help="run only the ingest (and --capture) cases whose id matches (see --list)")
    p.add_argument("--list", action="store_true", help="list the case ids and exit")
    p.add_argument("--corpus", default=None,
                   help="which corpora: realistic,full (default both; realistic with --index-cost)")
    p.add_argument("--index-cost", action="store_true",
                   help="only the flow index's cost to the writer: zcap record -r FILE at zstd:1 with the index "
                        "and with --no-flow-index (default compress threads, and --compress-threads 0), "
                        "zstd -1 -T2 FILE for reference, round robin; realistic corpus, no replay")
    p.add_argument("--senders", type=int, default=8, help="concurrent senders of the multi-sender cases (default 8)")
    p.add_argument("--no-ingest", action="store_true", help="skip the ingest benchmark")
    p.add_argument("--no-replay", action="store_true", help="skip the replay benchmark")
    p.add_argument("--query", action="store_true", help="run the query benchmark (builds a --query-size archive)")
    p.add_argument("--s3", action="store_true",
                   help="run the object-storage benchmark on the query archive: zcap upload against aws s3 cp to a "
                        "local s3s-fs, then zcap cat s3://… of the query window against downloading the overlapping "
                        "segments")
    p.add_argument("--capture", action="store_true",
                   help="run the live-capture benchmark: tcpreplay floods a veth pair, zcap record -i, tcpdump and "
                        "dumpcap capture it (root)")
    p.add_argument("--capture-packets", type=int, default=2_000_000, metavar="N",
                   help="packets tcpreplay floods per capture run (default 2000000, about 1.4 GB)")
    p.add_argument("--flow-query", action="store_true",
                   help="run the filtered-query benchmark: zcap cat ARCH 'host X' (through the flow index) against "
                        "zstd -dc | tcpdump -r - -w - 'host X' over every segment, on an archive where host X is in "
                        "about 1%% of the frames (built from the query archive's generator, --flow-query-size)")
    p.add_argument("--flow-query-size", type=parse_size, default=None,
                   help="raw bytes of the filtered-query archive (default --query-size)")
    p.add_argument("--query-size", type=parse_size, default=10 * GIB, help="raw bytes of the query archive (default 10G)")
    p.add_argument("--query-span", type=float, default=4 * 3600, help="seconds of traffic the query archive spans (default 4 h)")
    p.add_argument("--query-window", type=int, default=60, help="seconds cut out by the query (default 60)")
    p.add_argument("--segment-size", type=parse_size, default=None,
                   help="rotation size for tcpdump -C, dumpcap -b filesize and zcap -C (default 256 MB, or size/4 when smaller)")
    a = p.parse_args(argv)
    if a.tiny:
        a.size = 4 * MIB
        a.query = True
        a.query_size = 16 * MIB
        a.warmup = 0
    if a.flow_query_size is None:
        a.flow_query_size = a.query_size
    if a.runs < 1 or a.runs > 100:
        p.error("--runs must be 1..100")
    if a.warmup < 0 or a.warmup > 10:
        p.error("--warmup must be 0..10")
    if a.senders < 2 or a.senders > 64:
        p.error("--senders must be 2..64")
    if a.capture_packets < 1000:
        p.error("--capture-packets must be at least 1000")
    if a.size < 64 * 1024:
        p.error("--size must be at least 64K")
    if a.index_cost:
        if a.only:
            p.error("--index-cost picks its own cases; leave out --only")
        a.only = INDEX_COST_ONLY
        a.no_replay = True
        if a.corpus is None:
            a.corpus = "realistic"
    if a.corpus is None:
        a.corpus = "realistic,full"
    a.corpora = [c.strip() for c in a.corpus.split(",") if c.strip()]
    for c in a.corpora:
        if c not in CORPORA:
            p.error(f"--corpus: unknown {c!r} (realistic, full)")
    a.workdir = os.path.abspath(a.workdir)
    if a.segment_size is None:
        a.segment_size = min(256 * 1_000_000, max(1_000_000, a.size // 4))
    return a


def main(argv) -> int:
    if argv and argv[0] == "_send":
        return cmd_send(argv[1:])
    args = parse_args(argv)
    if args.list:
        for c in ingest_cases(args, "zcap", args.segment_size):
            if not args.only or re.search(args.only, c.cid):
                print(f"{c.cid:26} {c.label}")
        for c in capture_cases("zcap"):
            if not args.only or re.search(args.only, c.cid):
                print(f"{c.cid:26} {c.label} (--capture)")
        return 0
    atexit.register(kill_all)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _on_signal)
    if args.runs < 3:
        log(f"--runs {args.runs}: fewer than 3 runs, medians are not meaningful")
    if not args.no_install:
        install_peers(args)
    # The ingest and replay benchmarks cannot run without these; the others skip the rows
    # whose tool is missing.
    for t in REQUIRED if not (args.no_ingest and args.no_replay) else ():
        if not have(t):
            die(f"{t} is required (apt-get install {TOOLS[t]})")
    zcap = build_zcap(args)
    os.makedirs(args.workdir, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    resdir = os.path.join(args.workdir, "results", stamp)
    os.makedirs(resdir, exist_ok=True)
    info = machine_info(args, zcap)
    report = {"machine": info, "args": {k: v for k, v in vars(args).items()}, "ingest": {}, "replay": None,
              "query": None, "flow_query": None, "s3": None, "capture": None, "commands": {}}
    failures = 0
    started = time.monotonic()
    corpora = {}
    try:
        for name in args.corpora if not (args.no_ingest and args.no_replay) else []:
            corpora[name] = make_corpus(args, name)
        if not args.no_ingest:
            cases = ingest_cases(args, zcap, args.segment_size)
            if args.only:
                cases = [c for c in cases if re.search(args.only, c.cid)]
            for c in cases:
                report["commands"][c.cid] = {"label": c.label, "kind": c.kind, "argv": c.argv,
                                             "stdout": c.stdout_file, "senders": c.senders}
            for name, corpus in corpora.items():
                per = {}
                for c, runs in measure_cases(args, cases, corpus, name).items():
                    per[c] = {"runs": runs, "summary": summarize(runs)}
                    if per[c]["summary"]["status"] in ("failed", "wrong"):
                        failures += 1
                report["ingest"][name] = {"corpus": {"title": corpus.title, "bytes": corpus.size,
                                                     "packets": corpus.packets, "path": corpus.path},
                                          "cases": per, "index_cost": index_cost(per)}
        if not args.no_replay and corpora:
            corpus = corpora.get("realistic") or next(iter(corpora.values()))
            arch = os.path.join(args.workdir, "replay-archive")
            rm(arch)
            r = subprocess.run([zcap, "record", "-r", corpus.path, "-o", arch, "--compress", "zstd:1"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120 + corpus.size / MB)
            meta, results = run_replay(args, zcap, corpus, arch if r.returncode == 0 else None)
            rm(arch)
            report["replay"] = {"corpus": corpus.name, "senders": meta, "runs": results}
            for m in meta:
                if summarize(results.get(m["id"], []))["status"] in ("failed", "wrong"):
                    failures += 1
        if args.query:
            report["query"] = run_query(args, zcap)
            for m in report["query"]["methods"]:
                if summarize(report["query"]["runs"].get(m["id"], []))["status"] in ("failed", "wrong"):
                    failures += 1
            if not all(report["query"]["same_records_as_zcap_cat"].values()):
                failures += 1
        if args.flow_query:
            report["flow_query"] = run_flow_query(args, zcap)
            failures += flowq_failed(report["flow_query"])
        if args.s3:
            report["s3"] = run_s3(args, zcap)
            failures += s3_failed(report["s3"])
        if args.capture:
            report["capture"] = run_capture(args, zcap)
            for m in report["capture"]["cases"]:
                if summarize(report["capture"]["runs"].get(m["id"], []))["status"] in ("failed", "wrong"):
                    failures += 1
    finally:
        kill_all()
        rm(os.path.join(args.workdir, "out"))
        rm(os.path.join(args.workdir, "s3"))
        if not args.keep:
            rm(os.path.join(args.workdir, "corpus"))
            rm(os.path.join(args.workdir, "query"))
            rm(os.path.join(args.workdir, "flowq"))
    info["loadavg_end"] = list(os.getloadavg())
    report["elapsed_s"] = time.monotonic() - started
    md = render(args, report)
    with open(os.path.join(resdir, "results.md"), "w") as f:
        f.write(md)
    with open(os.path.join(resdir, "results.json"), "w") as f:
        json.dump(report, f, indent=1, default=str)
    print(md)
    log(f"results in {resdir}/results.md and results.json ({report['elapsed_s']:.0f} s)")
    if failures:
        log(f"{failures} case(s) failed or gave wrong output (see the table)")
        return 1
    return 0


def measure_cases(args, cases: list, corpus: Corpus, name: str) -> dict:
    """Every case's warm-ups, then the measured runs round robin: run 1 of every case, then
    run 2 of every case, ... A VM's speed drifts over minutes (other guests, frequency), and
    a ratio between two cases measured minutes apart would carry that drift; measured in
    turn, each case's median sees the same spells. A case stops at its first missing or
    failed run."""
    runs: dict = {}
    live = []
    for c in cases:
        absent = [t for t in c.needs if not have(t)]
        if absent:
            runs[c.cid] = [missing_result(f"{', '.join(absent)} not installed", "unavailable")]
            continue
        runs[c.cid] = []
        ok = True
        for i in range(args.warmup):
            r = run_once(args, c, corpus, 0)
            note_run(f"[{name}] {c.cid} warm-up", i, args.warmup, r)
            if r["status"] in ("missing", "failed"):
                runs[c.cid] = [r]
                ok = False
                break
        if ok:
            live.append(c)
    for i in range(args.runs):
        for c in list(live):
            r = run_once(args, c, corpus, i + 1)
            runs[c.cid].append(r)
            note_run(f"[{name}] {c.cid}", i, args.runs, r)
            if r["status"] in ("missing", "failed"):
                live.remove(c)
    return runs


def closing_figures(report) -> list[str]:
    """The figures issues 2 and 3 ask for in their closing notes, medians, per corpus."""
    out = []
    for name, block in report["ingest"].items():
        cases = block["cases"]
        size = block["corpus"]["bytes"]

        def get(cid, k):
            c = cases.get(cid)
            return med(c["summary"], k) if c and c["summary"]["status"] == "ok" else None

        lines = []
        for cid, what in (("zcap-read-zstd1", "record --read, zstd:1"), ("zcap-read-none", "record --read, none")):
            mb, pk, disk = get(cid, "mb_s"), get(cid, "pkt_s"), get(cid, "written_bytes")
            if mb:
                lines.append(f"- {what}: {mb:,.0f} MB/s, {pk:,.0f} packets/s, stored ratio {size / disk:.2f}")
        z = get("zstd-T1", "mb_s")
        if z:
            lines.append(f"- zstd -1 -T1 on the same file: {z:,.0f} MB/s, ratio {size / get('zstd-T1', 'written_bytes'):.2f}")
        for senders in ("", "-x8"):
            for rx in ("ring", "recv", "zcrx-emulated"):
                for tag, comp in (("zstd1", "zstd:1"), ("none", "none")):
                    cid = f"zcap-{rx}-{tag}{senders}"
                    mb = get(cid, "mb_s")
                    if mb:
                        lines.append(f"- loopback --rx {rx} --compress {comp}, {8 if senders else 1} sender(s): "
                                     f"{mb:,.0f} MB/s, {get(cid, 'pkt_s'):,.0f} packets/s, peak RSS "
                                     f"{get(cid, 'maxrss_kib') / 1024:.0f} MiB, {get(cid, 'cpu_s_per_gb'):.2f} CPU s/GB")
                    elif cid in cases:
                        lines.append(f"- loopback --rx {rx} --compress {comp}, {8 if senders else 1} sender(s): "
                                     f"{cases[cid]['summary']['status']}")
        for r in block.get("index_cost") or []:
            lines.append(f"- flow index, {r['what']}: {r['mb_s']:,.0f} MB/s with, {r['mb_s_no_index']:,.0f} without "
                         f"({r['ratio_of_medians']:.3f}×; target ≥ {INDEX_TARGET:.2f}×)")
        f = get("socat-file", "mb_s")
        if f:
            lines.append(f"- the same stream into socat → file: {f:,.0f} MB/s, "
                         f"{get('socat-file', 'cpu_s_per_gb'):.2f} CPU s/GB")
        if lines:
            out += [f"### Closing-note figures, {name} corpus (medians)", ""] + lines + [""]
    return out


def render(args, report) -> str:
    info = report["machine"]
    out = ["# zcap benchmark results", ""]
    out.append(f"{time.strftime('%Y-%m-%d %H:%M %Z')}, zcap {info.get('versions', {}).get('zcap', '?')} "
               f"(git {info.get('git', '?')}), {args.runs} run(s) per case after {args.warmup} discarded warm-up run(s); cells are median (min–max).")
    out.append("")
    out.append(f"Machine: {info.get('nproc')} CPUs ({info.get('cpu', '?')}), {info.get('memory', '?')} RAM, "
               f"Linux {info.get('kernel')}, disk {info.get('disk', '?')}; load average "
               f"{info['loadavg_start'][0]:.2f} at the start, {info.get('loadavg_end', [0])[0]:.2f} at the end.")
    out.append("Peers: " + ", ".join(f"{k} {v}" for k, v in info.get("versions", {}).items() if k != "zcap") + ".")
    out.append("")
    cases = ingest_cases(args, "zcap", args.segment_size)
    if args.only:
        cases = [c for c in cases if re.search(args.only, c.cid)]
    for name, block in report["ingest"].items():
        c = block["corpus"]
        out.append(f"## Ingest: {c['title']}")
        out.append("")
        out.append(f"{human(c['bytes'])}, {c['packets']:,} packets, streamed over loopback TCP by one sendfile(2) "
                   f"sender ({args.senders} for the multi-sender rows, each a 1/{args.senders} part); "
                   f"file rows read the corpus from the page cache.")
        out.append("")
        summ = {cid: v["summary"] for cid, v in block["cases"].items()}
        out += ingest_table(cases, summ)
        out.append("")
        rt = ratio_table(cases, summ)
        if rt:
            out.append("zcap ÷ peer, median MB/s (above 1: zcap is faster):")
            out.append("")
            out += rt
            out.append("")
        it = index_cost_table(block["cases"])
        if it:
            out.append(f"### Flow index: the writer's cost, {name} corpus")
            out.append("")
            out.append("The same `zcap record -r FILE` with the default flow index and with `--no-flow-index`, "
                       "measured in turn in every round. *per round* is the index run's MB/s ÷ the no-index run's "
                       "of the same round, median (min–max) over the rounds; the target (issue 16) is at most "
                       f"{100 - INDEX_TARGET * 100:.0f}% slower at zstd:1, i.e. ≥ {INDEX_TARGET:.2f}×.")
            out.append("")
            out += it
            out.append("")
    out += closing_figures(report)
    if report.get("replay"):
        r = report["replay"]
        out.append(f"## Replay: sending the {r['corpus']} corpus into socat → /dev/null")
        out.append("")
        out += replay_table(r["senders"], r["runs"])
        out.append("")
    if report.get("query"):
        q = report["query"]
        a = q["archive"]
        out.append(f"## Query: one {args.query_window} s window out of {human(a['raw_bytes'])} "
                   f"({a['packets']:,} packets over {a['span_s'] / 3600:.1f} h, {a['segments']} segments, "
                   f"{human(a['stored_bytes'])} stored)")
        out.append("")
        out.append("Cold cache: the archive's pages are evicted (fsync + POSIX_FADV_DONTNEED) before every run.")
        out.append("")
        out += query_table(q)
        out.append("")
    if report.get("flow_query"):
        out += render_flow_query(args, report["flow_query"])
    if report.get("s3"):
        out += render_s3(args, report["s3"])
    if report.get("capture"):
        out += render_capture(args, report["capture"])
    if not report["ingest"]:
        return "\n".join(out)
    out.append("## How each row was run")
    out.append("")
    out.append("- Wall time: from the sender's first connected byte to the receiver's exit after EOF "
               "(file rows: spawn to exit). *MB/s incl. sync* adds a `sync` right after the exit: zcap "
               "fsyncs every segment before it exits, the peers leave dirty pages behind.")
    out.append("- CPU s: user+sys of the receiver from wait4 rusage (all its threads, and both sides of a "
               "pipeline); peak RSS: ru_maxrss; on disk: du of the output. MB = 10^6 bytes.")
    out.append("- `zstd -1 (socket → file)` and tcpdump/dumpcap get the accepted socket as stdin "
               "(what `socat TCP-LISTEN:P EXEC:…,nofork` does); socat and zcap listen themselves.")
    for cid, c in report["commands"].items():
        argv = re.sub(r"\S*/zcap ", "zcap ", " ".join(c["argv"]) + " ")
        redirect = f" > {c['stdout']}" if c.get("stdout") else ""
        stdin = " < accepted socket" if c["kind"] == "stdin" else ""
        out.append(f"- `{cid}`: `{argv.strip()}{stdin}{redirect}`")
    out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
