#!/bin/bash
# End-to-end relay benchmark: smtp-source -> MTA -> smtp-sink, 4 KiB
# messages, counted at the sink. The MTA is moatd (SMTP route to the sink)
# and, in the same run, a private Postfix relaying to the same sink with
# its default durability and default destination concurrency. Prints both
# rates (messages/second from the first connection until the sink has
# counted the last message) and their ratio. `make bench` runs this.
#
# Usage: bench/bench-relay.sh [options] [MOATD]
#   MOATD               moatd binary (default: $MOATD or build/moatd)
#   -n N                messages per run (default 20000)
#   -c "1 20 100"       concurrencies of smtp-source (each 1..1000)
#   -w DIR              working directory (default var/bench/relay)
#   --postfix-only      measure Postfix only
#   --moat-only         measure moatd only
#   --no-netns          do not run inside a private network namespace
#   -h, --help
# Env: BENCH_RUN_TIMEOUT  seconds allowed per run (default 600)
#
# Only 127.0.0.1 is used; as root the script re-executes itself in a new
# network namespace with nothing but loopback (unshare -n).
set -eu

prog=${0##*/}
here=$(cd "$(dirname "$0")" && pwd -P)
repo=$(cd "$here/.." && pwd -P)
# shellcheck source=bench/lib.sh
. "$here/lib.sh"

moatd=${MOATD:-$repo/build/moatd}
n=20000
concurrencies="1 20 100"
work=$repo/var/bench/relay
do_moat=1
do_postfix=1
use_netns=1
run_timeout=${BENCH_RUN_TIMEOUT:-600}
MSG_SIZE=4096

die() { echo "$prog: $*" >&2; exit 1; }
usage() { sed -n '/^# Usage:/,/^# Env:/p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-2}"; }
is_uint() { case $1 in ''|*[!0-9]*) return 1 ;; esac; }

orig_args=("$@")
while [ $# -gt 0 ]; do
  case $1 in
    -n) n=${2:?}; shift 2 ;;
    -c) concurrencies=${2:?}; shift 2 ;;
    -w) work=${2:?}; shift 2 ;;
    --postfix-only) do_moat=0; shift ;;
    --moat-only) do_postfix=0; shift ;;
    --no-netns) use_netns=0; shift ;;
    -h|--help) usage 0 ;;
    -*) echo "$prog: unknown option $1" >&2; usage ;;
    *) moatd=$1; shift ;;
  esac
done
is_uint "$n" && [ "$n" -ge 1 ] && [ "$n" -le 200000 ] || die "-n must be 1..200000"
is_uint "$run_timeout" && [ "$run_timeout" -ge 1 ] || die "bad BENCH_RUN_TIMEOUT"
for c in $concurrencies; do
  is_uint "$c" && [ "$c" -ge 1 ] && [ "$c" -le 1000 ] || die "bad concurrency: $c"
done

if [ "$use_netns" -eq 1 ] && [ -z "${MOAT_BENCH_NETNS:-}" ]; then
  if [ "$(id -u)" -eq 0 ] && command -v unshare >/dev/null && unshare -n true 2>/dev/null; then
    exec unshare -n env MOAT_BENCH_NETNS=1 bash "$0" "${orig_args[@]}"
  fi
  die "cannot create a private network namespace (needs root); rerun with --no-netns"
fi
[ -z "${MOAT_BENCH_NETNS:-}" ] || ip link set lo up

command -v smtp-source >/dev/null || die "smtp-source missing (scripts/install-deps.sh bench)"
command -v smtp-sink >/dev/null || die "smtp-sink missing (scripts/install-deps.sh bench)"
if [ "$do_moat" -eq 1 ]; then
  [ -x "$moatd" ] || die "$moatd: not an executable"
  moatd=$(cd "$(dirname "$moatd")" && pwd -P)/${moatd##*/}
fi
[ "$do_postfix" -eq 0 ] || [ "$(id -u)" -eq 0 ] || die "the Postfix peer needs root (or --moat-only)"
mkdir -p "$work"
work=$(cd "$work" && pwd -P)
case $work in /|"$repo"|"$HOME") die "refusing to work in $work" ;; esac
logs=$work/logs
moat_dir=$work/moat
pf_dir=$work/postfix
peer=$here/postfix-peer.sh
mkdir -p "$logs" "$moat_dir"

moat_pid="" sink_pid="" source_pid="" pf_started=0
stop_pid() {
  [ -n "$1" ] || return 0
  kill -TERM "$1" 2>/dev/null || true
  for _ in $(seq 1 100); do kill -0 "$1" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
}
cleanup() {
  rc=$?
  trap - EXIT INT TERM
  stop_pid "$source_pid"; stop_pid "$moat_pid"; stop_pid "$sink_pid"
  [ "$pf_started" -eq 0 ] || bash "$peer" stop "$pf_dir" >/dev/null 2>&1 || true
  exit "$rc"
}
trap cleanup EXIT
trap 'echo "$prog: interrupted" >&2; exit 130' INT TERM

wait_listen() {
  for _ in $(seq 1 100); do listening "$1" && return 0; sleep 0.1; done
  return 1
}

# --- the sink: counts messages (-c writes "sess=N quit=N mesg=N") ----------------
sink_port=$(free_port)
sink_out=$work/sink.count
start_sink() {
  : > "$sink_out"
  smtp-sink -u nobody -c "127.0.0.1:$sink_port" 1000 > "$sink_out" 2>"$logs/sink.err" &
  sink_pid=$!
  wait_listen "$sink_port" || die "smtp-sink did not listen"
}
stop_sink() { stop_pid "$sink_pid"; sink_pid=""; }
sink_count() {
  tail -c 256 "$sink_out" | tr '\r' '\n' | sed -n 's/.*mesg=\([0-9]*\).*/\1/p' | tail -n 1
}

