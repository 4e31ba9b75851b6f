#!/bin/bash
# Durable-acceptance benchmark: messages/second until the last 250, measured
# with Postfix's smtp-source (4 KiB messages) at several concurrencies against
# moatd and, in the same run, against Postfix's own smtpd on this machine with
# its default durability (a private instance on loopback that holds what it
# accepts). Prints both rates and their ratio, then moatd's resident memory
# with N idle sessions open. `make bench-accept` runs this.
#
# Usage: bench/bench-accept.sh [options] [MOATD]
#   MOATD               moatd binary (default: $MOATD or build/moatd)
#   -n N                messages per run at c>1 (default 5000)
#   -1 N                messages per run at c=1 (default 2000)
#   -c "1 20 100"       concurrencies (each 1..1000)
#   -w DIR              working directory (default var/bench/accept)
#   -i N                idle sessions for the memory figure (default 1000; 0: skip)
#   --postfix-only      measure Postfix only (no moatd needed)
#   --moat-only         measure moatd only (no Postfix needed)
#   --no-netns          do not run inside a private network namespace
#   -h, --help
# Env: BENCH_RUN_TIMEOUT  seconds allowed per smtp-source run (default 300)
#
# Everything talks to 127.0.0.1 only. When run as root the whole benchmark
# re-executes itself in a new network namespace that has nothing but the
# loopback interface (unshare -n), so no process it starts can reach any
# other address; --no-netns opts out. Each run starts from an empty spool /
# queue; Ctrl-C or an error stops whatever the script started.
set -eu

prog=${0##*/}
here=$(cd "$(dirname "$0")" && pwd -P)
repo=$(cd "$here/.." && pwd -P)
# shellcheck source=bench/lib.sh
. "$here/lib.sh"

# --- options ------------------------------------------------------------------
moatd=${MOATD:-$repo/build/moatd}
n_multi=5000
n_single=2000
concurrencies="1 20 100"
work=$repo/var/bench/accept
idle=1000
do_moat=1
do_postfix=1
use_netns=1
run_timeout=${BENCH_RUN_TIMEOUT:-300}
MAX_MESSAGES=100000
MSG_SIZE=4096

die() { echo "$prog: $*" >&2; exit 1; }
usage() { sed -n '/^# Usage:/,/^# Env:/p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-2}"; }
is_uint() { case $1 in ''|*[!0-9]*) return 1 ;; esac; }

orig_args=("$@")
while [ $# -gt 0 ]; do
  case $1 in
    -n) n_multi=${2:?}; shift 2 ;;
    -1) n_single=${2:?}; shift 2 ;;
    -c) concurrencies=${2:?}; shift 2 ;;
    -w) work=${2:?}; shift 2 ;;
    -i) idle=${2:?}; shift 2 ;;
    --postfix-only) do_moat=0; shift ;;
    --moat-only) do_postfix=0; shift ;;
    --no-netns) use_netns=0; shift ;;
    -h|--help) usage 0 ;;
    -*) echo "$prog: unknown option $1" >&2; usage ;;
    *) moatd=$1; shift ;;
  esac
done

for v in "$n_multi" "$n_single" "$idle" "$run_timeout"; do
  is_uint "$v" || die "not a number: $v"
done
in_range() { [ "$1" -ge "$2" ] && [ "$1" -le "$3" ]; }
in_range "$n_multi" 1 $MAX_MESSAGES || die "-n must be 1..$MAX_MESSAGES"
in_range "$n_single" 1 $MAX_MESSAGES || die "-1 must be 1..$MAX_MESSAGES"
in_range "$idle" 0 20000 || die "-i must be 0..20000"
in_range "$run_timeout" 1 3600 || die "BENCH_RUN_TIMEOUT must be 1..3600"
[ -n "$concurrencies" ] || die "no concurrency given"
for c in $concurrencies; do
  if ! is_uint "$c" || ! in_range "$c" 1 1000; then die "bad concurrency: $c"; fi
