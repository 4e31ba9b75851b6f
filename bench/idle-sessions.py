#!/usr/bin/python3
"""Open N idle SMTP sessions to 127.0.0.1:PORT and report a server's memory.

Usage: bench/idle-sessions.py [-n N] [--hold S] [--timeout S] [--tree] PORT PID

Opens N TCP connections (default 1000, at most 20000) to 127.0.0.1:PORT,
reads each one's banner (the first line ending in LF), keeps them all open,
waits --hold seconds (default 1) for the server to settle, prints the
VmRSS (and VmHWM) of process PID from /proc/PID/status in KiB and MiB, then
closes the connections (with QUIT). Loopback only; bounded in count and time.
With --tree it also prints the summed VmRSS of PID and all its descendants
(for process-per-session servers such as Postfix; shared pages are counted
once per process, so this overstates their real use).

Exit status: 0 if every session got a 220 banner; 1 otherwise (the RSS is
still printed for the sessions that did open); 2 on usage errors.
Standard library only.
"""

import argparse
import errno
import os
import resource
import selectors
import socket
import sys
import time

MAX_SESSIONS = 20000
HOST = "127.0.0.1"


def proc_status(pid):
    """{"VmRSS": kib, "VmHWM": kib, ...} from /proc/PID/status."""
    out = {}
    with open("/proc/%d/status" % pid, encoding="ascii", errors="replace") as f:
        for line in f:
            key, _, rest = line.partition(":")
            fields = rest.split()
            if len(fields) == 2 and fields[1] == "kB":
                out[key] = int(fields[0])
    return out


def tree_rss(pid):
    """(summed VmRSS KiB, process count) of pid and its descendants."""
    children = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % d, encoding="ascii", errors="replace") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(d))
    total, count, pending = 0, 0, [pid]
    while pending:
        p = pending.pop()
        try:
            total += proc_status(p).get("VmRSS", 0)
            count += 1
        except OSError:
            continue
        pending.extend(children.get(p, []))
    return total, count


def raise_nofile(need):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= need:
        return soft
    target = need if hard == resource.RLIM_INFINITY else min(need, hard)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError):
        pass
    if target < need and hard != resource.RLIM_INFINITY:
        # root may raise the hard limit too
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (need, need))
        except (ValueError, OSError):
            pass
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def open_sessions(port, n, deadline, batch=200):
    """Connect n sockets (at most `batch` connects in flight) and read each
    banner. Returns (sockets with a 220 banner, list of error strings)."""
    sel = selectors.DefaultSelector()
    good, errors = [], []
    pending = 0      # sockets registered with the selector
    started = 0
    bufs = {}

    def close(sock):
        try:
            sel.unregister(sock)
        except (KeyError, ValueError):
            pass
        sock.close()

    while (started < n or pending) and time.monotonic() < deadline:
        while started < n and pending < batch:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setblocking(False)
            started += 1
            err = s.connect_ex((HOST, port))
            if err not in (0, errno.EINPROGRESS):
                errors.append("connect: %s" % errno.errorcode.get(err, err))
                s.close()
                continue
            bufs[s] = b""
            sel.register(s, selectors.EVENT_READ)
            pending += 1
        for key, _ in sel.select(timeout=0.2):
            s = key.fileobj
            try:
                data = s.recv(4096)
            except OSError as e:
                errors.append("recv: %s" % e)
                data = None
            if not data:
                if data is not None:
                    errors.append("connection closed before banner")
                close(s)
                pending -= 1
                continue
            bufs[s] += data
            if b"\n" in bufs[s]:
                banner = bufs[s].split(b"\n", 1)[0]
                sel.unregister(s)
                pending -= 1
                if banner.startswith(b"220"):
                    good.append(s)
                else:
                    errors.append("banner: %r" % banner[:80])
                    s.close()
    if pending:
        errors.append("%d sessions without banner before the deadline" % pending)
        for key in list(sel.get_map().values()):
            close(key.fileobj)
    if started < n:
        errors.append("%d sessions not started before the deadline" % (n - started))
    sel.close()
    return good, errors


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("port", type=int)
    ap.add_argument("pid", type=int)
    ap.add_argument("-n", "--sessions", type=int, default=1000)
    ap.add_argument("--hold", type=float, default=1.0,
                    help="seconds to keep the sessions open before measuring")
    ap.add_argument("--timeout", type=float, default=60.0,
                    help="seconds allowed for opening all sessions")
    ap.add_argument("--tree", action="store_true",
                    help="also sum VmRSS over PID's descendants")
    a = ap.parse_args()
    if not 1 <= a.sessions <= MAX_SESSIONS:
        ap.error("-n must be 1..%d" % MAX_SESSIONS)
    if not 1 <= a.port <= 65535:
        ap.error("bad port")
    a.hold = min(max(a.hold, 0.0), 600.0)
    a.timeout = min(max(a.timeout, 1.0), 600.0)

    before = proc_status(a.pid)
    limit = raise_nofile(a.sessions + 64)
    if limit < a.sessions + 16:
        print("idle-sessions: RLIMIT_NOFILE is %d, too low for %d sessions"
              % (limit, a.sessions), file=sys.stderr)
        return 2

    t0 = time.monotonic()
    socks, errors = open_sessions(a.port, a.sessions, t0 + a.timeout)
    opened = time.monotonic() - t0
    try:
        time.sleep(a.hold)
        st = proc_status(a.pid)
        rss, hwm = st.get("VmRSS", 0), st.get("VmHWM", 0)
        base = before.get("VmRSS", 0)
        print("idle sessions: %d of %d open (banners read in %.2fs)"
              % (len(socks), a.sessions, opened))
        print("pid %d VmRSS: %d KiB (%.1f MiB); before: %d KiB (%.1f MiB); "
              "VmHWM: %d KiB (%.1f MiB)"
              % (a.pid, rss, rss / 1024, base, base / 1024, hwm, hwm / 1024))
        if socks:
            print("per session: %.2f KiB" % ((rss - base) / len(socks)))
        if a.tree:
            total, count = tree_rss(a.pid)
            print("process tree: %d processes, summed VmRSS %d KiB (%.1f MiB)"
                  % (count, total, total / 1024))
        # Machine-readable line for scripts.
        print("RSS_KIB=%d RSS_BEFORE_KIB=%d SESSIONS=%d" % (rss, base, len(socks)))
    finally:
        for s in socks:
            try:
                s.setblocking(True)
                s.settimeout(0.05)
                s.sendall(b"QUIT\r\n")
            except OSError:
                pass
            s.close()
    if errors:
        shown = {}
        for e in errors:
            shown[e] = shown.get(e, 0) + 1
        for e, c in sorted(shown.items(), key=lambda x: -x[1])[:10]:
            print("idle-sessions: %d x %s" % (c, e), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
