#!/bin/bash
# Set up and control a private Postfix instance on loopback, used as the
# benchmark peer (and as a real MTA in integration tests).
#
# Everything lives under DIR:
#   DIR/etc/{main.cf,master.cf}   private config_directory
#   DIR/queue/                    private queue_directory (pid/master.pid here)
#   DIR/data/                     private data_directory
#   DIR/maillog                   Postfix's log (maillog_file via postlogd)
#   DIR/peer.env                  PORT and MODE given to setup
#
# Usage:
#   postfix-peer.sh setup DIR PORT MODE    MODE: hold | relay:PORT2
#   postfix-peer.sh start DIR
#   postfix-peer.sh stop DIR
#   postfix-peer.sh status DIR             exit 0 if running
#   postfix-peer.sh count DIR              messages in the queue (any state)
#   postfix-peer.sh flush-queue DIR        delete every queued message
#
#   hold        accept with Postfix's default durability and put every
#               message on hold (smtpd_end_of_data_restrictions); nothing is
#               ever delivered.
#   relay:PORT2 relay everything to [127.0.0.1]:PORT2 (e.g. an smtp-sink).
#
# The instance listens on 127.0.0.1:PORT only; its SMTP client binds to
# 127.0.0.1 and does no DNS. Must run as root (Postfix's own requirement for
# postfix start/stop and for reading the queue).
#
# Pitfalls handled (see docs research notes, "Postfix as a benchmark peer"):
# the private config_directory must be listed in alternate_config_directories
# of the default /etc/postfix/main.cf (created if the "No configuration"
# install left none); "postfix start" reports fatal errors only to a terminal
# or syslog, so it runs under script(1); maillog_file needs
# maillog_file_prefixes and a postlog service; aliases are disabled; no chroot.
set -eu

prog=${0##*/}
DEFAULT_MAIN_CF=/etc/postfix/main.cf
LOCK_FILE=/tmp/moat-postfix-peer.lock
START_TIMEOUT=15   # seconds to wait for the port after "postfix start"
STOP_TIMEOUT=15    # seconds to wait for the master to exit

die() { echo "$prog: $*" >&2; exit 1; }
usage() {
  sed -n '/^# Usage:/,/^#   relay:PORT2/p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

# --- argument helpers -------------------------------------------------------

# Absolute, physical path of DIR (created when $2 = create).
resolve_dir() {
  d=$1
  [ -n "$d" ] || die "empty DIR"
  if [ "${2:-}" = create ]; then
    mkdir -p "$d"
  fi
  [ -d "$d" ] || die "$d: no such directory (run setup first)"
  d=$(cd "$d" && pwd -P)
  # Postfix parameter values are whitespace/comma separated lists.
  case $d in
    *[!A-Za-z0-9._/+-]*) die "$d: DIR may contain only [A-Za-z0-9._/+-]" ;;
  esac
  printf '%s\n' "$d"
}

check_port() {
  case $1 in
    ''|*[!0-9]*) die "bad port: $1" ;;
  esac
  if [ "$1" -lt 1 ] || [ "$1" -gt 65535 ]; then die "bad port: $1"; fi
}

set_paths() {
  DIR=$1
  ETC=$DIR/etc
  QUEUE=$DIR/queue
  DATA=$DIR/data
  MAILLOG=$DIR/maillog
  PIDFILE=$QUEUE/pid/master.pid
}

need_root() {
  [ "$(id -u)" -eq 0 ] || die "must run as root (Postfix requires it)"
}

# --- process helpers --------------------------------------------------------

master_pid() {
  # Print the running master's pid for this instance, or fail.
  [ -r "$PIDFILE" ] || return 1
  pid=$(tr -dc '0-9' < "$PIDFILE")
  [ -n "$pid" ] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  comm=$(cat "/proc/$pid/comm" 2>/dev/null || true)
  [ "$comm" = master ] || return 1
  printf '%s\n' "$pid"
}

