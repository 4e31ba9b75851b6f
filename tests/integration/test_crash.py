"""Crash safety: kill -9 moatd under load, restart, and check that every
message answered 250 is in the spool exactly once and nothing half-received
survives (docs/spool.md "Recovery")."""

import re
import socket
import threading
import time

import pytest

HOST = "127.0.0.1"


OK_RE = re.compile(r"^250 2\.0\.0 Ok: Message (\d+) accepted$")
MSGID_RE = re.compile(rb"^Message-ID: <([^>\r\n]+)>\r$", re.M)

N_THREADS = 8
MAX_TOTAL = 300       # messages started, all threads together
RUN_LIMIT = 10.0      # seconds the load may run before the kill comes anyway


class Client:
    """One raw SMTP connection; replies are lists of lines without CRLF."""

    def __init__(self, port, timeout=10.0):
        self.sock = socket.create_connection((HOST, port), timeout=timeout)
        self.buf = b""

    def _line(self):
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                rest, self.buf = self.buf, b""
                return rest
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line + b"\r\n"

    def last(self):
        lines = []
        while True:
            raw = self._line()
            if not raw:
                return lines[-1] if lines else ""
            line = raw.rstrip(b"\r\n").decode("ascii", "replace")
            lines.append(line)
            if len(line) < 4 or line[3] != "-":
                return line

    def send(self, data):
        if isinstance(data, str):
            data = data.encode("ascii")
        self.sock.sendall(data)

    def cmd(self, line):
        self.send(line + "\r\n")
        return self.last()

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def crash_conf():
    return {
        ("listener", "In"): {"type": "public", "address": "127.0.0.1:{port}"},
        ("rat", "In"): {"example.com": "accept", "ALL": "reject"},
    }


def body_for(msgid, size):
    lines = ["Subject: crash test", "Message-ID: <%s>" % msgid, ""]
    filler = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ" + "-" * 14
    lines += [filler] * (size // 78)
    return "\r\n".join(lines) + "\r\n"


class Load:
    """N_THREADS clients sending messages in a loop until stopped, moatd
    dies, or MAX_TOTAL messages have been started."""

    def __init__(self, port, tag):
        self.port = port
        self.tag = tag
        self.lock = threading.Lock()
        self.started = 0
        self.accepted = {}        # msgid -> MID from the 250 reply
        self.complete_sent = set()  # msgids whose final "." was sent
        self.other_replies = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self.run, args=(i,), daemon=True)
                        for i in range(N_THREADS)]

    def next_id(self):
        with self.lock:
            if self.started >= MAX_TOTAL or self.stop.is_set():
                return None
            self.started += 1
            return "%s.%d@crash.test" % (self.tag, self.started)

    def run(self, t):
        sizes = [300, 3000, 30000, 100000]  # some span several spool records
        k = 0
        c = None
        try:
            while not self.stop.is_set():
                if c is None:
                    c = Client(self.port)
                    if not c.last().startswith("220 "):
                        return
                    if not c.cmd("EHLO t%d.test.example" % t).startswith("250 "):
                        return
                msgid = self.next_id()
                if msgid is None:
                    return
                if c.cmd("MAIL FROM:<t%d@test.example>" % t) != "250 2.1.0 Sender ok":
                    return
                if c.cmd("RCPT TO:<u%d@example.com>" % t) != "250 2.1.5 Recipient ok":
                    return
                if not c.cmd("DATA").startswith("354 "):
                    return
                c.send(body_for(msgid, sizes[(t + k) % len(sizes)]))
                c.send(".\r\n")
                with self.lock:
                    self.complete_sent.add(msgid)
                r = c.last()
                m = OK_RE.match(r)
                if not m:
                    if r:
                        with self.lock:
                            self.other_replies.append(r)
                    return
                with self.lock:
                    self.accepted[msgid] = int(m.group(1))
                k += 1
                if k % 5 == 0:  # new connections now and then
                    c.cmd("QUIT")
                    c.close()
                    c = None
        except OSError:
            return  # moatd was killed
        finally:
            if c is not None:
                c.close()

    def start(self):
        for th in self.threads:
            th.start()

    def n_accepted(self):
        with self.lock:
            return len(self.accepted)

    def join(self, timeout=15.0):
        self.stop.set()
        deadline = time.monotonic() + timeout
        for th in self.threads:
            th.join(max(0.1, deadline - time.monotonic()))
        assert not any(th.is_alive() for th in self.threads), "client threads hang"


