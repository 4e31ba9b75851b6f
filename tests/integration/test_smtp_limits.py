"""Every bound of moatd's SMTP server (docs/smtp.md, "Limits"), at and just
past its edge: the exact reply, the exact mail log lines, and that the
session (or the daemon) carries on as documented. Timeouts are configured
to a second or two so that the tests stay fast.
"""

import re
import struct
import time

import pytest

from smtp_client import RawSMTP

HOSTNAME = "gw.test.example"
CLIENT = "client.test.example"

DATA_GO = "354 Start mail input; end with <CRLF>.<CRLF>"
TIMEOUT_421 = "421 4.4.2 Timeout exceeded, closing connection"


def conf(**incoming):
    """The default configuration with extra keys on IncomingMail."""
    lis = {"type": "public", "address": "127.0.0.1:{port}"}
    lis.update(incoming)
    return {
        ("listener", "IncomingMail"): lis,
        ("rat", "IncomingMail"): {"example.com": "accept", "ALL": "reject"},
    }


# ---------------------------------------------------------------------------
# helpers (the clients are in smtp_client.py)


def connect(moat, listener="IncomingMail", ehlo=True, greeting=True):
    mark = moat.log_mark()
    c = RawSMTP(moat.ports[listener])
    m = moat.wait_log(r"^New SMTP ICID (\d+) interface %s " % listener, since=mark)
    icid = int(m.group(1))
    if greeting:
        assert c.reply().line == "220 %s ESMTP" % HOSTNAME
    if ehlo:
        assert c.cmd("EHLO " + CLIENT).code == 250
    return c, icid


def session_log(moat, since, icid, timeout=5.0):
    """This session's mail log lines (those naming its ICID or one of its
    MIDs) from line `since` on, once its close/lost line is there. Other
    lines (start-up lines written after the port listens, other sessions)
    are left out."""
    moat.wait_log(r"^ICID %d (close|lost)$" % icid, since=since, timeout=timeout)
    mids, out = set(), []
    for ln in moat.log_lines()[since:]:
        m = re.fullmatch(r"Start MID (\d+) ICID (\d+)", ln)
        if m and int(m.group(2)) == icid:
            mids.add(int(m.group(1)))
        m = re.search(r"\bMID (\d+)\b", ln)
        if re.search(r"\bICID %d\b" % icid, ln) or (m and int(m.group(1)) in mids):
            out.append(ln)
    return out


def start_mid(lines, icid):
    mids = [int(m.group(1)) for m in
            (re.fullmatch(r"Start MID (\d+) ICID %d" % icid, ln) for ln in lines) if m]
    return mids


def accepted_mid(reply):
    m = re.fullmatch(r"250 2\.0\.0 Ok: Message (\d+) accepted", reply.line)
    assert m, reply.raw
    return int(m.group(1))


def stored_content(moat, mid):
    """The message bytes of queue/MID without moat's Received: header."""
    data = (moat.spool / "queue" / str(mid)).read_bytes()
    pos, content = 8, b""
    while pos < len(data):
        typ = data[pos:pos + 1]
        (n,) = struct.unpack(">I", data[pos + 1:pos + 5])
        if typ == b"C":
            content += data[pos + 5:pos + 5 + n]
        pos += 5 + n
    m = re.match(rb"Received: from [^\r\n]*\r\n(\t[^\r\n]*\r\n)+", content)
    assert m, content[:200]
    return content[m.end():]


def begin_data(c, rcpt="user@example.com"):
    c.expect("MAIL FROM:<s@other.test>", "250 2.1.0 Sender ok")
    c.expect("RCPT TO:<%s>" % rcpt, "250 2.1.5 Recipient ok")
    c.expect("DATA", DATA_GO)


def body_of(size):
    """A message of exactly `size` bytes made of CRLF lines <= 100 octets."""
    head = b"Subject: size\r\n\r\n"
    n = size - len(head)
    lines = []
    while n > 0:
        k = min(n, 100)
        if k < 3:  # avoid a line too short to hold CRLF: grow the previous
            lines[-1] = lines[-1][:-2] + b"y" * k + b"\r\n"
            break
        lines.append(b"x" * (k - 2) + b"\r\n")
        n -= k
    out = head + b"".join(lines)
    assert len(out) == size
    return out


# ---------------------------------------------------------------------------
# command line, path, local part, domain