done
if [ "$do_moat" -eq 0 ] && [ "$do_postfix" -eq 0 ]; then
  die "--postfix-only and --moat-only exclude each other"
fi

# --- private network namespace -----------------------------------------------
if [ "$use_netns" -eq 1 ] && [ -z "${MOAT_BENCH_NETNS:-}" ]; then
  if [ "$(id -u)" -eq 0 ] && command -v unshare >/dev/null && command -v ip >/dev/null \
     && unshare -n true 2>/dev/null; then
    exec unshare -n env MOAT_BENCH_NETNS=1 bash "$0" "${orig_args[@]}"
  fi
  die "cannot create a private network namespace (needs root, unshare, ip); rerun with --no-netns to use the host's loopback"
fi
if [ -n "${MOAT_BENCH_NETNS:-}" ]; then
  ip link set lo up
fi

# --- prerequisites ------------------------------------------------------------
command -v smtp-source >/dev/null || die "smtp-source missing (scripts/install-deps.sh bench)"
if [ "$do_moat" -eq 1 ]; then
  [ -x "$moatd" ] || die "$moatd: not an executable (build it, or pass its path, or --postfix-only)"
  moatd=$(cd "$(dirname "$moatd")" && pwd -P)/${moatd##*/}
fi
if [ "$do_postfix" -eq 1 ]; then
  command -v postfix >/dev/null || die "postfix missing (scripts/install-deps.sh bench)"
  [ "$(id -u)" -eq 0 ] || die "the Postfix peer needs root (or use --moat-only)"
fi
mkdir -p "$work"
work=$(cd "$work" && pwd -P)
case $work in
  /|"$repo"|"$HOME") die "refusing to work in $work" ;;
esac
moat_dir=$work/moat
spool=$moat_dir/spool
pf_dir=$work/postfix
peer=$here/postfix-peer.sh
logs=$work/logs
mkdir -p "$logs"

