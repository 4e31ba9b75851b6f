"""moatd's SMTP limits and timeouts (docs/smtp.md "Limits", docs/maillog.md).

Every test configures its own short limits and timeouts; every wait is
bounded. Replies are compared exactly, mail log lines by regex over the text
after the date/level prefix.
"""

import socket
import time

import pytest

from smtp_client import Client

HOST = "127.0.0.1"


# --------------------------------------------------------------------------
# a minimal SMTP client that shows the raw replies


NOOP_OK = "250 2.0.0 Ok"


def noop_ok(c):
    r = c.cmd("NOOP")
    assert r == NOOP_OK, r
    return True


def public_conf(**listener):
    """A single public listener with the given listener settings; the RAT
    accepts example.com."""
    lis = {"type": "public", "address": "127.0.0.1:{port}"}
    lis.update(listener)
    return {
        ("listener", "In"): lis,
        ("rat", "In"): {"example.com": "accept", "ALL": "reject"},
    }


def icid_of(moat, since=0):
    """The ICID of the last connection logged since line `since`."""
    return moat.wait_log(r"^New SMTP ICID (\d+) interface In ", since=since).group(1)


def assert_spool_empty(moat):
    assert moat.spool_files() == {"queue": [], "incoming": []}


# --------------------------------------------------------------------------
# command lines and paths

@pytest.mark.moat_conf(public_conf())
def test_command_line_512_accepted_513_refused(moat):
    port = moat.ports["In"]
    with Client(port) as c:
        c.greet()
        line = "NOOP " + "x" * (512 - 2 - 5)
        assert len(line) + 2 == 512
        assert c.cmd(line) == NOOP_OK
        mark = moat.log_mark()
        assert c.cmd(line + "y") == "500 5.5.2 Line too long"
        moat.wait_log(r"^ICID \d+ Bad syntax for command: \(line too long\)$",
                      since=mark)
        # the session goes on
        assert noop_ok(c)
        assert c.message().startswith("250 2.0.0 Ok: Message ")
        assert c.cmd("QUIT") == "221 2.0.0 Bye"


@pytest.mark.moat_conf(public_conf())
def test_10k_line_without_crlf_gives_one_error(moat):
    port = moat.ports["In"]
    with Client(port) as c:
        c.greet()
        mark = moat.log_mark()
        c.send(b"x" * 10240)
        time.sleep(0.3)  # let moatd read (and discard) it before the CRLF
        c.send(b"\r\n")
        assert c.last() == "500 5.5.2 Line too long"
        # exactly one error: the very next reply is NOOP's
        assert noop_ok(c)
        assert c.cmd("QUIT") == "221 2.0.0 Bye"
    lines = moat.log_lines()[mark:]
    assert sum("Bad syntax for command: (line too long)" in ln for ln in lines) == 1, lines


@pytest.mark.moat_conf(public_conf())
def test_10k_line_with_crlf_split_across_writes(moat):
    """The CR arrives at the very end of one write, the LF in the next."""
    with Client(moat.ports["In"]) as c:
        c.greet()
        c.send(b"x" * 10240 + b"\r")
        time.sleep(0.3)
        c.send(b"\n")
        assert c.last() == "500 5.5.2 Line too long"
        assert noop_ok(c)


@pytest.mark.moat_conf(public_conf())
def test_noop_reply_text(moat):
    """Regression: NOOP used to answer '250 2.0.0 Reset state' (its reply id
    R_OK was unistd.h's access() macro R_OK = 4 = R_RESET_OK)."""
    with Client(moat.ports["In"]) as c:
        c.greet()
        assert c.cmd("NOOP") == "250 2.0.0 Ok"


def _domain(n):
    """A valid domain of exactly n octets (labels of at most 63)."""
    labels, left = [], n
    while left > 0:
        take = min(63, left)
        if left - take == 1:  # never leave a lone dot for the next label
            take -= 1
        labels.append("d" * take)
        left -= take + 1
    d = ".".join(labels)
    assert len(d) == n, (len(d), n)
    return d


