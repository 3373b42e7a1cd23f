#!/usr/bin/env bash
# zcrx-selftest.sh — prove byte-exact zero-copy capture on a host with a zcrx-capable NIC.
#
# Runs `zcap doctor`; changes the NIC only with --configure; generates a pcap of --size GiB,
# has the peer send it as PCAP-over-IP (over ssh, with nc on the peer) into
# `zcap record --rx zcrx --zcrx-iface IF --queue Q --steer`; checks `zcap cat` of the archive
# against the sent capture byte for byte; prints throughput and how many streams arrived by
# the kernel's copy fallback (not steered to the queue). The capture is larger than the
# receive area (--area-size), so every buffer goes round the refill ring many times. Then an
# unsteered case: the same kind of stream to a port no rule steers, so the kernel copies it
# into the area; it must either record byte-exact (kernels with ZCRX_CTRL_FLUSH_RQ) or end
# with zcap's "not steered" error within a bounded time — never hang. See docs/ZCRX.md.
set -euo pipefail

usage() {
  cat <<'USAGE'
usage: sudo tools/zcrx-selftest.sh --iface IF --queue Q --peer SSH_HOST [options]

  --iface IF         NIC to receive on (bnxt_en, mlx5_core, gve or fbnic)
  --queue Q          rx queue to register for zero-copy receive
  --peer HOST        ssh destination that sends the data (needs nc); its packets must reach IF
  --addr ADDR        address of this host as the peer reaches it (default: IF's first IPv4)
  --size N           GiB to send (default 4; must be larger than the area)
  --area-size SIZE   zcap's receive area (default 256MiB: the capture is 16x larger)
  --port P           PCAP-over-IP port (default 57012); P+1 is the unsteered case's port
  --no-unsteered     skip the unsteered (copy fallback) case
  --configure        set up the NIC: tcp-data-split on, hds-thresh 0, RSS over queues 0..Q-1
  --zcap PATH        zcap binary (default: target/release/zcap, else zcap on PATH)
  --workdir DIR      where the capture and archive go (default: a new dir under /var/tmp)
  --keep             keep the work directory
  -h, --help         this text

Exit status: 0 when the archive matches the sent capture byte for byte.
USAGE
}

IFACE="" QUEUE="" PEER="" ADDR="" SIZE=4 PORT=57012 CONFIGURE=0 ZCAP="" WORK="" KEEP=0
AREA=256MiB UNSTEERED=1
while [ $# -gt 0 ]; do
  case "$1" in
    --iface) IFACE=$2; shift 2 ;;
    --queue) QUEUE=$2; shift 2 ;;
    --peer) PEER=$2; shift 2 ;;
    --addr) ADDR=$2; shift 2 ;;
    --size) SIZE=$2; shift 2 ;;
    --port) PORT=$2; shift 2 ;;
    --area-size) AREA=$2; shift 2 ;;
    --no-unsteered) UNSTEERED=0; shift ;;
    --configure) CONFIGURE=1; shift ;;
    --zcap) ZCAP=$2; shift 2 ;;
    --workdir) WORK=$2; shift 2 ;;
    --keep) KEEP=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "zcrx-selftest: unknown argument $1" >&2; usage >&2; exit 2 ;;
  esac
done
[ -n "$IFACE" ] && [ -n "$QUEUE" ] && [ -n "$PEER" ] || { usage >&2; exit 2; }

