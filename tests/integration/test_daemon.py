"""moatd as a daemon: configuration checks, moatctl, commit and SIGHUP,
log rotation, persistent IDs, SIGTERM drain, a full spool.

Replies are compared exactly, mail log lines by regex over the text after
the date/level prefix. Every wait is bounded.
"""

import os
import re
import signal
import socket
import subprocess
import time

import pytest

from smtp_client import Client


HOST = "127.0.0.1"


OK_RE = re.compile(r"^250 2\.0\.0 Ok: Message (\d+) accepted$")


def send_one(port, msgid=None, sender="s@test.example", rcpts=("u@example.com",)):
    """One message on a new connection; returns its MID (int)."""
    body = "Subject: t\r\n"
    if msgid:
        body += "Message-ID: <%s>\r\n" % msgid
    body += "\r\nhello\r\n"
    with Client(port) as c:
        c.greet()
        r = c.message(sender=sender, rcpts=rcpts, body=body)
        m = OK_RE.match(r)
        assert m, r
        assert c.cmd("QUIT") == "221 2.0.0 Bye"
    return int(m.group(1))


def conf(**top):
    """Public listener In (RAT: example.com) + private listener Out."""
    c = {
        ("listener", "In"): {"type": "public", "address": "127.0.0.1:{port}"},
        ("listener", "Out"): {"type": "private", "address": "127.0.0.1:{port}",
                              "relay_senders": ["127.0.0.0/8"]},
        ("rat", "In"): {"example.com": "accept", "ALL": "reject"},
    }
    c.update(top)
    return c


def status_fields(text):
    """`moatctl status` output as {label: value-string}."""
    out = {}
    for ln in text.splitlines():
        m = re.match(r"^\s*(\S.*?)\s{2,}(\S.*)$", ln)
        if m:
            out[m.group(1)] = m.group(2)
    return out


def queue_rows(text):
    """`moatctl queue list` rows as [(mid, bytes, rcpts, sender)] and the
    summary (count, bytes)."""
    lines = text.splitlines()
    assert lines[0].split() == ["MID", "Bytes", "Received", "Rcpts", "Sender"], text
    m = re.match(r"^(\d+) message\(s\), (\d+) bytes$", lines[-1])
    assert m, text
    rows = []
    for ln in lines[1:-1]:
        f = ln.split()
        # MID Bytes Www Mmm dd hh:mm:ss yyyy Rcpts Sender
        assert len(f) == 9, ln
        rows.append((int(f[0]), int(f[1]), int(f[7]), f[8]))
    return rows, (int(m.group(1)), int(m.group(2)))


def ctl_s(moat, *args):
    """moatctl -s SOCKET ARGS: talks to moatd without reading moat.conf
    itself, so that moatd (not moatctl) judges a broken file."""
    return subprocess.run([moat.moatctl_bin, "-s", str(moat.socket), *args],
                          stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=30)


# --------------------------------------------------------------------------
# moatd -t