@pytest.mark.moat_conf(public_conf())
def test_path_256_accepted_257_refused(moat):
    # <local@domain>: 2 + 64 + 1 + len(domain)
    ok_addr = "a" * 64 + "@" + _domain(256 - 2 - 65)
    long_addr = "a" * 64 + "@" + _domain(257 - 2 - 65)
    assert len("<%s>" % ok_addr) == 256 and len("<%s>" % long_addr) == 257
    with Client(moat.ports["In"]) as c:
        c.greet()
        mark = moat.log_mark()
        assert c.cmd("MAIL FROM:<%s>" % long_addr) == "501 5.5.4 Path too long"
        moat.wait_log(r"^ICID \d+ Invalid sender address: ", since=mark)
        assert c.cmd("MAIL FROM:<%s>" % ok_addr) == "250 2.1.0 Sender ok"
        moat.wait_log(r"^MID \d+ ICID \d+ From: <%s>$" % ok_addr, since=mark)
        # the same bound on RCPT
        assert c.cmd("RCPT TO:<%s>" % long_addr) == "501 5.5.4 Path too long"
        assert c.cmd("RSET") == "250 2.0.0 Reset state"


@pytest.mark.moat_conf(public_conf())
def test_local_part_64_accepted_65_refused(moat):
    with Client(moat.ports["In"]) as c:
        c.greet()
        assert c.cmd("MAIL FROM:<%s@test.example>" % ("l" * 65)) == \
            "501 5.1.3 Local part too long"
        assert c.cmd("MAIL FROM:<%s@test.example>" % ("l" * 64)) == \
            "250 2.1.0 Sender ok"
        assert c.cmd("RCPT TO:<%s@example.com>" % ("r" * 65)) == \
            "501 5.1.3 Local part too long"
        assert c.cmd("RCPT TO:<%s@example.com>" % ("r" * 64)) == \
            "250 2.1.5 Recipient ok"


@pytest.mark.moat_conf(public_conf())
def test_domain_label_64_refused(moat):
    with Client(moat.ports["In"]) as c:
        c.greet()
        assert c.cmd("MAIL FROM:<s@%s.example>" % ("x" * 64)) == \
            "501 5.1.2 Domain name too long"
        assert c.cmd("MAIL FROM:<s@%s.example>" % ("x" * 63)) == \
            "250 2.1.0 Sender ok"
        assert c.cmd("RCPT TO:<u@%s.example.com>" % ("y" * 64)) == \
            "501 5.1.2 Domain name too long"


# --------------------------------------------------------------------------
# message size and content

@pytest.mark.moat_conf(public_conf(max_message_size=2048))
def test_declared_size_over_limit(moat):
    with Client(moat.ports["In"]) as c:
        r = c.reply()
        assert r[0].startswith("220 ")
        c.send("EHLO client.test.example\r\n")
        ehlo = c.reply()
        assert "250-SIZE 2048" in ehlo
        mark = moat.log_mark()
        assert c.cmd("MAIL FROM:<a@b> SIZE=2049") == \
            "552 5.3.4 Message size exceeds fixed maximum message size"
        moat.wait_log(r"^ICID \d+ Receiving Failed: Message size exceeds limit$",
                      since=mark)
        assert not any(ln.startswith("Start MID") for ln in moat.log_lines()[mark:])
        assert c.cmd("MAIL FROM:<a@b> SIZE=1000") == "250 2.1.0 Sender ok"
        assert c.cmd("QUIT") == "221 2.0.0 Bye"


@pytest.mark.moat_conf(public_conf(max_message_size=2048))
def test_content_over_limit_read_to_end(moat):
    with Client(moat.ports["In"]) as c:
        c.greet()
        mark = moat.log_mark()
        body = "Subject: big\r\n\r\n" + ("z" * 78 + "\r\n") * 60  # ~4.8 KB
        # the message text also contains a line that looks like a command:
        # it must be taken as data, never as a command
        body += "QUIT\r\n"
        assert c.message(body=body) == \
            "552 5.3.4 Message size exceeds fixed maximum message size"
        mid = moat.wait_log(r"^Start MID (\d+) ICID", since=mark).group(1)
        moat.wait_log(r"^ICID \d+ Receiving Failed: Message size exceeds limit$",
                      since=mark)
        moat.wait_log(r"^Message aborted MID %s Receiving aborted$" % mid, since=mark)
        assert_spool_empty(moat)
        # the session continues, and a small message goes through
        r = c.message()
        assert r.startswith("250 2.0.0 Ok: Message ") and r.endswith(" accepted"), r
        assert c.cmd("QUIT") == "221 2.0.0 Bye"
    assert len(moat.spool_files()["queue"]) == 1