def queue_msgids(moat):
    """{file name: [Message-IDs found in it]} for every file in queue/."""
    out = {}
    for p in sorted((moat.spool / "queue").iterdir()):
        out[p.name] = [m.decode() for m in MSGID_RE.findall(p.read_bytes())]
    return out


def recovery_line(moat, since):
    m = moat.wait_log(r"^Spool %s recovered: (\d+) message\(s\) queued, (\d+) "
                      r"partial message\(s\) discarded, (\d+) corrupt file\(s\) "
                      r"set aside$" % re.escape(str(moat.spool)), since=since)
    return tuple(int(x) for x in m.groups())


def queue_list_count(moat):
    r = moat.ctl("queue", "list")
    assert r.returncode == 0, r.stderr
    m = re.search(r"^(\d+) message\(s\), (\d+) bytes$", r.stdout, re.M)
    assert m, r.stdout
    mids = [int(ln.split()[0]) for ln in r.stdout.splitlines()[1:-1]]
    return int(m.group(1)), mids


@pytest.mark.parametrize("kill_after", [15, 120], ids=["early", "late"])
def test_kill9_under_load(moat_factory, kill_after):
    moat = moat_factory(crash_conf())
    load = Load(moat.ports["In"], "k%d" % kill_after)
    load.start()
    deadline = time.monotonic() + RUN_LIMIT
    while load.n_accepted() < kill_after and time.monotonic() < deadline:
        if not any(th.is_alive() for th in load.threads):
            break
        time.sleep(0.005)
    moat.kill9()
    load.join()
    assert not load.other_replies, load.other_replies
    accepted = dict(load.accepted)
    assert len(accepted) >= min(kill_after, 10), \
        "too few messages before the kill: %d" % len(accepted)

    before = moat.spool_files()
    print("kill after %d accepted, %d started, %d complete-sent, queue %d, incoming %d" % (len(accepted), load.started, len(load.complete_sent), len(before["queue"]), len(before["incoming"])))
    # nothing answered 250 is only in incoming/
    for msgid, mid in accepted.items():
        assert str(mid) in before["queue"], (msgid, mid)

    mark = moat.log_mark()
    moat.start()
    queued, discarded, corrupt = recovery_line(moat, mark)
    after = moat.spool_files()
    assert after["incoming"] == [], "recovery left partial messages"
    assert after["queue"] == before["queue"]
    assert (queued, discarded, corrupt) == \
        (len(before["queue"]), len(before["incoming"]), 0)
    assert not (moat.spool / "corrupt").exists() or \
        not [p for p in (moat.spool / "corrupt").iterdir()]

    found = queue_msgids(moat)
    # every file holds exactly one of our messages, complete ones only
    for name, ids in found.items():
        assert len(ids) == 1, (name, ids)
        assert ids[0] in load.complete_sent, (name, ids)
    where = {}
    for name, ids in found.items():
        where.setdefault(ids[0], []).append(name)
    for msgid, mid in accepted.items():
        assert where.get(msgid) == [str(mid)], (msgid, mid, where.get(msgid))
    # the rest are messages whose "." was sent but whose 250 never arrived
    extra = set(where) - set(accepted)
    assert extra <= load.complete_sent - set(accepted)

    n, mids = queue_list_count(moat)
    assert n == len(found)
    assert sorted(mids) == sorted(int(x) for x in found)

    # and moatd goes on with fresh IDs
    c = Client(moat.ports["In"])
    try:
        assert c.last().startswith("220 ")
        assert c.cmd("EHLO after.test.example").startswith("250 ")
        assert c.cmd("MAIL FROM:<a@test.example>") == "250 2.1.0 Sender ok"
        assert c.cmd("RCPT TO:<u@example.com>") == "250 2.1.5 Recipient ok"
        assert c.cmd("DATA").startswith("354 ")
        c.send(body_for("after@crash.test", 100) + ".\r\n")
        m = OK_RE.match(c.last())
        assert m
        highest = max([int(x) for x in found] + [int(x) for x in before["incoming"]] + [0])
        assert int(m.group(1)) > highest
    finally:
        c.close()