def test_command_line_length(moat):
    mark = moat.log_mark()
    c, icid = connect(moat)
    with c:
        # 512 octets including CRLF: accepted
        line = b"NOOP " + b"x" * (512 - 2 - 5)
        assert len(line) + 2 == 512
        assert c.cmd(line).line.startswith("250 2.0.0 ")
        # 513 octets: refused, session goes on
        c.expect(line + b"y", "500 5.5.2 Line too long")
        # a much longer line, in several writes: exactly one reply
        c.send(b"MAIL FROM:<" + b"a" * 3000)
        time.sleep(0.1)
        c.send(b"b" * 3000 + b"@example.com>\r\n")
        assert c.reply().line == "500 5.5.2 Line too long"
        c.nothing_more(0.3)
        # the bytes after the long line are a fresh command
        c.send(b"M" * 600 + b"\r\nMAIL FROM:<s@other.test>\r\n")
        assert c.reply().line == "500 5.5.2 Line too long"
        assert c.reply().line == "250 2.1.0 Sender ok"
        c.expect("QUIT", "221 2.0.0 Bye")
    lines = session_log(moat, mark, icid)
    bad = "ICID %d Bad syntax for command: (line too long)" % icid
    assert lines.count(bad) == 3


def _mail(c, addr):
    r = c.cmd("MAIL FROM:<%s>" % addr)
    if r.code == 250:
        c.expect("RSET", "250 2.0.0 Reset state")
    return r.line


def test_path_local_part_and_domain_limits(moat):
    local64 = "l" * 64
    label63 = "d" * 63
    # a 256-octet path: <local64@63.63.57.com> = 1+64+1+(63+1+63+1+57+4)+1
    dom189 = "%s.%s.%s.com" % (label63, label63, "e" * 57)
    addr254 = local64 + "@" + dom189
    assert len("<%s>" % addr254) == 256
    mark = moat.log_mark()
    c, icid = connect(moat)
    with c:
        assert _mail(c, addr254) == "250 2.1.0 Sender ok"
        assert _mail(c, local64 + "@" + dom189 + "m") == "501 5.5.4 Path too long"
        assert _mail(c, local64 + "@example.com") == "250 2.1.0 Sender ok"
        assert _mail(c, local64 + "l@example.com") == "501 5.1.3 Local part too long"
        assert _mail(c, "u@%s.com" % label63) == "250 2.1.0 Sender ok"
        assert _mail(c, "u@%sd.com" % label63) == "501 5.1.2 Domain name too long"
        # the same bounds apply to recipients
        c.expect("MAIL FROM:<s@other.test>", "250 2.1.0 Sender ok")
        c.expect("RCPT TO:<%s@example.com>" % local64, "250 2.1.5 Recipient ok")
        c.expect("RCPT TO:<%sl@example.com>" % local64, "501 5.1.3 Local part too long")
        c.expect("RCPT TO:<%s>" % (local64 + "@" + dom189 + "m"),
                 "501 5.5.4 Path too long")
        c.expect("RCPT TO:<u@%sd.example.com>" % label63,
                 "501 5.1.2 Domain name too long")
        c.expect("QUIT", "221 2.0.0 Bye")
    lines = session_log(moat, mark, icid)
    assert ("ICID %d Invalid sender address: path too long: 'FROM:<%s>'"
            % (icid, local64 + "@" + dom189 + "m")) in lines
    assert ("ICID %d Invalid sender address: local part too long: 'FROM:<%s>'"
            % (icid, local64 + "l@example.com")) in lines
    assert ("ICID %d Invalid sender address: label too long: 'FROM:<u@%sd.com>'"
            % (icid, label63)) in lines
    mid = start_mid(lines, icid)[-1]
    assert ("ICID %d MID %d Invalid recipient address: local part too long: "
            "'TO:<%sl@example.com>'" % (icid, mid, local64)) in lines


# ---------------------------------------------------------------------------
# message content