@pytest.mark.moat_conf(public_conf())
def test_text_line_1000_accepted_1001_refused(moat):
    with Client(moat.ports["In"]) as c:
        c.greet()
        ok = "Subject: l\r\n\r\n" + "a" * 998 + "\r\n"
        r = c.message(body=ok)
        assert r.startswith("250 2.0.0 Ok: Message "), r
        mark = moat.log_mark()
        bad = "Subject: l\r\n\r\n" + "a" * 999 + "\r\nmore\r\n"
        assert c.message(body=bad) == \
            "554 5.6.0 Message refused: a text line is longer than 1000 octets"
        mid = moat.wait_log(r"^Start MID (\d+) ICID", since=mark).group(1)
        moat.wait_log(r"^ICID \d+ Receiving Failed: Protocol error \(line longer "
                      r"than 1000 octets\)$", since=mark)
        moat.wait_log(r"^Message aborted MID %s Receiving aborted$" % mid, since=mark)
        assert noop_ok(c)
    assert len(moat.spool_files()["queue"]) == 1


# --------------------------------------------------------------------------
# counts

@pytest.mark.moat_conf(public_conf(max_recipients=3))
def test_max_recipients(moat):
    with Client(moat.ports["In"]) as c:
        c.greet()
        mark = moat.log_mark()
        assert c.cmd("MAIL FROM:<s@test.example>") == "250 2.1.0 Sender ok"
        for i in range(3):
            assert c.cmd("RCPT TO:<u%d@example.com>" % i) == "250 2.1.5 Recipient ok"
        assert c.cmd("RCPT TO:<u3@example.com>") == "452 4.5.3 Too many recipients"
        m = moat.wait_log(r"^MID (\d+) ICID (\d+) To: <u3@example.com> Rejected by "
                          r"Receiving Control \(too many recipients\)$", since=mark)
        assert c.cmd("DATA").startswith("354 ")
        c.send("Subject: r\r\n\r\nx\r\n.\r\n")
        assert c.last() == "250 2.0.0 Ok: Message %s accepted" % m.group(1)
    lines = moat.log_lines()[mark:]
    rids = [ln for ln in lines if " RID " in ln]
    assert rids == ["MID %s ICID %s RID %d To: <u%d@example.com>"
                    % (m.group(1), m.group(2), i, i) for i in range(3)]
    q = moat.ctl("queue", "list")
    assert q.returncode == 0
    row = [ln for ln in q.stdout.splitlines()
           if ln.split()[:1] == [m.group(1)] and "message(s)" not in ln]
    assert len(row) == 1 and row[0].split()[-2:] == ["3", "<s@test.example>"], q.stdout


@pytest.mark.moat_conf(public_conf(max_messages_per_connection=2))
def test_max_messages_per_connection(moat):
    with Client(moat.ports["In"]) as c:
        c.greet()
        for _ in range(2):
            assert c.message().startswith("250 2.0.0 Ok: Message ")
        mark = moat.log_mark()
        assert c.cmd("MAIL FROM:<s@test.example>") == \
            "452 4.5.3 Too many messages for this connection"
        moat.wait_log(r"^ICID \d+ Receiving Failed: Too Many Messages$", since=mark)
        assert c.cmd("QUIT") == "221 2.0.0 Bye"
    # a new connection may send again
    with Client(moat.ports["In"]) as c:
        c.greet()
        assert c.message().startswith("250 2.0.0 Ok: Message ")
    assert len(moat.spool_files()["queue"]) == 3


@pytest.mark.moat_conf(public_conf(max_errors=3))
def test_max_errors(moat):
    with Client(moat.ports["In"]) as c:
        c.greet()
        mark = moat.log_mark()
        icid = icid_of(moat)
        assert c.cmd("BOGUS1") == "500 5.5.1 Command unrecognized"
        assert c.cmd("BOGUS2") == "500 5.5.1 Command unrecognized"
        c.send("BOGUS3\r\n")
        assert c.reply() == ["500 5.5.1 Command unrecognized"]
        assert c.reply() == ["421 4.7.0 Too many errors, closing connection"]
        assert c.at_eof()
    moat.wait_log(r"^ICID %s disconnected address 127\.0\.0\.1, too many errors$"
                  % icid, since=mark)
    moat.wait_log(r"^ICID %s close$" % icid, since=mark)