port_open() {
  # True if something accepts TCP connections on 127.0.0.1:$1.
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

peer_port() {
  [ -r "$DIR/peer.env" ] || die "$DIR: not set up (no peer.env)"
  sed -n 's/^PORT=//p' "$DIR/peer.env"
}

show_log_tail() {
  if [ -r "$MAILLOG" ]; then
    echo "$prog: last lines of $MAILLOG:" >&2
    tail -n 15 "$MAILLOG" >&2 || true
  fi
}

# --- default main.cf: alternate_config_directories ---------------------------

register_config_dir() {
  # Idempotently list $ETC in alternate_config_directories of the default
  # main.cf; entries naming directories that no longer exist are pruned so
  # the list does not grow with every temporary test instance.
  mkdir -p "${DEFAULT_MAIN_CF%/*}"
  (
    flock -w 30 9 || die "cannot lock $LOCK_FILE"
    if [ ! -e "$DEFAULT_MAIN_CF" ]; then
      cat > "$DEFAULT_MAIN_CF" <<'EOF'
# Default Postfix configuration written by moat's bench/postfix-peer.sh.
# The system Postfix was installed with "No configuration"; this file only
# lists the private instances (benchmarks, integration tests) that may run.
compatibility_level = 3.6
alternate_config_directories =
EOF
    fi
    cur=$(postconf -c "${DEFAULT_MAIN_CF%/*}" -h alternate_config_directories 2>/dev/null || true)
    new="" found=0 changed=0
    for e in $(printf '%s' "$cur" | tr ',' ' '); do
      if [ "$e" = "$ETC" ]; then
        found=1
      elif [ "${e#/}" != "$e" ] && [ ! -d "$e" ]; then
        changed=1       # stale: that private instance is gone
        continue
      fi
      new="${new:+$new, }$e"
    done
    [ "$found" -eq 1 ] || { new="${new:+$new, }$ETC"; changed=1; }
    if [ "$changed" -eq 1 ]; then
      postconf -c "${DEFAULT_MAIN_CF%/*}" -e "alternate_config_directories = $new"
    fi
  ) 9>"$LOCK_FILE"
}

# --- commands -----------------------------------------------------------------

write_main_cf() {
  port=$1 mode=$2
  cat > "$ETC/main.cf.new" <<EOF
# Private Postfix instance for moat benchmarks and integration tests.
# Generated by bench/postfix-peer.sh; rewritten by every "setup".
# mode: $mode   port: 127.0.0.1:$port
compatibility_level = 3.6
config_directory = $ETC
queue_directory = $QUEUE
data_directory = $DATA

# Logging without syslog: postlogd writes to a file under DIR.
maillog_file = $MAILLOG
maillog_file_prefixes = $DIR

# Names: fixed, so Postfix never asks DNS about this machine.
myhostname = peer.bench.invalid
mydomain = bench.invalid
myorigin = \$myhostname

# Loopback only.
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8

# No local delivery, no aliases.
mydestination =
local_recipient_maps =
alias_maps =
alias_database =
biff = no
readme_directory = no
notify_classes =

# Who may send: loopback clients, to anyone (relay).
smtpd_relay_restrictions = permit_mynetworks, reject
smtpd_recipient_restrictions = permit_mynetworks, reject
# No reverse DNS of the client (would fall back to the resolver otherwise).
smtpd_peername_lookup = no
smtpd_tls_security_level = none

# Outbound: never DNS, always from 127.0.0.1.
smtp_dns_support_level = disabled
smtp_host_lookup = native
smtp_bind_address = 127.0.0.1
smtp_tls_security_level = none
EOF
  case $mode in
    hold)
      cat >> "$ETC/main.cf.new" <<'EOF'

# hold: accept with default durability, then hold every message.
smtpd_end_of_data_restrictions = check_client_access static:HOLD
# Held mail is never delivered; should anything be released, it is discarded
# locally (not "error:", which smtpd would turn into a RCPT reject).
default_transport = discard:moat hold peer does not deliver
relay_transport = $default_transport
EOF
      ;;
    relay:*)
      cat >> "$ETC/main.cf.new" <<EOF

# relay: everything goes to the sink on loopback.
relayhost = [127.0.0.1]:${mode#relay:}
EOF
      ;;
  esac
  mv -f "$ETC/main.cf.new" "$ETC/main.cf"
}

write_master_cf() {
  port=$1
  cat > "$ETC/master.cf.new" <<EOF
# Private Postfix instance for moat (bench/postfix-peer.sh). No chroot.
# service type  private unpriv  chroot  wakeup  maxproc command + args
127.0.0.1:$port inet n  -       n       -       -       smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
EOF
  mv -f "$ETC/master.cf.new" "$ETC/master.cf"
}

cmd_stop() {
  pid=$(master_pid) || { rm -f "$PIDFILE"; return 0; }
  postfix -c "$ETC" stop >/dev/null 2>&1 || true
  i=0
  while kill -0 "$pid" 2>/dev/null && [ "$i" -lt $((STOP_TIMEOUT * 10)) ]; do
    sleep 0.1; i=$((i + 1))
  done
  if kill -0 "$pid" 2>/dev/null; then
    echo "$prog: master $pid did not stop in ${STOP_TIMEOUT}s; killing it" >&2
    pkill -KILL -P "$pid" 2>/dev/null || true
    kill -KILL "$pid" 2>/dev/null || true
    sleep 0.2
  fi
  # Children of a stopped master exit on their own; wait briefly for the
  # listening port to be released.
  port=$(peer_port 2>/dev/null || true)
  i=0
  while [ -n "$port" ] && port_open "$port" && [ "$i" -lt 50 ]; do
    sleep 0.1; i=$((i + 1))
  done
  rm -f "$PIDFILE"
}