def test_text_line_limit(moat):
    mark = moat.log_mark()
    c, icid = connect(moat)
    with c:
        ok_line = b"a" * 998 + b"\r\n"          # 1000 octets with CRLF
        begin_data(c)
        c.send(b"Subject: ok\r\n\r\n" + ok_line + b".\r\n")
        mid = accepted_mid(c.reply())
        begin_data(c)
        c.send(b"Subject: long\r\n\r\n" + b"a" * 999 + b"\r\nmore\r\n.\r\nNOOP\r\n")
        assert c.reply().line == ("554 5.6.0 Message refused: a text line is "
                                  "longer than 1000 octets")
        assert c.reply().line.startswith("250 2.0.0 ")  # the NOOP: not content
        # an over-long header line is refused the same way
        begin_data(c)
        c.send(b"Subject: " + b"s" * 1200 + b"\r\n\r\nbody\r\n.\r\n")
        assert c.reply().line == ("554 5.6.0 Message refused: a text line is "
                                  "longer than 1000 octets")
        c.expect("QUIT", "221 2.0.0 Bye")
    assert stored_content(moat, mid) == b"Subject: ok\r\n\r\n" + ok_line
    assert moat.spool_files() == {"queue": [str(mid)], "incoming": []}
    lines = session_log(moat, mark, icid)
    failed = ("ICID %d Receiving Failed: Protocol error (line longer than 1000 "
              "octets)" % icid)
    assert lines.count(failed) == 2
    mids = start_mid(lines, icid)
    for m in mids[1:]:
        i = lines.index("Message aborted MID %d Receiving aborted" % m)
        assert lines[i - 1] == failed


@pytest.mark.moat_conf(conf(max_message_size=2000))
def test_declared_size(moat):
    mark = moat.log_mark()
    c, icid = connect(moat, ehlo=False)
    with c:
        r = c.cmd("EHLO " + CLIENT)
        assert "250-SIZE 2000" in r.raw
        c.expect("MAIL FROM:<s@other.test> SIZE=2001",
                 "552 5.3.4 Message size exceeds fixed maximum message size")
        c.expect("MAIL FROM:<s@other.test> SIZE=18446744073709551615",
                 "552 5.3.4 Message size exceeds fixed maximum message size")
        c.expect("MAIL FROM:<s@other.test> SIZE=18446744073709551616",
                 "555 5.5.4 Unsupported MAIL/RCPT parameter")
        c.expect("MAIL FROM:<s@other.test> SIZE=1k",
                 "555 5.5.4 Unsupported MAIL/RCPT parameter")
        c.expect("MAIL FROM:<s@other.test> SIZE=2000", "250 2.1.0 Sender ok")
        c.expect("QUIT", "221 2.0.0 Bye")
    lines = session_log(moat, mark, icid)
    assert lines[2:4] == ["ICID %d Receiving Failed: Message size exceeds limit" % icid] * 2
    # a refused SIZE= does not start a message
    assert len(start_mid(lines, icid)) == 1


@pytest.mark.moat_conf(conf(max_message_size=2000))
def test_content_size(moat):
    mark = moat.log_mark()
    c, icid = connect(moat)
    with c:
        begin_data(c)
        c.send(body_of(2000) + b".\r\n")
        mid = accepted_mid(c.reply())
        begin_data(c)
        # too big: answered at the end of data; the pipelined command after
        # the terminator is a command again
        c.send(body_of(2001) + b".\r\nNOOP\r\n")
        assert c.reply().line == ("552 5.3.4 Message size exceeds fixed maximum "
                                  "message size")
        assert c.reply().line.startswith("250 2.0.0 ")
        # far too big, with BDAT
        c.expect("MAIL FROM:<s@other.test>", "250 2.1.0 Sender ok")
        c.expect("RCPT TO:<user@example.com>", "250 2.1.5 Recipient ok")
        big = body_of(50000)
        c.send(b"BDAT %d LAST\r\n" % len(big) + big)
        assert c.reply().line == ("552 5.3.4 Message size exceeds fixed maximum "
                                  "message size")
        c.expect("QUIT", "221 2.0.0 Bye")
    assert stored_content(moat, mid) == body_of(2000)
    assert moat.spool_files() == {"queue": [str(mid)], "incoming": []}
    lines = session_log(moat, mark, icid)
    assert lines.count("ICID %d Receiving Failed: Message size exceeds limit" % icid) == 2


# ---------------------------------------------------------------------------
# counts