@pytest.mark.moat_conf(public_conf(max_connections=2))
def test_max_connections(moat):
    port = moat.ports["In"]
    a, b = Client(port), Client(port)
    try:
        assert a.last() == "220 gw.test.example ESMTP"
        assert b.last() == "220 gw.test.example ESMTP"
        mark = moat.log_mark()
        with Client(port) as c:
            assert c.reply() == ["421 4.3.2 Too many connections, try again later"]
            assert c.at_eof()
        icid = moat.wait_log(r"^New SMTP ICID (\d+) ", since=mark).group(1)
        moat.wait_log(r"^ICID %s Receiving Failed: Connection limit exceeded$" % icid,
                      since=mark)
        # the two sessions are unaffected
        assert noop_ok(a)
        assert b.cmd("EHLO x.test.example").startswith("250 ")
        # once one leaves, a new client gets in (bounded retry: the close is
        # processed asynchronously)
        assert a.cmd("QUIT") == "221 2.0.0 Bye"
        assert a.at_eof()
        got = None
        for _ in range(20):
            with Client(port) as d:
                got = d.last()
                if got.startswith("220 "):
                    assert d.cmd("QUIT") == "221 2.0.0 Bye"
                    break
            time.sleep(0.1)
        assert got == "220 gw.test.example ESMTP"
    finally:
        a.close()
        b.close()


# --------------------------------------------------------------------------
# timeouts

@pytest.mark.moat_conf(public_conf(command_timeout=2))
def test_command_timeout_before_any_message(moat):
    with Client(moat.ports["In"]) as c:
        c.greet()
        icid = icid_of(moat)
        t0 = time.monotonic()
        c.sock.settimeout(6)
        assert c.reply() == ["421 4.4.2 Timeout exceeded, closing connection"]
        took = time.monotonic() - t0
        assert 1.5 <= took <= 4.5, took
        assert c.at_eof()
    moat.wait_log(r"^ICID %s disconnected address 127\.0\.0\.1, no messages "
                  r"injected within timeout period$" % icid)


@pytest.mark.moat_conf(public_conf(command_timeout=2))
def test_command_timeout_after_a_message(moat):
    with Client(moat.ports["In"]) as c:
        c.greet()
        icid = icid_of(moat)
        assert c.message().startswith("250 2.0.0 Ok: Message ")
        c.sock.settimeout(6)
        assert c.reply() == ["421 4.4.2 Timeout exceeded, closing connection"]
    moat.wait_log(r"^ICID %s disconnected address 127\.0\.0\.1, command timeout$"
                  % icid)
    assert len(moat.spool_files()["queue"]) == 1


@pytest.mark.moat_conf(public_conf(command_timeout=10, data_timeout=2))
def test_data_timeout_mid_data(moat):
    with Client(moat.ports["In"]) as c:
        c.greet()
        mark = moat.log_mark()
        assert c.cmd("MAIL FROM:<s@test.example>") == "250 2.1.0 Sender ok"
        assert c.cmd("RCPT TO:<u@example.com>") == "250 2.1.5 Recipient ok"
        assert c.cmd("DATA").startswith("354 ")
        c.send("Subject: slow\r\n\r\nfirst part\r\n")
        mid = moat.wait_log(r"^Start MID (\d+) ICID", since=mark).group(1)
        t0 = time.monotonic()
        c.sock.settimeout(8)
        assert c.reply() == ["421 4.4.2 Timeout exceeded, closing connection"]
        assert time.monotonic() - t0 <= 4.5
        assert c.at_eof()
    moat.wait_log(r"^ICID \d+ Receiving Failed: Data timeout$", since=mark)
    moat.wait_log(r"^Message aborted MID %s Receiving aborted$" % mid, since=mark)
    assert_spool_empty(moat)


@pytest.mark.moat_conf(public_conf(command_timeout=10, data_timeout=10,
                                   connection_timeout=3))
def test_connection_timeout(moat):
    """A client that keeps sending NOOPs (never idle) is still cut off."""
    with Client(moat.ports["In"]) as c:
        c.greet()
        icid = icid_of(moat)
        t0 = time.monotonic()
        got = None
        while time.monotonic() - t0 < 8:
            got = c.cmd("NOOP")
            if got != NOOP_OK:
                break
            time.sleep(0.2)
        assert got == "421 4.4.2 Timeout exceeded, closing connection"
        assert 2.5 <= time.monotonic() - t0 <= 5.5
        assert c.at_eof()
    moat.wait_log(r"^ICID %s disconnected address 127\.0\.0\.1, exceeded "
                  r"allowable connection time$" % icid)


@pytest.mark.moat_conf(public_conf(command_timeout=10, data_timeout=10,
                                   connection_timeout=3))