# --- cleanup ------------------------------------------------------------------
moat_pid=""
source_pid=""
pf_started=0
cleanup() {
  rc=$?
  trap - EXIT INT TERM
  if [ -n "$source_pid" ]; then
    kill -TERM "$source_pid" 2>/dev/null || true   # timeout passes it on
    wait "$source_pid" 2>/dev/null || true
  fi
  if [ -n "$moat_pid" ] && kill -0 "$moat_pid" 2>/dev/null; then
    kill -TERM "$moat_pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$moat_pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$moat_pid" 2>/dev/null || true
    wait "$moat_pid" 2>/dev/null || true
  fi
  if [ "$pf_started" -eq 1 ]; then
    bash "$peer" stop "$pf_dir" >/dev/null 2>&1 || true
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'echo "$prog: interrupted" >&2; exit 130' INT TERM

# --- helpers ------------------------------------------------------------------


messages_for() { if [ "$1" -eq 1 ]; then echo "$n_single"; else echo "$n_multi"; fi; }

# run_source PORT C N LOG: sets ELAPSED (seconds); fails if smtp-source does.
# (Functions that start processes set globals instead of printing: a $(...)
# subshell would hide their pids from the cleanup trap.)
ELAPSED=""
run_source() {
  port=$1 c=$2 n=$3 log=$4
  t0=$(now)
  # In the background + wait: a trapped Ctrl-C interrupts "wait" at once,
  # while bash would let a foreground child run to its end first.
  timeout -k 5 "$run_timeout" smtp-source -4 -s "$c" -m "$n" -l "$MSG_SIZE" \
      -M client.bench.example -f sender@bench.example -t rcpt@bench.example \
      "127.0.0.1:$port" > "$log" 2>&1 &
  source_pid=$!
  st=0
  wait "$source_pid" || st=$?
  t1=$(now)
  source_pid=""
  if [ "$st" -ne 0 ]; then
    echo "$prog: smtp-source failed (c=$c n=$n port $port, status $st):" >&2
    tail -n 5 "$log" >&2
    return 1
  fi
  ELAPSED=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')
}

rate() { awk -v n="$1" -v t="$2" 'BEGIN { if (t > 0) printf "%.1f", n / t; else print "inf" }'; }

# --- moatd ------------------------------------------------------------------------
moat_port=""
write_moat_conf() {
  mkdir -p "$moat_dir"
  max_n=$n_multi; [ "$n_single" -gt "$max_n" ] && max_n=$n_single
  cat > "$moat_dir/moat.conf" <<EOF
# moatd configuration for bench/bench-accept.sh (generated)
hostname = "gw.bench.example";
user = "$(id -un)";
spool_dir = "$spool";
pidfile = "$moat_dir/moatd.pid";
control_socket = "$moat_dir/moatd.sock";
mail_log { path = "$moat_dir/mail.current"; }
listener "IncomingMail" {
  type = public;
  address = "127.0.0.1:$moat_port";
  max_connections = 5000;
  max_connections_per_ip = 5000; # every session comes from 127.0.0.1
  max_messages_per_connection = $((max_n + 1));
}
rat "IncomingMail" { "bench.example" = accept; "ALL" = reject; }
EOF
}

start_moat() {
  # Fresh spool every time.
  rm -rf "$spool"
  rm -f "$moat_dir/mail.current"
  listening "$moat_port" && die "127.0.0.1:$moat_port already in use"
  "$moatd" -f -c "$moat_dir/moat.conf" >> "$logs/moatd.log" 2>&1 &
  moat_pid=$!
  for _ in $(seq 1 100); do
    if ! kill -0 "$moat_pid" 2>/dev/null; then
      wait "$moat_pid" || true
      moat_pid=""
      echo "$prog: moatd exited during start-up; last lines of $logs/moatd.log:" >&2
      tail -n 15 "$logs/moatd.log" >&2
      return 1
    fi
    listening "$moat_port" && return 0
    sleep 0.1
  done
  echo "$prog: moatd did not listen on 127.0.0.1:$moat_port within 10s" >&2
  return 1
}

stop_moat() {
  [ -n "$moat_pid" ] || return 0
  kill -TERM "$moat_pid" 2>/dev/null || true
  st=0
  for _ in $(seq 1 300); do kill -0 "$moat_pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$moat_pid" 2>/dev/null; then
    echo "$prog: moatd did not exit 30s after SIGTERM; killing it" >&2
    kill -KILL "$moat_pid" 2>/dev/null || true
  fi
  wait "$moat_pid" || st=$?
  moat_pid=""
  [ "$st" -eq 0 ] || echo "$prog: warning: moatd exited with status $st after SIGTERM" >&2
}

moat_count() {
  if [ -d "$spool/queue" ]; then
    find "$spool/queue" -mindepth 1 -maxdepth 1 -type f ! -name '.*' | wc -l
  else
    echo 0
  fi
}

# bench_moat C N: sets RATE
RATE=""
bench_moat() {
  c=$1 n=$2
  start_moat || return 1
  run_source "$moat_port" "$c" "$n" "$logs/smtp-source-moat-c$c.log" || return 1
  got=$(moat_count)
  stop_moat
  if [ "$got" -ne "$n" ]; then
    echo "$prog: moatd: $got messages in $spool/queue after the run, expected $n" >&2
    return 1
  fi
  RATE=$(rate "$n" "$ELAPSED")
}

# --- Postfix ----------------------------------------------------------------------
pf_port=""
setup_postfix() {
  pf_port=$(free_port)
  # moatd is not running now: its port could come back; take another.
  while [ "$pf_port" = "$moat_port" ]; do pf_port=$(free_port); done
  pf_started=1
  bash "$peer" setup "$pf_dir" "$pf_port" hold >/dev/null
  bash "$peer" start "$pf_dir" >/dev/null
  # Warm up: let the master spawn its smtpd processes once, as in a
  # long-running server; the measured runs then see Postfix at its best.
  run_source "$pf_port" 100 200 "$logs/smtp-source-postfix-warmup.log"
  bash "$peer" flush-queue "$pf_dir"
}

bench_postfix() {
  c=$1 n=$2
  bash "$peer" flush-queue "$pf_dir"
  run_source "$pf_port" "$c" "$n" "$logs/smtp-source-postfix-c$c.log" || return 1
  got=$(bash "$peer" count "$pf_dir")
  bash "$peer" flush-queue "$pf_dir"
  if [ "$got" -ne "$n" ]; then
    echo "$prog: Postfix: $got messages held after the run, expected $n" >&2
    return 1
  fi
  RATE=$(rate "$n" "$ELAPSED")
}

# --- run ----------------------------------------------------------------------------
fs=$(stat -f -c %T "$work" 2>/dev/null || echo "?")
echo "bench-accept: durable acceptance, $MSG_SIZE-byte messages, smtp-source on 127.0.0.1"
echo "  host: $(nproc) CPUs, $(uname -r), work dir $work ($fs)${MOAT_BENCH_NETNS:+, private network namespace}"
[ "$do_moat" -eq 1 ] && echo "  moatd: $moatd"
[ "$do_postfix" -eq 1 ] && echo "  postfix: $(postconf -d -h mail_version 2>/dev/null || echo '?') (hold, default durability)"

if [ "$do_moat" -eq 1 ]; then
  moat_port=$(free_port)
  write_moat_conf
  : > "$logs/moatd.log"
  "$moatd" -t -c "$moat_dir/moat.conf" >> "$logs/moatd.log" 2>&1 \
    || { tail -n 10 "$logs/moatd.log" >&2; die "moatd -t rejected $moat_dir/moat.conf"; }
fi
if [ "$do_postfix" -eq 1 ]; then
  setup_postfix
fi

results=""
for c in $concurrencies; do
  n=$(messages_for "$c")
  m="-" p="-" r="-"
  if [ "$do_moat" -eq 1 ]; then
    bench_moat "$c" "$n" || die "moatd run at c=$c failed (logs in $logs)"
    m=$RATE
  fi
  if [ "$do_postfix" -eq 1 ]; then
    bench_postfix "$c" "$n" || die "Postfix run at c=$c failed (logs in $logs)"
    p=$RATE
  fi
  if [ "$m" != "-" ] && [ "$p" != "-" ]; then
    r=$(awk -v a="$m" -v b="$p" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }')
  fi
  line=$(printf '%11s %9s %12s %15s %7s' "$c" "$n" "$m" "$p" "$r")
  results="$results$line
"
  echo "  c=$c done: moat $m msg/s, postfix $p msg/s" >&2
done

rss_line=""
if [ "$do_moat" -eq 1 ] && [ "$idle" -gt 0 ]; then
  start_moat || die "moatd did not start for the idle-session measurement"
  if out=$(/usr/bin/python3 "$here/idle-sessions.py" -n "$idle" --timeout 60 \
             "$moat_port" "$moat_pid" 2>&1); then :; else
    echo "$out" >&2
    echo "$prog: warning: not every idle session opened" >&2
  fi
  stop_moat
  rss_line=$(printf '%s\n' "$out" | sed -n 's/^pid [0-9]* //p')
  sessions=$(printf '%s\n' "$out" | sed -n 's/.*SESSIONS=\([0-9]*\).*/\1/p')
  per=$(printf '%s\n' "$out" | sed -n 's/^per session: //p')
fi

echo
echo "durable acceptance (msg/s until the last 250; ratio = moat / postfix)"
printf '%11s %9s %12s %15s %7s\n' concurrency messages "moat msg/s" "postfix msg/s" ratio
printf '%s' "$results"
if [ -n "$rss_line" ]; then
  echo
  echo "moatd resident memory with ${sessions:-?} idle sessions open: $rss_line"
  [ -z "${per:-}" ] || echo "  (growth per idle session: $per)"
fi
{
  date -u '+%Y-%m-%dT%H:%M:%SZ'
  printf '%11s %9s %12s %15s %7s\n' concurrency messages "moat msg/s" "postfix msg/s" ratio
  printf '%s' "$results"
  [ -z "$rss_line" ] || echo "idle ${sessions:-?}: $rss_line"
} > "$work/last-results.txt"