def test_check_good_configuration(moatd_bin, tmp_path):
    f = tmp_path / "good.conf"
    f.write_text(
        'hostname = "gw.test.example";\n'
        'listener "In" { type = public; address = "127.0.0.1:2525"; }\n'
        'rat "In" { "example.com" = accept; "ALL" = reject; }\n')
    r = subprocess.run([str(moatd_bin), "-t", "-c", str(f)],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "moatd: configuration %s is valid\n" % f
    assert r.stderr == ""
    # -t binds nothing and creates nothing
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good.conf"]


def test_check_bad_configuration(moatd_bin, tmp_path):
    f = tmp_path / "bad.conf"
    f.write_text(
        'hostname = "gw.test.example";\n'                                # 1
        'listener "In" {\n'                                              # 2
        '  type = public;\n'                                             # 3
        '  address = "127.0.0.1:2525";\n'                                # 4
        '  max_recipents = 5;\n'                                         # 5
        '}\n'                                                            # 6
        'listener "Out" { type = private; address = "127.0.0.1:99999"; }\n'  # 7
        'rat "Nope" { "example.com" = accept; }\n')                      # 8
    r = subprocess.run([str(moatd_bin), "-t", "-c", str(f)],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 1
    assert r.stdout == ""
    lines = r.stderr.splitlines()
    assert len(lines) == 3, r.stderr
    p = re.escape(str(f))
    assert re.match(p + r":5:3: unknown key 'max_recipents' in listener \"In\" "
                    r"\(did you mean 'max_recipients'\?\)$", lines[0]), lines
    assert re.match(p + r":7:\d+: address in listener \"Out\": "
                    r"\"127\.0\.0\.1:99999\": port must be a number from 1 to 65535$",
                    lines[1]), lines
    assert re.match(p + r":8:5: rat \"Nope\": no listener named \"Nope\"$",
                    lines[2]), lines


# --------------------------------------------------------------------------
# moatctl

def test_moatctl_help(moatctl_bin):
    r = subprocess.run([str(moatctl_bin), "--help"], capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 0
    assert r.stdout.startswith("usage: moatctl [-c FILE | -s SOCKET] COMMAND")
    cmds = re.findall(r"^  (status|queue list|configtest|commit)\b", r.stdout, re.M)
    assert cmds == ["status", "queue list", "configtest", "commit"], r.stdout
    r = subprocess.run([str(moatctl_bin), "queue", "list", "--help"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0
    assert r.stdout.startswith("usage: moatctl queue list")
    assert "List the messages in the queue" in r.stdout
    r = subprocess.run([str(moatctl_bin), "frobnicate"], capture_output=True,
                       text=True, timeout=30)
    assert r.returncode != 0
    assert 'unknown command "frobnicate"' in r.stderr


@pytest.mark.moat_conf(conf())
def test_moatctl_status_counters(moat):
    r = moat.ctl("status")
    assert r.returncode == 0, r.stderr
    before = status_fields(r.stdout)
    for label in ("Status as of:", "Up since:", "System status:", "Configuration:",
                  "Connections Accepted", "Messages Received", "Recipients Received",
                  "Rejected Recipients", "Aborted Transactions", "Spool Flushes",
                  "Current Inbound Conn.", "Messages In Spool", "Kilobytes In Spool",
                  "Message ID (MID)", "Injection Conn. ID (ICID)"):
        assert label in before, (label, r.stdout)
    assert before["System status:"] == "Online"
    assert before["Configuration:"].startswith(str(moat.conf_path) + " (committed ")
    assert before["Messages Received"] == "0"
    assert before["Messages In Spool"] == "0"
    mid = send_one(moat.ports["In"], rcpts=("a@example.com", "b@example.com"))
    with Client(moat.ports["In"]) as c:
        c.greet()
        assert c.cmd("MAIL FROM:<s@test.example>") == "250 2.1.0 Sender ok"
        assert c.cmd("RCPT TO:<x@elsewhere.test>") == "550 5.1.0 Address rejected"
        assert c.cmd("RSET") == "250 2.0.0 Reset state"
        after = status_fields(moat.ctl("status").stdout)
        assert after["Current Inbound Conn."] == "1"
    after = status_fields(moat.ctl("status").stdout)
    assert int(after["Connections Accepted"]) == int(before["Connections Accepted"]) + 2
    assert after["Messages Received"] == "1"
    assert after["Recipients Received"] == "2"
    assert after["Rejected Recipients"] == "1"
    assert after["Aborted Transactions"] == "1"
    assert after["Messages In Spool"] == "1"
    assert after["Message ID (MID)"] == str(mid + 1)  # the RSET one came later
    assert after["Spool Flushes"].startswith("1 ")


@pytest.mark.moat_conf(conf())
def test_moatctl_queue_list(moat):
    r = moat.ctl("queue", "list")
    assert r.returncode == 0
    assert queue_rows(r.stdout) == ([], (0, 0))
    mid1 = send_one(moat.ports["In"], sender="first@test.example")
    mid2 = send_one(moat.ports["Out"], sender="second@test.example",
                    rcpts=("x@far.test", "y@far.test", "z@far.test"))
    rows, (n, total) = queue_rows(moat.ctl("queue", "list").stdout)
    assert [(r[0], r[2], r[3]) for r in rows] == [
        (mid1, 1, "<first@test.example>"), (mid2, 3, "<second@test.example>")]
    assert n == 2 and total == sum(r[1] for r in rows)
    # the byte count is the size of what "ready" logged
    ready = moat.wait_log(r"^MID %d ready (\d+) bytes from <first@test\.example>$"
                          % mid1)
    assert rows[0][1] == int(ready.group(1))
    assert moat.spool_files()["queue"] == sorted([str(mid1), str(mid2)])


@pytest.mark.moat_conf(conf())
def test_moatctl_configtest(moat):
    r = moat.ctl("configtest")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "Configuration %s is valid.\n" % moat.conf_path
    good = moat.conf_path.read_text()
    broken = good.replace("type = public;", "type = publik;", 1)
    line = next(i for i, ln in enumerate(broken.splitlines(), 1) if "publik" in ln)
    moat.conf_path.write_text(broken)
    r = ctl_s(moat, "configtest")
    assert r.returncode == 1
    out = r.stdout + r.stderr
    assert re.search(r"^%s:%d:\d+: type in listener \"In\": expects public or "
                     r"private, not \"publik\"$"
                     % (re.escape(str(moat.conf_path)), line), out, re.M), out
    # configtest applied nothing: moatd runs and serves
    assert moat.running()
    send_one(moat.ports["In"])
    moat.conf_path.write_text(good)


@pytest.mark.parametrize("command", ["configtest", "commit"])
@pytest.mark.moat_conf(conf())
def test_moatctl_c_broken_file(moat, command):
    good = moat.conf_path.read_text()
    moat.conf_path.write_text(good.replace("type = public;", "type = publik;", 1))
    try:
        r = moat.ctl(command)
        assert moat.running()
        assert "publik" in r.stdout + r.stderr
        assert "cannot find the control socket" not in r.stderr
        assert r.returncode == 1
    finally:
        moat.conf_path.write_text(good)


# --------------------------------------------------------------------------
# commit and SIGHUP

def _limit_probe(port, n):
    """Open a session, try n+1 recipients; return the replies."""
    with Client(port) as c:
        c.greet()
        assert c.cmd("MAIL FROM:<s@test.example>") == "250 2.1.0 Sender ok"
        return [c.cmd("RCPT TO:<r%d@example.com>" % i) for i in range(n + 1)]


RCPT_OK = "250 2.1.5 Recipient ok"
TOO_MANY = "452 4.5.3 Too many recipients"


def _base(max_rcpt):
    return {
        ("listener", "In"): {"type": "public", "address": "127.0.0.1:{port}",
                             "max_recipients": max_rcpt},
        ("rat", "In"): {"example.com": "accept", "ALL": "reject"},
    }


def _with_new(max_rcpt):
    c = _base(max_rcpt)
    c[("listener", "New")] = {"type": "public", "address": "127.0.0.1:{port}",
                              "max_recipients": max_rcpt}
    c[("rat", "New")] = {"example.com": "accept"}
    return c


@pytest.mark.parametrize("how", ["commit", "sighup"])
def test_commit_applies_and_refuses(moat_factory, how):
    moat = moat_factory(_base(5))
    port = moat.ports["In"]
    assert _limit_probe(port, 5) == [RCPT_OK] * 5 + [TOO_MANY]
    # a session opened before the change keeps its configuration
    old = Client(port)
    old.greet()
    assert old.cmd("MAIL FROM:<s@test.example>") == "250 2.1.0 Sender ok"

    moat.configure(_with_new(2))
    new_port = moat.ports["New"]
    assert new_port != port and "New" in moat.ports
    mark = moat.log_mark()
    if how == "commit":
        r = moat.ctl("commit")
        assert r.returncode == 0, r.stdout + r.stderr
        assert "Changes committed: " in r.stdout
    else:
        moat.reload()
    moat.wait_log(r"^Configuration %s committed$" % re.escape(str(moat.conf_path)),
                  since=mark)
    deadline = time.monotonic() + 5
    while not _port_open(new_port) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _limit_probe(new_port, 2) == [RCPT_OK] * 2 + [TOO_MANY]
    assert _limit_probe(port, 2) == [RCPT_OK] * 2 + [TOO_MANY]
    send_one(new_port)
    # the old session still runs under max_recipients = 5
    assert [old.cmd("RCPT TO:<o%d@example.com>" % i) for i in range(6)] == \
        [RCPT_OK] * 5 + [TOO_MANY]
    old.close()

    # now a broken file: refused, everything stays
    good = moat.conf_path.read_text()
    broken = good.replace("max_recipients = 2;", "max_recipients = 9;", 1) \
        .replace("type = public;", "type = public; max_recipientz = 1;", 1)
    moat.conf_path.write_text(broken)
    bad_line = next(i for i, ln in enumerate(broken.splitlines(), 1)
                    if "max_recipientz" in ln)
    mark = moat.log_mark()
    if how == "commit":
        r = ctl_s(moat, "commit")
        assert r.returncode == 1
        out = r.stdout + r.stderr
        assert "Configuration refused; the running configuration stays." in out
        assert re.search(r"^%s:%d:\d+: unknown key 'max_recipientz'"
                         % (re.escape(str(moat.conf_path)), bad_line), out, re.M), out
    else:
        moat.reload()
        moat.wait_log(r"^SIGHUP: Configuration refused; the running configuration "
                      r"stays\.", since=mark)
    assert moat.running()
    assert not any("committed" in ln for ln in moat.log_lines()[mark:])
    assert _limit_probe(new_port, 2) == [RCPT_OK] * 2 + [TOO_MANY]
    assert _limit_probe(port, 2) == [RCPT_OK] * 2 + [TOO_MANY]
    r = ctl_s(moat, "configtest")
    assert r.returncode == 1
    moat.conf_path.write_text(good)


def _port_open(port):
    try:
        with socket.create_connection((HOST, port), timeout=1) as s:
            s.recv(100)
            return True
    except OSError:
        return False


@pytest.mark.moat_conf(conf())
def test_commit_removes_listener(moat):
    port_out = moat.ports["Out"]
    send_one(port_out, rcpts=("x@far.test",))
    c = conf()
    del c[("listener", "Out")]
    moat.configure(c)
    r = moat.ctl("commit")
    assert r.returncode == 0, r.stdout + r.stderr
    deadline = time.monotonic() + 5
    while _port_open(port_out) and time.monotonic() < deadline:
        time.sleep(0.1)
    with pytest.raises(OSError):
        Client(port_out, timeout=2).close()
    send_one(moat.ports["In"])


def test_commit_refused_when_a_port_is_taken(moat_factory):
    """A commit that cannot bind a new listener changes nothing at all."""
    moat = moat_factory(_base(5))
    port = moat.ports["In"]
    with socket.socket() as squatter:
        squatter.bind((HOST, 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        c = _base(2)
        c[("listener", "New")] = {"type": "public", "address": "127.0.0.1:%d" % taken}
        moat.configure(c)
        mark = moat.log_mark()
        r = ctl_s(moat, "commit")
        assert r.returncode == 1
        assert r.stderr.startswith("Configuration refused; the running "
                                   "configuration stays.\n"), r.stderr
        assert 'listener "New": cannot listen on 127.0.0.1:%d: Address already in use' \
            % taken in r.stderr
        # the max_recipients change in the same file did not apply
        assert _limit_probe(port, 5) == [RCPT_OK] * 5 + [TOO_MANY]
        assert not any("committed" in ln for ln in moat.log_lines()[mark:])
    del moat.ports["New"]
    moat.configure(_base(5))


def test_commit_moves_listener(moat_factory, free_port):
    moat = moat_factory(_base(5))
    old_port = moat.ports["In"]
    new_port = free_port()
    c = _base(3)
    c[("listener", "In")]["address"] = "127.0.0.1:%d" % new_port
    moat.configure(c)
    r = ctl_s(moat, "commit")
    assert r.returncode == 0, r.stdout
    assert moat.ports["In"] == new_port
    with pytest.raises(OSError):
        Client(old_port, timeout=2).close()
    assert _limit_probe(new_port, 3) == [RCPT_OK] * 3 + [TOO_MANY]
    send_one(new_port)


# --------------------------------------------------------------------------
# log rotation

@pytest.mark.parametrize("sig", [signal.SIGUSR1, signal.SIGHUP], ids=["USR1", "HUP"])
@pytest.mark.moat_conf(conf())
def test_log_rotation(moat, sig):
    send_one(moat.ports["In"])
    old = moat.log_path.with_name("mail.old")
    os.rename(moat.log_path, old)
    moat.proc.send_signal(sig)
    deadline = time.monotonic() + 5
    while not moat.log_path.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    mid = send_one(moat.ports["In"], msgid="rot@test.example")
    moat.wait_log(r"^MID %d queued for delivery$" % mid)
    new = moat.log_lines()
    assert new[0] == "Begin Logfile", new[:3]
    for rx in (r"^Start MID %d ICID \d+$" % mid,
               r"^MID %d Message-ID '<rot@test\.example>'$" % mid,
               r"^MID %d queued for delivery$" % mid):
        assert any(re.search(rx, ln) for ln in new), (rx, new)
    old_lines = [ln for ln in old.read_text().splitlines()]
    assert old_lines[-1].endswith(" Info: End Logfile"), old_lines[-3:]
    assert not any("MID %d " % mid in ln for ln in old_lines)
    assert sum("Begin Logfile" in ln for ln in old_lines) == 1
    committed = [ln for ln in new if re.match(r"^Configuration .* committed$", ln)]
    assert len(committed) == (1 if sig == signal.SIGHUP else 0), new


# --------------------------------------------------------------------------
# IDs

@pytest.mark.moat_conf(conf(id_block=10))
def test_ids_grow_across_restarts(moat):
    port = moat.ports["In"]
    mid1 = send_one(port, sender="before@test.example")
    icid1 = int(moat.wait_log(r"^Start MID %d ICID (\d+)$" % mid1).group(1))
    for _ in range(12):  # past one id_block of ICIDs and MIDs
        send_one(port)
    last_mid = send_one(port)
    last_icid = int(moat.wait_log(r"^Start MID %d ICID (\d+)$" % last_mid).group(1))
    moat.restart()
    assert moat.returncode == 0
    mark = moat.log_mark()
    mid2 = send_one(port)
    icid2 = int(moat.wait_log(r"^Start MID %d ICID (\d+)$" % mid2, since=mark).group(1))
    assert mid2 > last_mid > mid1
    assert icid2 > last_icid > icid1
    rows, (n, _) = queue_rows(moat.ctl("queue", "list").stdout)
    assert n == 15
    assert (mid1, "<before@test.example>") in [(r[0], r[3]) for r in rows]
    # and again after a crash
    moat.kill9()
    moat.start()
    mid3 = send_one(port)
    assert mid3 > mid2
    assert queue_rows(moat.ctl("queue", "list").stdout)[1][0] == 16


# --------------------------------------------------------------------------
# SIGTERM drain

@pytest.mark.moat_conf(conf(shutdown_timeout=3))
def test_sigterm_drain(moat):
    port = moat.ports["In"]
    idle = Client(port)
    idle.greet()
    busy = Client(port)
    busy.greet()
    busy.begin()
    busy.send("Subject: drain\r\nMessage-ID: <drain@test.example>\r\n\r\nfirst\r\n")
    mark = moat.log_mark()
    t0 = time.monotonic()
    moat.proc.send_signal(signal.SIGTERM)
    moat.wait_log(r"^Received signal 15: shutting down$", since=mark)
    assert idle.reply() == ["421 4.3.2 Service shutting down, try again later"]
    assert idle.at_eof()
    # the listener no longer accepts
    deadline = time.monotonic() + 2
    while _port_open(port) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _port_open(port)
    busy.send("second\r\n.\r\n")
    r = busy.last()
    m = OK_RE.match(r)
    assert m, r
    mid = int(m.group(1))
    assert busy.cmd("NOOP") == "421 4.3.2 Service shutting down, try again later"
    assert busy.at_eof()
    rc = moat.proc.wait(timeout=6)
    took = time.monotonic() - t0
    moat.proc = None
    moat.returncode = rc
    assert rc == 0
    assert took < 3 + 1.5, took
    assert moat.spool_files() == {"queue": [str(mid)], "incoming": []}
    assert re.search(b"Message-ID: <drain@test.example>",
                     (moat.spool / "queue" / str(mid)).read_bytes())
    lines = moat.log_lines()
    assert lines[-2:] == ["moatd stopped", "End Logfile"]
    assert not any("Shutdown timeout" in ln for ln in lines[mark:])
    idle.close()
    busy.close()


@pytest.mark.moat_conf(conf(shutdown_timeout=3))
def test_sigterm_drain_open_transaction(moat):
    """A transaction opened before SIGTERM (MAIL, RCPT, not yet DATA) may
    finish; a client that has only seen the banner gets 421 at once."""
    port = moat.ports["In"]
    a = Client(port)
    a.greet()
    assert a.cmd("MAIL FROM:<s@test.example>") == "250 2.1.0 Sender ok"
    assert a.cmd("RCPT TO:<u@example.com>") == "250 2.1.5 Recipient ok"
    b = Client(port)
    assert b.last() == "220 gw.test.example ESMTP"
    mark = moat.log_mark()
    moat.proc.send_signal(signal.SIGTERM)
    moat.wait_log(r"^Received signal 15: shutting down$", since=mark)
    assert b.reply() == ["421 4.3.2 Service shutting down, try again later"]
    assert b.at_eof()
    assert a.cmd("DATA") == "354 Start mail input; end with <CRLF>.<CRLF>"
    a.send("Subject: late\r\n\r\nhi\r\n.\r\n")
    m = OK_RE.match(a.last())
    assert m
    assert a.reply() == ["421 4.3.2 Service shutting down, try again later"]
    assert a.at_eof()
    moat.returncode = moat.proc.wait(timeout=6)
    moat.proc = None
    assert moat.returncode == 0
    assert moat.spool_files() == {"queue": [m.group(1)], "incoming": []}
    a.close()
    b.close()


@pytest.mark.moat_conf(conf(shutdown_timeout=2))
def test_sigterm_drain_timeout(moat):
    """A client that never finishes its message is cut off after
    shutdown_timeout; its message is not kept."""
    port = moat.ports["In"]
    busy = Client(port)
    busy.greet()
    busy.begin()
    busy.send("Subject: never\r\n\r\nfirst\r\n")
    mid = int(moat.wait_log(r"^Start MID (\d+) ICID").group(1))
    mark = moat.log_mark()
    t0 = time.monotonic()
    moat.proc.send_signal(signal.SIGTERM)
    rc = moat.proc.wait(timeout=8)
    took = time.monotonic() - t0
    moat.proc = None
    moat.returncode = rc
    assert rc == 0
    assert 1.5 <= took <= 3.5, took
    lines = moat.log_lines()[mark:]
    assert "Shutdown timeout: closing the remaining sessions" in lines
    assert "Message aborted MID %d Receiving aborted" % mid in lines
    assert moat.spool_files() == {"queue": [], "incoming": []}
    busy.close()


# --------------------------------------------------------------------------
# full disk

def test_full_spool(moat_factory):
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    moat = moat_factory(conf(), start=False)
    moat.spool.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k,mode=0700",
                        "tmpfs", str(moat.spool)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip("mount -t tmpfs not permitted here: %s" % r.stderr.strip())
    try:
        moat.start()
        port = moat.ports["In"]
        accepted = {}
        refused = None
        body = "Subject: fill\r\n\r\n" + ("f" * 76 + "\r\n") * 200  # ~16 KB
        mark = moat.log_mark()
        for i in range(60):  # 60 * 16 KB is far more than 256 KB
            with Client(port) as c:
                c.greet()
                assert c.cmd("MAIL FROM:<s@test.example>") == "250 2.1.0 Sender ok"
                assert c.cmd("RCPT TO:<u@example.com>") == "250 2.1.5 Recipient ok"
                r = c.cmd("DATA")
                if r.startswith("354"):
                    c.send("Message-ID: <full%d@test.example>\r\n" % i + body + ".\r\n")
                    r = c.last()
                m = OK_RE.match(r)
                if m:
                    accepted[int(m.group(1))] = i
                    assert c.cmd("QUIT") == "221 2.0.0 Bye"
                    continue
                refused = r
                # the session survives the refusal
                assert c.cmd("RSET") == "250 2.0.0 Reset state"
                assert c.cmd("QUIT") == "221 2.0.0 Bye"
                break
        assert refused == "452 4.3.1 Insufficient system storage", refused
        assert accepted
        moat.wait_log(r"^ICID \d+ Receiving Failed: Resources Low$", since=mark)
        moat.wait_log(r" Warning: MID \d+ (spool write failed|cannot create spool "
                      r"file|spool commit failed): No space left on device$",
                      since=mark, strip=False)
        assert moat.spool_files()["incoming"] == []
        assert sorted(moat.spool_files()["queue"], key=int) == \
            [str(m) for m in sorted(accepted)]
        moat.restart()
        assert moat.returncode == 0
        rows, (n, _) = queue_rows(moat.ctl("queue", "list").stdout)
        assert sorted(r[0] for r in rows) == sorted(accepted)
        assert n == len(accepted)
        for mid, i in accepted.items():
            data = (moat.spool / "queue" / str(mid)).read_bytes()
            assert b"Message-ID: <full%d@test.example>" % i in data
        moat.wait_log(r"^Spool %s recovered: %d message\(s\) queued, 0 partial "
                      r"message\(s\) discarded, 0 corrupt file\(s\) set aside$"
                      % (re.escape(str(moat.spool)), len(accepted)))
    finally:
        moat.stop()
        subprocess.run(["umount", str(moat.spool)], capture_output=True)