# run PORT C LOG: sets ELAPSED, from start until the sink counted n
ELAPSED=""
run() {
  port=$1 c=$2 log=$3
  t0=$(now)
  timeout -k 5 "$run_timeout" smtp-source -4 -s "$c" -m "$n" -l "$MSG_SIZE" \
    -M client.bench.example -f sender@bench.example -t rcpt@sink.example \
    "127.0.0.1:$port" > "$log" 2>&1 &
  source_pid=$!
  st=0
  wait "$source_pid" || st=$?
  source_pid=""
  [ "$st" -eq 0 ] || { tail -n 5 "$log" >&2; return 1; }
  deadline=$(( $(date +%s) + run_timeout ))
  while :; do
    got=$(sink_count); got=${got:-0}
    [ "$got" -ge "$n" ] && break
    [ "$(date +%s)" -lt "$deadline" ] || { echo "$prog: sink has $got of $n" >&2; return 1; }
    sleep 0.02
  done
  t1=$(now)
  ELAPSED=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')
}
rate() { awk -v n="$1" -v t="$2" 'BEGIN { printf "%.1f", n / t }'; }

# --- moatd: public listener, SMTP route for sink.example to the sink --------------
moat_port=$(free_port)
while [ "$moat_port" = "$sink_port" ]; do moat_port=$(free_port); done
cat > "$moat_dir/moat.conf" <<EOF
# moatd configuration for bench/bench-relay.sh (generated)
hostname = "gw.bench.example";
user = "$(id -un)";
spool_dir = "$moat_dir/spool";
pidfile = "$moat_dir/moatd.pid";
control_socket = "$moat_dir/moatd.sock";
mail_log { path = "$moat_dir/mail.current"; }
listener "IncomingMail" {
  type = public;
  address = "127.0.0.1:$moat_port";
  max_connections = 5000;
  max_connections_per_ip = 5000; # every session comes from 127.0.0.1
  max_messages_per_connection = $((n + 1));
}
rat "IncomingMail" { "sink.example" = accept; "ALL" = reject; }
resolver { resolv_conf = ""; stub_zones = { "." = [ "127.0.0.1@9" ]; } }
smtp_route "sink.example" { hosts = [ "127.0.0.1:$sink_port" ]; }
EOF
"$moatd" -t -c "$moat_dir/moat.conf" > "$logs/moatd.log" 2>&1 || die "moatd -t failed"

bench_moat() {
  rm -rf "$moat_dir/spool" "$moat_dir/mail.current"
  start_sink
  "$moatd" -f -c "$moat_dir/moat.conf" >> "$logs/moatd.log" 2>&1 &
  moat_pid=$!
  wait_listen "$moat_port" || die "moatd did not listen"
  run "$moat_port" "$1" "$logs/source-moat-c$1.log" || return 1
  stop_pid "$moat_pid"; moat_pid=""
  stop_sink
  RATE=$(rate "$n" "$ELAPSED")
}

# Chosen now, distinct from the others: a port picked while moatd is
# stopped could be moatd's own, taken by Postfix for the next moatd run.
pf_port=$(free_port)
while [ "$pf_port" = "$moat_port" ] || [ "$pf_port" = "$sink_port" ]; do
  pf_port=$(free_port)
done
bench_postfix() {
  start_sink
  if [ "$pf_started" -eq 0 ]; then
    bash "$peer" setup "$pf_dir" "$pf_port" "relay:$sink_port" >/dev/null
    pf_started=1
  fi
  bash "$peer" start "$pf_dir" >/dev/null
  bash "$peer" flush-queue "$pf_dir"
  run "$pf_port" "$1" "$logs/source-postfix-c$1.log" || return 1
  bash "$peer" stop "$pf_dir" >/dev/null
  stop_sink
  RATE=$(rate "$n" "$ELAPSED")
}

echo "bench-relay: smtp-source -> MTA -> smtp-sink, $n messages of $MSG_SIZE bytes, counted at the sink"
echo "  host: $(nproc) CPUs, $(uname -r)${MOAT_BENCH_NETNS:+, private network namespace}"
results=""
for c in $concurrencies; do
  m="-" p="-" r="-"
  if [ "$do_moat" -eq 1 ]; then bench_moat "$c" || die "moatd run at c=$c failed (logs in $logs)"; m=$RATE; fi
  if [ "$do_postfix" -eq 1 ]; then bench_postfix "$c" || die "Postfix run at c=$c failed (logs in $logs)"; p=$RATE; fi
  if [ "$m" != "-" ] && [ "$p" != "-" ]; then
    r=$(awk -v a="$m" -v b="$p" 'BEGIN { printf "%.2f", a / b }')
  fi
  results="$results$(printf '%11s %9s %12s %15s %7s' "$c" "$n" "$m" "$p" "$r")
"
  echo "  c=$c done: moat $m msg/s, postfix $p msg/s" >&2
done
echo
echo "end-to-end relay (msg/s until the sink counted the last; ratio = moat / postfix)"
printf '%11s %9s %12s %15s %7s\n' concurrency messages "moat msg/s" "postfix msg/s" ratio
printf '%s' "$results"
{ date -u '+%Y-%m-%dT%H:%M:%SZ'; printf '%s' "$results"; } > "$work/last-results.txt"