@pytest.mark.moat_conf(conf(max_recipients=2))
def test_max_recipients(moat):
    mark = moat.log_mark()
    c, icid = connect(moat)
    with c:
        c.expect("MAIL FROM:<s@other.test>", "250 2.1.0 Sender ok")
        c.expect("RCPT TO:<a@example.com>", "250 2.1.5 Recipient ok")
        c.expect("RCPT TO:<x@other.test>", "550 5.1.0 Address rejected")
        c.expect("RCPT TO:<b@example.com>", "250 2.1.5 Recipient ok")
        c.expect("RCPT TO:<c@example.com>", "452 4.5.3 Too many recipients")
        c.expect("RCPT TO:<d@example.com>", "452 4.5.3 Too many recipients")
        c.expect("DATA", DATA_GO)
        c.send(b"Subject: r\r\n\r\nrcpts\r\n.\r\n")
        mid = accepted_mid(c.reply())
        # the next message starts counting afresh
        c.expect("MAIL FROM:<s@other.test>", "250 2.1.0 Sender ok")
        c.expect("RCPT TO:<e@example.com>", "250 2.1.5 Recipient ok")
        c.expect("RCPT TO:<f@example.com>", "250 2.1.5 Recipient ok")
        c.expect("QUIT", "221 2.0.0 Bye")
    lines = session_log(moat, mark, icid)
    assert lines[4:9] == [
        "MID %d ICID %d RID 0 To: <a@example.com>" % (mid, icid),
        "MID %d ICID %d To: <x@other.test> Rejected by RAT" % (mid, icid),
        "MID %d ICID %d RID 1 To: <b@example.com>" % (mid, icid),
        "MID %d ICID %d To: <c@example.com> Rejected by Receiving Control "
        "(too many recipients)" % (mid, icid),
        "MID %d ICID %d To: <d@example.com> Rejected by Receiving Control "
        "(too many recipients)" % (mid, icid),
    ]


@pytest.mark.moat_conf(conf(max_messages_per_connection=2))
def test_max_messages_per_connection(moat):
    mark = moat.log_mark()
    c, icid = connect(moat)
    with c:
        for _ in range(2):
            begin_data(c)
            c.send(b"Subject: m\r\n\r\nm\r\n.\r\n")
            accepted_mid(c.reply())
        c.expect("MAIL FROM:<s@other.test>",
                 "452 4.5.3 Too many messages for this connection")
        # refused but not an error: RSET etc. still work; the session ends
        # normally
        c.expect("RSET", "250 2.0.0 Reset state")
        c.expect("QUIT", "221 2.0.0 Bye")
    lines = session_log(moat, mark, icid)
    assert lines[-2:] == ["ICID %d Receiving Failed: Too Many Messages" % icid,
                          "ICID %d close" % icid]
    assert len(moat.spool_files()["queue"]) == 2
    # a new connection may send again
    c, icid2 = connect(moat)
    with c:
        begin_data(c)
        c.send(b"Subject: m\r\n\r\nm\r\n.\r\n")
        accepted_mid(c.reply())
        c.expect("QUIT", "221 2.0.0 Bye")


@pytest.mark.moat_conf(conf(max_connections=2))
def test_max_connections(moat):
    mark = moat.log_mark()
    a, icid_a = connect(moat)
    b, icid_b = connect(moat)
    with a, b:
        third_mark = moat.log_mark()
        with RawSMTP(moat.ports["IncomingMail"]) as c:
            assert c.reply().line == "421 4.3.2 Too many connections, try again later"
            assert c.closed()
        icid_c = int(moat.wait_log(r"^New SMTP ICID (\d+)", since=third_mark).group(1))
        assert_lines = session_log(moat, third_mark, icid_c)
        assert assert_lines == [
            "New SMTP ICID %d interface IncomingMail (127.0.0.1) address 127.0.0.1 "
            "reverse dns host unknown verified no" % icid_c,
            "ICID %d Receiving Failed: Connection limit exceeded" % icid_c,
            "ICID %d close" % icid_c,
        ]
        # the sessions that were in are not disturbed
        a.expect("MAIL FROM:<s@other.test>", "250 2.1.0 Sender ok")
        a.expect("QUIT", "221 2.0.0 Bye")
        moat.wait_log(r"^ICID %d close$" % icid_a, since=mark)
        # a slot is free again
        d, icid_d = connect(moat)
        with d:
            d.expect("QUIT", "221 2.0.0 Bye")
        b.expect("QUIT", "221 2.0.0 Bye")
    assert icid_a < icid_b < icid_c < icid_d