cmd_setup() {
  [ $# -eq 3 ] || usage
  port=$2 mode=$3
  check_port "$port"
  case $mode in
    hold) ;;
    relay:*) check_port "${mode#relay:}"
             [ "${mode#relay:}" != "$port" ] || die "relay port equals listen port" ;;
    *) die "MODE must be hold or relay:PORT2, not '$mode'" ;;
  esac
  command -v postfix >/dev/null || die "postfix not installed (scripts/install-deps.sh test)"
  d=$(resolve_dir "$1" create)
  set_paths "$d"
  # The postfix user must reach the queue: DIR and its parents need o+x.
  chmod 755 "$DIR"
  p=$DIR
  while [ "$p" != / ]; do
    p=${p%/*}; p=${p:-/}
    perm=$(stat -c %A "$p")
    case $perm in
      ?????????[xt]) ;;
      *) die "$p is not searchable by others (mode $perm); Postfix's daemons cannot reach $DIR" ;;
    esac
  done
  cmd_stop               # a previous instance in the same DIR
  mkdir -p "$ETC" "$QUEUE" "$DATA"
  chown root:root "$ETC" "$QUEUE"
  chmod 755 "$ETC" "$QUEUE"
  chown postfix "$DATA" 2>/dev/null || true
  chmod 700 "$DATA"
  write_main_cf "$port" "$mode"
  write_master_cf "$port"
  printf 'PORT=%s\nMODE=%s\n' "$port" "$mode" > "$DIR/peer.env"
  : > "$MAILLOG"
  register_config_dir
  # Create the queue directories and fix permissions now, so count and
  # flush-queue work before the first start.
  if ! out=$(postfix -c "$ETC" check 2>&1); then
    printf '%s\n' "$out" >&2
    die "postfix check failed for $ETC"
  fi
  [ -z "$out" ] || printf '%s\n' "$out" >&2
  cmd_flush_queue
  echo "$prog: set up $DIR (127.0.0.1:$port, $mode)"
}

cmd_start() {
  [ -r "$ETC/main.cf" ] || die "$DIR: not set up"
  cmd_stop
  port=$(peer_port)
  if port_open "$port"; then
    die "127.0.0.1:$port is already in use by another process"
  fi
  register_config_dir    # in case the default main.cf was rewritten since
  # postfix start prints fatal errors only to a tty (or syslog): give it one.
  rc=0
  out=$(script -qec "postfix -c '$ETC' start" /dev/null </dev/null 2>&1) || rc=$?
  out=$(printf '%s\n' "$out" | tr -d '\r')
  if [ "$rc" -ne 0 ]; then
    printf '%s\n' "$out" >&2
    show_log_tail
    die "postfix start failed (exit $rc)"
  fi
  i=0
  until port_open "$port"; do
    i=$((i + 1))
    if [ "$i" -gt $((START_TIMEOUT * 10)) ]; then
      printf '%s\n' "$out" >&2
      show_log_tail
      cmd_stop
      die "Postfix did not listen on 127.0.0.1:$port within ${START_TIMEOUT}s"
    fi
    sleep 0.1
  done
  pid=$(master_pid) || { show_log_tail; die "Postfix master not running"; }
  echo "$prog: started $DIR (master pid $pid, 127.0.0.1:$port)"
}

QUEUES="maildrop incoming active deferred hold corrupt"

cmd_count() {
  n=0
  for q in $QUEUES; do
    [ -d "$QUEUE/$q" ] || continue
    c=$(find "$QUEUE/$q" -type f | wc -l)
    n=$((n + c))
  done
  echo "$n"
}

cmd_flush_queue() {
  [ -d "$QUEUE" ] || return 0
  if master_pid >/dev/null; then
    # Running: let Postfix delete (qmgr may hold messages in memory).
    postsuper -c "$ETC" -d ALL >/dev/null 2>&1 || true
  else
    # Stopped: plain files. (postsuper would also try to log via the
    # absent postlogd, fail, and wait.)
    for q in $QUEUES defer bounce trace flush; do
      if [ -d "$QUEUE/$q" ]; then
        find "$QUEUE/$q" -mindepth 1 -type f -delete
      fi
    done
  fi
  n=$(cmd_count)
  [ "$n" -eq 0 ] || die "flush-queue: $n messages remain in $QUEUE"
}

# --- main ---------------------------------------------------------------------

[ $# -ge 2 ] || usage
cmd=$1; shift
need_root
case $cmd in
  setup)
    cmd_setup "$@" ;;
  start|stop|status|count|flush-queue)
    [ $# -eq 1 ] || usage
    d=$(resolve_dir "$1")
    set_paths "$d"
    case $cmd in
      start) cmd_start ;;
      stop) cmd_stop ;;
      status) if pid=$(master_pid); then echo "running (master pid $pid)"; else echo "stopped"; exit 1; fi ;;
      count) cmd_count ;;
      flush-queue) cmd_flush_queue ;;
    esac ;;
  *) usage ;;
esac