say() { printf 'zcrx-selftest: %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }

HERE=$(cd "$(dirname "$0")/.." && pwd)
if [ -z "$ZCAP" ]; then
  if [ -x "$HERE/target/release/zcap" ]; then ZCAP="$HERE/target/release/zcap"; else ZCAP=$(command -v zcap || true); fi
fi
[ -x "$ZCAP" ] || die "no zcap binary (build with cargo build --release, or pass --zcap)"
[ "$(id -u)" = 0 ] || die "run as root: registering a zcrx queue and ethtool changes need CAP_NET_ADMIN"
for t in ethtool ssh python3 cmp; do command -v "$t" >/dev/null || die "$t is required"; done
if [ -z "$ADDR" ]; then
  ADDR=$(ip -4 -o addr show dev "$IFACE" | awk '{print $4}' | cut -d/ -f1 | head -1)
  [ -n "$ADDR" ] || die "no IPv4 address on $IFACE; pass --addr"
fi
if [ -z "$WORK" ]; then WORK=$(mktemp -d /var/tmp/zcrx-selftest.XXXXXX); else mkdir -p "$WORK"; fi
cleanup() { [ -n "${ZPID:-}" ] && kill "$ZPID" 2>/dev/null || true; [ "$KEEP" = 1 ] || rm -rf "$WORK"; }
trap cleanup EXIT

say "1/5 doctor (with --probe: registers the queue once)"
if ! "$ZCAP" doctor --iface "$IFACE" --queue "$QUEUE" --probe; then
  if [ "$CONFIGURE" = 1 ]; then
    say "2/5 configuring $IFACE (--configure)"
    ethtool -G "$IFACE" tcp-data-split on
    ethtool -G "$IFACE" hds-thresh 0 2>/dev/null || say "  (driver has no hds-thresh setting)"
    if [ "$QUEUE" -gt 0 ]; then ethtool -X "$IFACE" equal "$QUEUE"; fi
    ethtool -K "$IFACE" ntuple on 2>/dev/null || true
    "$ZCAP" doctor --iface "$IFACE" --queue "$QUEUE" --probe || die "still not ready for zero-copy; see the report above"
  else
    die "the host is not ready (see the fixes above); rerun with --configure to apply NIC settings"
  fi
else
  say "2/5 NIC already configured; not touching it"
fi

say "3/5 generating ${SIZE} GiB of pcap"
python3 "$HERE/tools/gen-pcap.py" --bytes "${SIZE}G" --mix realistic --payload mixed -o "$WORK/sent.pcap"
BYTES=$(stat -c %s "$WORK/sent.pcap")
scp -q "$WORK/sent.pcap" "$PEER:/tmp/zcrx-selftest-sent.pcap" || die "cannot copy the capture to $PEER"

say "4/5 recording from $PEER into $WORK/archive (zcrx on $IFACE queue $QUEUE, --steer, area $AREA)"
"$ZCAP" record --listen "0.0.0.0:$PORT" --rx zcrx --zcrx-iface "$IFACE" --queue "$QUEUE" --steer \
  --area-size "$AREA" -o "$WORK/archive" 2>"$WORK/record.log" &
ZPID=$!
for _ in $(seq 50); do
  ss -ltn "sport = :$PORT" | grep -q LISTEN && break
  kill -0 "$ZPID" 2>/dev/null || { cat "$WORK/record.log" >&2; die "zcap record exited early"; }
  sleep 0.1
done
START=$(date +%s.%N)
ssh "$PEER" "nc -q 1 $ADDR $PORT < /tmp/zcrx-selftest-sent.pcap || nc -N $ADDR $PORT < /tmp/zcrx-selftest-sent.pcap"
# zcap closes its socket at the stream's EOF, after reading every byte: wait for that, then
# stop it and let it finalize (stopping earlier would cut the stream short).
for _ in $(seq 600); do
  [ -z "$(ss -Htn state established "sport = :$PORT")" ] && break
  sleep 0.1
done
kill -INT "$ZPID"
wait "$ZPID" || { cat "$WORK/record.log" >&2; die "zcap record failed"; }
ZPID=""
END=$(date +%s.%N)
ssh "$PEER" rm -f /tmp/zcrx-selftest-sent.pcap || true
cat "$WORK/record.log" >&2

say "5/5 verifying byte for byte"
"$ZCAP" cat "$WORK/archive" > "$WORK/got.pcap"
"$ZCAP" verify "$WORK/archive" >/dev/null || die "zcap verify failed"
if cmp -s "$WORK/sent.pcap" "$WORK/got.pcap"; then
  RESULT="byte-exact (file header and records)"
elif cmp -s <(tail -c +25 "$WORK/sent.pcap") <(tail -c +25 "$WORK/got.pcap"); then
  RESULT="byte-exact records (file header rewritten)"
else
  cmp "$WORK/sent.pcap" "$WORK/got.pcap" | head -1 >&2 || true
  KEEP=1
  die "MISMATCH: the archive does not reproduce the sent capture (kept in $WORK)"
fi
FALLBACK=$(grep -c "copy fallback" "$WORK/record.log" || true)
python3 - "$BYTES" "$START" "$END" "$FALLBACK" "$RESULT" <<'PY'
import sys
b, s, e, fb, res = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
secs = max(e - s, 1e-9)
print(f"zcrx-selftest: {res}: {b/2**30:.2f} GiB in {secs:.1f} s = {b*8/secs/1e9:.2f} Gbit/s "
      f"(send start to archive finalized); streams by copy fallback: {fb}"
      + ("" if fb == 0 else " (NOT zero-copy: check the steering rule and RSS)"))
PY

[ "$UNSTEERED" = 1 ] || exit 0

# The unsteered case: no ntuple rule for PORT+1 and the queue kept out of RSS, so the flow
# lands on another queue and the kernel copies it into the area (copy fallback).
UPORT=$((PORT + 1))
say "6 (extra) unsteered stream to port $UPORT (no --steer): copy fallback, larger than the area"
"$ZCAP" record --listen "0.0.0.0:$UPORT" --rx zcrx --zcrx-iface "$IFACE" --queue "$QUEUE" \
  --area-size "$AREA" --max-streams 1 -o "$WORK/unsteered" 2>"$WORK/unsteered.log" &
ZPID=$!
for _ in $(seq 50); do
  ss -ltn "sport = :$UPORT" | grep -q LISTEN && break
  kill -0 "$ZPID" 2>/dev/null || { cat "$WORK/unsteered.log" >&2; die "zcap record exited early"; }
  sleep 0.1
done
scp -q "$WORK/sent.pcap" "$PEER:/tmp/zcrx-selftest-sent.pcap" || die "cannot copy the capture to $PEER"
# The sender may be cut off (not steered): that is one of the two good outcomes.
timeout 600 ssh "$PEER" "nc -q 1 $ADDR $UPORT < /tmp/zcrx-selftest-sent.pcap || nc -N $ADDR $UPORT < /tmp/zcrx-selftest-sent.pcap" || true
ssh "$PEER" rm -f /tmp/zcrx-selftest-sent.pcap || true
# --max-streams 1: zcap exits once the stream ended, either way; bounded here.
for _ in $(seq 1200); do kill -0 "$ZPID" 2>/dev/null || break; sleep 0.1; done
if kill -0 "$ZPID" 2>/dev/null; then
  kill -INT "$ZPID"; wait "$ZPID" || true; ZPID=""
  cat "$WORK/unsteered.log" >&2
  KEEP=1
  die "FAIL: the unsteered stream neither finished nor ended as not steered within 2 minutes of the send (kept in $WORK)"
fi
wait "$ZPID" || true
ZPID=""
cat "$WORK/unsteered.log" >&2
if grep -q "not steered to $IFACE queue $QUEUE" "$WORK/unsteered.log"; then
  say "unsteered: ended with the not-steered error, as expected on kernels without ZCRX_CTRL_FLUSH_RQ"
elif "$ZCAP" cat "$WORK/unsteered" > "$WORK/unsteered.pcap" &&
  cmp -s <(tail -c +25 "$WORK/sent.pcap") <(tail -c +25 "$WORK/unsteered.pcap"); then
  say "unsteered: byte-exact through the copy fallback (ZCRX_CTRL_FLUSH_RQ)"
else
  KEEP=1
  die "FAIL: the unsteered stream ended without the not-steered error and does not match (kept in $WORK)"
fi