@pytest.mark.moat_conf(conf(max_errors=3))
def test_max_errors(moat):
    mark = moat.log_mark()
    c, icid = connect(moat)
    with c:
        c.expect("XXXX", "500 5.5.1 Command unrecognized")
        assert c.cmd("NOOP").code == 250  # not an error
        c.expect("RCPT TO:<a@example.com>", "503 5.5.1 Need MAIL command")
        # the third error, then four more pipelined: one reply + 421, close
        c.send(b"XXXXXXXXXXXXXX\r\nXXXX\r\nXXXX\r\nNOOP\r\n")
        assert c.reply().line == "500 5.5.1 Command unrecognized"
        assert c.reply().line == "421 4.7.0 Too many errors, closing connection"
        assert c.closed()
    lines = session_log(moat, mark, icid)
    assert lines[2:] == [
        "ICID %d Unknown command: XXXX" % icid,
        "ICID %d Unknown command: XXXXXXXXXXXXXX" % icid,
        "ICID %d disconnected address 127.0.0.1, too many errors" % icid,
        "ICID %d close" % icid,
    ]


@pytest.mark.moat_conf(conf(max_errors=2))
def test_max_errors_with_open_transaction_logs_abort(moat):
    mark = moat.log_mark()
    c, icid = connect(moat)
    with c:
        c.expect("MAIL FROM:<s@other.test>", "250 2.1.0 Sender ok")
        c.expect("RCPT TO:<a@example.com>", "250 2.1.5 Recipient ok")
        c.expect("XXXX", "500 5.5.1 Command unrecognized")
        c.send(b"XXXX\r\n")
        assert c.reply().line == "500 5.5.1 Command unrecognized"
        assert c.reply().line == "421 4.7.0 Too many errors, closing connection"
        assert c.closed()
    lines = session_log(moat, mark, icid)
    mid = start_mid(lines, icid)[0]
    assert lines[-3:] == [
        "ICID %d disconnected address 127.0.0.1, too many errors" % icid,
        "Message aborted MID %d Receiving aborted" % mid,
        "ICID %d close" % icid,
    ]


# ---------------------------------------------------------------------------
# timeouts


@pytest.mark.moat_conf(conf(command_timeout=1))
def test_command_timeout_before_and_after_messages(moat):
    mark = moat.log_mark()
    c, icid = connect(moat)
    with c:
        t0 = time.monotonic()
        assert c.reply(timeout=4).line == TIMEOUT_421
        assert 0.8 < time.monotonic() - t0 < 3.5
        assert c.closed()
    assert session_log(moat, mark, icid)[2:] == [
        "ICID %d disconnected address 127.0.0.1, no messages injected within "
        "timeout period" % icid,
        "ICID %d close" % icid,
    ]
    # after a message the reason changes; an open transaction is aborted
    mark = moat.log_mark()
    c, icid = connect(moat)
    with c:
        begin_data(c)
        c.send(b"Subject: t\r\n\r\nt\r\n.\r\n")
        accepted_mid(c.reply())
        c.expect("MAIL FROM:<s@other.test>", "250 2.1.0 Sender ok")
        assert c.reply(timeout=4).line == TIMEOUT_421
        assert c.closed()
    lines = session_log(moat, mark, icid)
    mid = start_mid(lines, icid)[1]
    assert lines[-3:] == [
        "ICID %d disconnected address 127.0.0.1, command timeout" % icid,
        "Message aborted MID %d Receiving aborted" % mid,
        "ICID %d close" % icid,
    ]


@pytest.mark.moat_conf(conf(command_timeout=1))
def test_command_timeout_restarts_with_each_command(moat):
    c, icid = connect(moat)
    with c:
        for _ in range(5):  # 2.5 s in all, never 1 s idle
            time.sleep(0.5)
            assert c.cmd("NOOP").line.startswith("250 2.0.0 ")
        assert c.reply(timeout=4).line == TIMEOUT_421


@pytest.mark.parametrize("mode", ["DATA", "BDAT"])
@pytest.mark.moat_conf(conf(command_timeout=10, data_timeout=1))
def test_data_timeout(moat, mode):
    mark = moat.log_mark()
    c, icid = connect(moat)
    with c:
        if mode == "DATA":
            begin_data(c)
            c.send(b"Subject: slow\r\n\r\npart of a li")
        else:
            c.expect("MAIL FROM:<s@other.test>", "250 2.1.0 Sender ok")
            c.expect("RCPT TO:<user@example.com>", "250 2.1.5 Recipient ok")
            c.send(b"BDAT 100 LAST\r\nSubject: slow\r\n")
        t0 = time.monotonic()
        assert c.reply(timeout=5).line == TIMEOUT_421
        assert time.monotonic() - t0 < 4
        assert c.closed()
    lines = session_log(moat, mark, icid)
    mid = start_mid(lines, icid)[0]
    assert lines[-3:] == [
        "ICID %d Receiving Failed: Data timeout" % icid,
        "Message aborted MID %d Receiving aborted" % mid,
        "ICID %d close" % icid,
    ]
    assert moat.spool_files() == {"queue": [], "incoming": []}