def test_connection_timeout_during_data(moat):
    with Client(moat.ports["In"]) as c:
        c.greet()
        assert c.message().startswith("250 2.0.0 Ok: Message ")
        mark = moat.log_mark()
        assert c.cmd("MAIL FROM:<s@test.example>") == "250 2.1.0 Sender ok"
        assert c.cmd("RCPT TO:<u@example.com>") == "250 2.1.5 Recipient ok"
        assert c.cmd("DATA").startswith("354 ")
        mid = moat.wait_log(r"^Start MID (\d+) ICID", since=mark).group(1)
        c.send("Subject: t\r\n\r\n")
        c.sock.settimeout(8)
        deadline = time.monotonic() + 6
        r = []
        while time.monotonic() < deadline:
            c.send("line\r\n")
            c.sock.settimeout(0.3)
            try:
                r = c.reply()
                break
            except (socket.timeout, TimeoutError):
                pass
        assert r == ["421 4.4.2 Timeout exceeded, closing connection"]
    moat.wait_log(r"^Message aborted MID %s Receiving aborted$" % mid, since=mark)
    assert len(moat.spool_files()["queue"]) == 1
    assert moat.spool_files()["incoming"] == []


# --------------------------------------------------------------------------
# clients that go away

@pytest.mark.moat_conf(public_conf())
def test_client_disconnects_mid_data(moat):
    c = Client(moat.ports["In"])
    c.greet()
    mark = moat.log_mark()
    icid = icid_of(moat)
    assert c.cmd("MAIL FROM:<s@test.example>") == "250 2.1.0 Sender ok"
    assert c.cmd("RCPT TO:<u@example.com>") == "250 2.1.5 Recipient ok"
    assert c.cmd("DATA").startswith("354 ")
    c.send("Subject: gone\r\n\r\n" + "text line\r\n" * 2000)  # > one spool record
    mid = moat.wait_log(r"^Start MID (\d+) ICID", since=mark).group(1)
    time.sleep(0.3)
    c.close()
    moat.wait_log(r"^Message aborted MID %s Receiving aborted$" % mid, since=mark)
    moat.wait_log(r"^ICID %s lost$" % icid, since=mark)
    assert_spool_empty(moat)
    # and moatd still serves
    with Client(moat.ports["In"]) as d:
        d.greet()
        assert d.message().startswith("250 2.0.0 Ok: Message ")


@pytest.mark.moat_conf(public_conf(max_message_size=2048))
def test_content_size_boundary(moat):
    """max_message_size counts the client's content (after dot-unstuffing),
    not moat's Received: header: 2048 octets pass, 2049 do not."""
    def body(n):
        hdr = "Subject: s\r\n\r\n"
        k = n - len(hdr)
        b = hdr + ("y" * 98 + "\r\n") * (k // 100) + "z" * (k % 100 - 2) + "\r\n"
        assert len(b) == n
        return b

    with Client(moat.ports["In"]) as c:
        c.greet()
        assert c.cmd("MAIL FROM:<a@b> SIZE=2048") == "250 2.1.0 Sender ok"
        assert c.cmd("RSET") == "250 2.0.0 Reset state"
        assert c.message(body=body(2048)).startswith("250 2.0.0 Ok: Message ")
        # a leading dot is stuffed on the wire and does not count
        stuffed = body(2048).replace("\r\nyy", "\r\n..y", 1)
        assert c.message(body=stuffed).startswith("250 2.0.0 Ok: Message ")
        assert c.message(body=body(2049)) == \
            "552 5.3.4 Message size exceeds fixed maximum message size"
    assert len(moat.spool_files()["queue"]) == 2


@pytest.mark.moat_conf(public_conf(command_timeout=2))
def test_command_timeout_with_open_transaction(moat):
    with Client(moat.ports["In"]) as c:
        c.greet()
        mark = moat.log_mark()
        assert c.cmd("MAIL FROM:<s@test.example>") == "250 2.1.0 Sender ok"
        assert c.cmd("RCPT TO:<u@example.com>") == "250 2.1.5 Recipient ok"
        mid = moat.wait_log(r"^Start MID (\d+) ICID (\d+)$", since=mark)
        c.sock.settimeout(6)
        assert c.reply() == ["421 4.4.2 Timeout exceeded, closing connection"]
        assert c.at_eof()
    icid = mid.group(2)
    moat.wait_log(r"^ICID %s disconnected address 127\.0\.0\.1, no messages "
                  r"injected within timeout period$" % icid, since=mark)
    moat.wait_log(r"^Message aborted MID %s Receiving aborted$" % mid.group(1),
                  since=mark)
    moat.wait_log(r"^ICID %s close$" % icid, since=mark)
    assert_spool_empty(moat)