@pytest.mark.moat_conf(crash_conf())
def test_kill9_mid_data(moat):
    port = moat.ports["In"]
    c = Client(port)
    try:
        assert c.last().startswith("220 ")
        assert c.cmd("EHLO one.test.example").startswith("250 ")
        # one complete message first: it must survive
        assert c.cmd("MAIL FROM:<a@test.example>") == "250 2.1.0 Sender ok"
        assert c.cmd("RCPT TO:<u@example.com>") == "250 2.1.5 Recipient ok"
        assert c.cmd("DATA").startswith("354 ")
        c.send(body_for("kept@crash.test", 2000) + ".\r\n")
        m = OK_RE.match(c.last())
        assert m
        kept = m.group(1)
        # then one cut in the middle, after more than one spool record
        mark = moat.log_mark()
        assert c.cmd("MAIL FROM:<a@test.example>") == "250 2.1.0 Sender ok"
        assert c.cmd("RCPT TO:<u@example.com>") == "250 2.1.5 Recipient ok"
        assert c.cmd("DATA").startswith("354 ")
        half = moat.wait_log(r"^Start MID (\d+) ICID", since=mark).group(1)
        c.send(body_for("half@crash.test", 200000))
        deadline = time.monotonic() + 5
        path = moat.spool / "incoming" / half
        while time.monotonic() < deadline:
            if path.exists() and path.stat().st_size > 65536:
                break
            time.sleep(0.02)
        assert path.exists() and path.stat().st_size > 65536
    finally:
        moat.kill9()
        c.close()
    assert moat.spool_files() == {"queue": [kept], "incoming": [half]}
    mark = moat.log_mark()
    moat.start()
    assert recovery_line(moat, mark) == (1, 1, 0)
    assert moat.spool_files() == {"queue": [kept], "incoming": []}
    assert queue_msgids(moat) == {kept: ["kept@crash.test"]}
    n, mids = queue_list_count(moat)
    assert (n, mids) == (1, [int(kept)])
    # the MID of the lost message is never handed out again
    c = Client(port)
    try:
        assert c.last().startswith("220 ")
        assert c.cmd("EHLO two.test.example").startswith("250 ")
        assert c.cmd("MAIL FROM:<a@test.example>") == "250 2.1.0 Sender ok"
        mid = moat.wait_log(r"^Start MID (\d+) ICID", since=mark).group(1)
        assert int(mid) > int(half)
        assert c.cmd("QUIT") == "221 2.0.0 Bye"
    finally:
        c.close()


@pytest.mark.moat_conf(crash_conf())
def test_kill9_leaves_restartable_state(moat):
    """A stale pidfile and control socket from a killed moatd do not stop
    the next start, and moatctl reaches the new one."""
    old_pid = moat.pid
    moat.kill9()
    assert moat.socket.exists()
    moat.start()
    assert moat.pid != old_pid
    r = moat.ctl("status")
    assert r.returncode == 0, r.stderr
    assert re.search(r"^System status:\s+Online$", r.stdout, re.M)
    if moat.pidfile.exists():
        assert moat.pidfile.read_text().strip() == str(moat.pid)