@pytest.mark.moat_conf(conf(command_timeout=10, connection_timeout=2))
def test_connection_timeout(moat):
    mark = moat.log_mark()
    c, icid = connect(moat)
    t0 = time.monotonic()
    with c:
        got = None
        while time.monotonic() - t0 < 5:
            r = c.cmd("NOOP")
            if r.code != 250:
                got = r
                break
            time.sleep(0.2)
        assert got is not None and got.line == TIMEOUT_421
        assert 1.5 < time.monotonic() - t0 < 4
        assert c.closed()
    assert session_log(moat, mark, icid)[2:] == [
        "ICID %d disconnected address 127.0.0.1, exceeded allowable connection time"
        % icid,
        "ICID %d close" % icid,
    ]


# ---------------------------------------------------------------------------
# buffering


def test_pipelined_flood_all_answered_in_order(moat):
    """More pipelined commands than moat buffers (input and replies over
    256 KiB): none is lost or answered twice, replies stay in order."""
    import threading

    n = 30000
    c, icid = connect(moat)
    with c:
        script = b"".join(b"NOOP %d\r\n" % i for i in range(n))
        script += b"MAIL FROM:<s@other.test>\r\nQUIT\r\n"
        assert len(script) > 256 * 1024
        errors = []

        def writer():
            try:
                c.sock.sendall(script)
            except OSError as e:  # pragma: no cover - reported below
                errors.append(e)

        t = threading.Thread(target=writer)
        t.start()
        time.sleep(0.5)  # let the replies pile up unread first
        data = b""
        deadline = time.monotonic() + 60
        c.sock.settimeout(5)
        while not data.endswith(b"221 2.0.0 Bye\r\n") and time.monotonic() < deadline:
            chunk = c.sock.recv(1 << 20)
            if not chunk:
                break
            data += chunk
        t.join(10)
        assert not errors
        lines = data.split(b"\r\n")
        assert lines[-1] == b""
        lines = lines[:-1]
        assert len(lines) == n + 2
        assert all(ln.startswith(b"250 2.0.0 ") for ln in lines[:n])
        assert lines[n:] == [b"250 2.1.0 Sender ok", b"221 2.0.0 Bye"]
        assert c.closed()


def test_helo_argument_length(moat):
    mark = moat.log_mark()
    c, icid = connect(moat, ehlo=False)
    with c:
        assert c.cmd("EHLO " + "h" * 255).raw[0] == "250-" + HOSTNAME
        c.expect("EHLO " + "h" * 256, "501 5.5.4 Syntax: EHLO hostname")
        c.expect("HELO " + "h" * 256, "501 5.5.4 Syntax: EHLO hostname")
        c.expect("EHLO two words", "501 5.5.4 Syntax: EHLO hostname")
        # the last good EHLO still stands
        c.expect("MAIL FROM:<s@other.test> SIZE=10", "250 2.1.0 Sender ok")
        c.expect("QUIT", "221 2.0.0 Bye")
    lines = session_log(moat, mark, icid)
    assert lines[2:5] == ["ICID %d Bad syntax for command: EHLO" % icid,
                          "ICID %d Bad syntax for command: HELO" % icid,
                          "ICID %d Bad syntax for command: EHLO" % icid]


@pytest.mark.moat_conf(conf(command_timeout=10, data_timeout=10, connection_timeout=2))
def test_connection_timeout_during_data_names_the_right_limit(moat):
    mark = moat.log_mark()
    c, icid = connect(moat)
    t0 = time.monotonic()
    with c:
        begin_data(c)
        try:
            while time.monotonic() - t0 < 5:  # data keeps flowing
                c.send(b"more data\r\n")
                time.sleep(0.2)
        except OSError:
            pass
        assert c.reply(timeout=2).line == TIMEOUT_421
    lines = session_log(moat, mark, icid)
    mid = start_mid(lines, icid)[0]
    assert lines[-3:] == [
        "ICID %d disconnected address 127.0.0.1, exceeded allowable connection time"
        % icid,
        "Message aborted MID %d Receiving aborted" % mid,
        "ICID %d close" % icid,
    ]
