"""SMTP protocol conformance of moatd's listeners, seen from the wire.

Every test drives a real moatd (fixture ``moat``, default configuration:
public listener IncomingMail with ``rat`` example.com=accept, ALL=reject;
private listener OutgoingMail relaying for 127.0.0.0/8) and checks the exact
replies (code, enhanced code, text), the exact mail log lines and what
reached the spool. Raw sockets are used where bytes matter, smtplib for
ordinary dialogues and swaks as an independent client.
"""

import re
import smtplib
import socket
import struct
import time
import zlib

import pytest

from smtp_client import RawSMTP

HOSTNAME = "gw.test.example"
CLIENT = "client.test.example"

# ---------------------------------------------------------------------------
# helpers


def connect(moat, listener="IncomingMail", ehlo=True):
    """Open a session; returns (client, icid). Checks the greeting."""
    mark = moat.log_mark()
    c = RawSMTP(moat.ports[listener])
    r = c.reply()
    assert r.line == "220 %s ESMTP" % HOSTNAME
    m = moat.wait_log(r"^New SMTP ICID (\d+) interface %s " % listener, since=mark)
    icid = int(m.group(1))
    if ehlo:
        r = c.cmd("EHLO " + CLIENT)
        assert r.code == 250
    return c, icid


def noop(c, line="NOOP"):
    """NOOP must answer 250 2.0.0. (Its text is checked only by
    test_noop_reply_text: moatd answers 'Reset state', see there.)"""
    r = c.cmd(line)
    assert r.code == 250 and r.line.startswith("250 2.0.0 "), r.raw
    return r


def accepted_mid(reply):
    m = re.fullmatch(r"250 2\.0\.0 Ok: Message (\d+) accepted", reply.line)
    assert m, reply.raw
    return int(m.group(1))


def read_spool(path):
    """Parse a spool file: (envelope dict, content bytes); checks the CRC."""
    data = path.read_bytes()
    assert data[:8] == b"MOATSPL\x01"
    pos, env, content, end = 8, None, b"", None
    while pos < len(data):
        typ = data[pos:pos + 1]
        (n,) = struct.unpack(">I", data[pos + 1:pos + 5])
        payload = data[pos + 5:pos + 5 + n]
        assert len(payload) == n
        if typ == b"E":
            env = _envelope(payload)
        elif typ == b"C":
            content += payload
        elif typ == b"Z":
            clen, crc = struct.unpack(">QI", payload)
            assert clen == len(content)
            assert crc == zlib.crc32(data[:pos]) & 0xFFFFFFFF
            end = pos
        elif typ == b"S" and end is not None:
            pass  # a recipient status record (docs/spool.md)
        else:
            raise AssertionError("bad record type %r" % typ)
        pos += 5 + n
    assert env is not None and end is not None
    return env, content


def _envelope(p):
    mid, icid, received, flags = struct.unpack(">QQqI", p[:28])
    pos = 28

    def s():
        nonlocal pos
        (n,) = struct.unpack(">I", p[pos:pos + 4])
        v = p[pos + 4:pos + 4 + n].decode("utf-8")
        pos += 4 + n
        return v

    env = dict(mid=mid, icid=icid, received=received, flags=flags,
               listener=s(), client_ip=s(), helo=s(), mail_from=s())
    (nrcpt,) = struct.unpack(">I", p[pos:pos + 4])
    pos += 4
    rcpts = []
    for i in range(nrcpt):
        (rid,) = struct.unpack(">I", p[pos:pos + 4])
        pos += 4
        assert rid == i
        rcpts.append(s())
    assert pos == len(p)
    env["rcpts"] = rcpts
    return env


def spooled(moat, mid):
    return read_spool(moat.spool / "queue" / str(mid))


def split_received(content):
    """Split stored content into (Received header, rest); checks its shape."""
    m = re.match(rb"Received: from [^\r\n]*\r\n(\t[^\r\n]*\r\n)+", content)
    assert m, content[:300]
    return m.group(0), content[m.end():]


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


def assert_lines(lines, patterns):
    """Each line fullmatches its pattern, same count, same order."""
    assert len(lines) == len(patterns), "\n".join(lines)
    for ln, pat in zip(lines, patterns):
        assert re.fullmatch(pat, ln), "line %r does not match %r\nall:\n%s" % (
            ln, pat, "\n".join(lines))


def new_icid_re(icid, listener="IncomingMail"):
    return (r"New SMTP ICID %d interface %s \(127\.0\.0\.1\) address 127\.0\.0\.1 "
            r"reverse dns host localhost verified yes" % (icid, listener))


def accept_re(icid):
    return (r"ICID %d ACCEPT SG UNKNOWNLIST match sbrs\[none\] SBRS not enabled "
            r"country not enabled" % icid)


def send_message(c, rcpt="user@example.com", body=b"Subject: t\r\n\r\nhello\r\n",
                 sender="sender@other.test"):
    """MAIL/RCPT/DATA/content on an open session; returns the final reply."""
    c.expect("MAIL FROM:<%s>" % sender, "250 2.1.0 Sender ok")
    c.expect("RCPT TO:<%s>" % rcpt, "250 2.1.5 Recipient ok")
    c.expect("DATA", "354 Start mail input; end with <CRLF>.<CRLF>")
    c.send(body + b".\r\n")
    return c.reply()


EHLO_LINES = [
    "250-" + HOSTNAME,
    "250-PIPELINING",
    "250-SIZE 10485760",
    "250-8BITMIME",
    "250-ENHANCEDSTATUSCODES",
    "250-CHUNKING",
    "250 SMTPUTF8",
]

# ---------------------------------------------------------------------------
# greeting, EHLO and the simple commands


def test_greeting_and_ehlo_extensions(moat):
    c, icid = connect(moat, ehlo=False)
    with c:
        r = c.cmd("EHLO " + CLIENT)
        assert r.raw == EHLO_LINES
        # A second EHLO gives the same answer.
        assert c.cmd("ehlo other.client").raw == EHLO_LINES
        c.expect("QUIT", "221 2.0.0 Bye")
        assert c.closed()
    lines = session_log(moat, 0, icid)
    assert lines[-1] == "ICID %d close" % icid


def test_simple_commands(moat):
    mark = moat.log_mark()
    c, icid = connect(moat, ehlo=False)
    with c:
        c.expect("HELO " + CLIENT, "250 " + HOSTNAME)
        noop(c)
        noop(c, "noop with arguments")
        c.expect("RSET", "250 2.0.0 Reset state")
        c.expect("RSET now", "501 5.5.4 No parameters allowed")
        c.expect("VRFY postmaster",
                 "252 2.5.0 Cannot VRFY user, but will accept message and "
                 "attempt delivery")
        c.expect("VRFY <nobody@example.com>",
                 "252 2.5.0 Cannot VRFY user, but will accept message and "
                 "attempt delivery")
        c.expect("VRFY", "501 5.5.4 Syntax error in parameters or arguments")
        c.expect("EXPN staff", "502 5.5.1 Command not implemented")
        c.expect("HELP",
                 "214 2.0.0 Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP "
                 "QUIT VRFY HELP")
        c.expect("HELP MAIL",
                 "214 2.0.0 Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP "
                 "QUIT VRFY HELP")
        c.expect("HELO", "501 5.5.4 Syntax: EHLO hostname")
        c.expect("QUIT", "221 2.0.0 Bye")
        assert c.closed()
    assert_lines(session_log(moat, mark, icid), [
        new_icid_re(icid),
        accept_re(icid),
        r"ICID %d Bad syntax for command: HELO" % icid,
        r"ICID %d close" % icid,
    ])


def test_noop_reply_text(moat):
    c, icid = connect(moat)
    with c:
        c.expect("MAIL FROM:<s@other.test>", "250 2.1.0 Sender ok")
        c.expect("NOOP", "250 2.0.0 Ok")
        c.expect("QUIT", "221 2.0.0 Bye")


def test_noop_keeps_the_transaction(moat):
    mark = moat.log_mark()
    c, icid = connect(moat)
    with c:
        c.expect("MAIL FROM:<s@other.test>", "250 2.1.0 Sender ok")
        noop(c)
        c.expect("RCPT TO:<user@example.com>", "250 2.1.5 Recipient ok")
        noop(c, "NOOP still here")
        c.expect("DATA", "354 Start mail input; end with <CRLF>.<CRLF>")
        c.send(b"Subject: n\r\n\r\nnoop\r\n.\r\n")
        mid = accepted_mid(c.reply())
        c.expect("QUIT", "221 2.0.0 Bye")
    lines = session_log(moat, mark, icid)
    assert not any(ln.startswith("Message aborted") for ln in lines), lines
    assert "MID %d queued for delivery" % mid in lines


def test_helo_session_sends_mail_as_smtp(moat):
    c, icid = connect(moat, ehlo=False)
    with c:
        c.expect("HELO " + CLIENT, "250 " + HOSTNAME)
        # ESMTP parameters are refused after HELO.
        c.expect("MAIL FROM:<a@other.test> SIZE=10",
                 "555 5.5.4 Unsupported MAIL/RCPT parameter")
        mid = accepted_mid(send_message(c))
        c.expect("QUIT", "221 2.0.0 Bye")
    _, content = spooled(moat, mid)
    rcv, _ = split_received(content)
    assert (b"\tby %s with SMTP id %d (ICID %d)" % (HOSTNAME.encode(), mid, icid)
            in rcv)


def test_unknown_commands_masked_by_firewall(moat):
    """A firewall masking commands as X's (e.g. 'XXXX' for EHLO, a long run
    of X's for STARTTLS) gets 500 5.5.1; the session goes on."""
    mark = moat.log_mark()
    c, icid = connect(moat, ehlo=False)
    with c:
        c.expect("XXXX", "500 5.5.1 Command unrecognized")
        c.expect("XXXXXXXXXXXXXX", "500 5.5.1 Command unrecognized")
        c.expect("XXXX client.test.example", "500 5.5.1 Command unrecognized")
        c.expect("EHLOX", "500 5.5.1 Command unrecognized")
        # the client falls back to HELO and sends its mail
        c.expect("HELO " + CLIENT, "250 " + HOSTNAME)
        mid = accepted_mid(send_message(c))
        c.expect("QUIT", "221 2.0.0 Bye")
    lines = session_log(moat, mark, icid)
    assert lines[2:6] == [
        "ICID %d Unknown command: XXXX" % icid,
        "ICID %d Unknown command: XXXXXXXXXXXXXX" % icid,
        "ICID %d Unknown command: XXXX client.test.example" % icid,
        "ICID %d Unknown command: EHLOX" % icid,
    ]
    assert "MID %d queued for delivery" % mid in lines


def test_starttls_and_auth_not_available(moat):
    c, icid = connect(moat)
    with c:
        c.expect("STARTTLS", "502 5.5.1 STARTTLS not available")
        c.expect("AUTH PLAIN AHVzZXIAcGFzcw==", "502 5.5.1 AUTH not available")
        c.expect("auth login", "502 5.5.1 AUTH not available")
        # still in plain text and usable
        accepted_mid(send_message(c))
        c.expect("QUIT", "221 2.0.0 Bye")


def test_sequence_errors(moat):
    mark = moat.log_mark()
    c, icid = connect(moat, ehlo=False)
    with c:
        c.expect("MAIL FROM:<a@other.test>", "503 5.5.1 Send EHLO or HELO first")
        c.expect("EHLO " + CLIENT, EHLO_LINES[-1])
        c.expect("RCPT TO:<user@example.com>", "503 5.5.1 Need MAIL command")
        c.expect("DATA", "503 5.5.1 Need MAIL command")
        c.expect("MAIL FROM:<a@other.test>", "250 2.1.0 Sender ok")
        c.expect("DATA", "503 5.5.1 Need RCPT command")
        c.expect("MAIL FROM:<b@other.test>", "503 5.5.1 Sender already specified")
        c.expect("DATA extra", "501 5.5.4 No parameters allowed")
        # the transaction is intact: the first sender is kept
        c.expect("RCPT TO:<user@example.com>", "250 2.1.5 Recipient ok")
        c.expect("DATA", "354 Start mail input; end with <CRLF>.<CRLF>")
        c.send(b"Subject: seq\r\n\r\nbody\r\n.\r\n")
        mid = accepted_mid(c.reply())
        c.expect("QUIT", "221 2.0.0 Bye")
    env, _ = spooled(moat, mid)
    assert env["mail_from"] == "a@other.test"
    assert env["rcpts"] == ["user@example.com"]
    lines = session_log(moat, mark, icid)
    assert "MID %d ICID %d From: <a@other.test>" % (mid, icid) in lines
    assert not any("b@other.test" in ln for ln in lines)


def test_rset_quit_and_ehlo_abort_the_transaction(moat):
    mark = moat.log_mark()
    c, icid = connect(moat)
    with c:
        c.expect("MAIL FROM:<a@other.test>", "250 2.1.0 Sender ok")
        c.expect("RCPT TO:<user@example.com>", "250 2.1.5 Recipient ok")
        c.expect("RSET", "250 2.0.0 Reset state")
        c.expect("RCPT TO:<user@example.com>", "503 5.5.1 Need MAIL command")
        c.expect("MAIL FROM:<b@other.test>", "250 2.1.0 Sender ok")
        c.expect("EHLO again.test", EHLO_LINES[-1])
        c.expect("DATA", "503 5.5.1 Need MAIL command")
        c.expect("MAIL FROM:<c@other.test>", "250 2.1.0 Sender ok")
        c.expect("RCPT TO:<user@example.com>", "250 2.1.5 Recipient ok")
        c.expect("QUIT", "221 2.0.0 Bye")
        assert c.closed()
    lines = session_log(moat, mark, icid)
    mids = [int(m.group(1)) for m in
            (re.fullmatch(r"Start MID (\d+) ICID %d" % icid, ln) for ln in lines) if m]
    assert len(mids) == 3 and mids == sorted(set(mids))
    assert_lines(lines, [
        new_icid_re(icid), accept_re(icid),
        r"Start MID %d ICID %d" % (mids[0], icid),
        r"MID %d ICID %d From: <a@other\.test>" % (mids[0], icid),
        r"MID %d ICID %d RID 0 To: <user@example\.com>" % (mids[0], icid),
        r"Message aborted MID %d Receiving aborted" % mids[0],
        r"Start MID %d ICID %d" % (mids[1], icid),
        r"MID %d ICID %d From: <b@other\.test>" % (mids[1], icid),
        r"Message aborted MID %d Receiving aborted" % mids[1],
        r"Start MID %d ICID %d" % (mids[2], icid),
        r"MID %d ICID %d From: <c@other\.test>" % (mids[2], icid),
        r"MID %d ICID %d RID 0 To: <user@example\.com>" % (mids[2], icid),
        r"Message aborted MID %d Receiving aborted" % mids[2],
        r"ICID %d close" % icid,
    ])
    assert moat.spool_files() == {"queue": [], "incoming": []}


def test_client_disconnect_is_lost(moat):
    mark = moat.log_mark()
    c, icid = connect(moat)
    c.expect("MAIL FROM:<a@other.test>", "250 2.1.0 Sender ok")
    c.expect("RCPT TO:<user@example.com>", "250 2.1.5 Recipient ok")
    c.expect("DATA", "354 Start mail input; end with <CRLF>.<CRLF>")
    c.send(b"Subject: half\r\n\r\nhalf a mess")
    c.close()
    lines = session_log(moat, mark, icid)
    mid = int(re.search(r"Start MID (\d+)", "\n".join(lines)).group(1))
    assert lines[-2:] == ["Message aborted MID %d Receiving aborted" % mid,
                          "ICID %d lost" % icid]
    time.sleep(0.2)
    assert moat.spool_files() == {"queue": [], "incoming": []}


# ---------------------------------------------------------------------------
# transactions and content


def test_full_transaction_smtplib(moat):
    mark = moat.log_mark()
    msg = ("From: Sender <sender@other.test>\r\n"
           "To: User <user@example.com>\r\n"
           "Subject: Integration test 1\r\n"
           "Message-ID: <t1.123@other.test>\r\n"
           "X-Moat-Test: yes\r\n"
           "\r\n"
           "Hello from the integration test.\r\n"
           "Second line.\r\n")
    with smtplib.SMTP("127.0.0.1", moat.ports["IncomingMail"],
                      local_hostname=CLIENT, timeout=10) as s:
        code, _ = s.ehlo()
        assert code == 250
        for ext in ("pipelining", "size", "8bitmime", "enhancedstatuscodes",
                    "chunking", "smtputf8"):
            assert s.has_extn(ext), ext
        assert s.esmtp_features["size"] == "10485760"
        assert s.mail("sender@other.test") == (250, b"2.1.0 Sender ok")
        assert s.rcpt("user@example.com") == (250, b"2.1.5 Recipient ok")
        code, text = s.data(msg)
        assert code == 250
        m = re.fullmatch(rb"2\.0\.0 Ok: Message (\d+) accepted", text)
        assert m, text
        mid = int(m.group(1))
        assert s.quit() == (221, b"2.0.0 Bye")
    icid = int(moat.wait_log(r"^New SMTP ICID (\d+)", since=mark).group(1))
    lines = session_log(moat, mark, icid)

    env, content = spooled(moat, mid)
    assert env["mid"] == mid and env["icid"] == icid
    assert env["listener"] == "IncomingMail"
    assert env["client_ip"] == "127.0.0.1"
    assert env["helo"] == CLIENT
    assert env["mail_from"] == "sender@other.test"
    assert env["rcpts"] == ["user@example.com"]
    assert abs(env["received"] - time.time()) < 60
    rcv, rest = split_received(content)
    assert re.fullmatch(
        (r"Received: from %s \(localhost \[127\.0\.0\.1\]\)\r\n"
         r"\tby %s with ESMTP id %d \(ICID %d\)\r\n"
         r"\tfor <user@example\.com>;\r\n"
         r"\t[A-Z][a-z]{2}, \d\d [A-Z][a-z]{2} \d{4} \d\d:\d\d:\d\d [+-]\d{4}\r\n")
        % (re.escape(CLIENT), re.escape(HOSTNAME), mid, icid),
        rcv.decode()), rcv
    assert rest == msg.encode()
    assert moat.spool_files() == {"queue": [str(mid)], "incoming": []}

    assert_lines(lines, [
        new_icid_re(icid),
        accept_re(icid),
        r"Start MID %d ICID %d" % (mid, icid),
        r"MID %d ICID %d From: <sender@other\.test>" % (mid, icid),
        r"MID %d ICID %d RID 0 To: <user@example\.com>" % (mid, icid),
        r"MID %d Message-ID '<t1\.123@other\.test>'" % mid,
        r"MID %d Subject 'Integration test 1'" % mid,
        r"MID %d ready %d bytes from <sender@other\.test>" % (mid, len(content)),
        r"MID %d queued for delivery" % mid,
        r"ICID %d close" % icid,
    ])


def test_ids_increase(moat):
    seen = []
    for _ in range(2):
        c, icid = connect(moat)
        with c:
            mids = [accepted_mid(send_message(c)) for _ in range(2)]
            c.expect("QUIT", "221 2.0.0 Bye")
        seen.append((icid, mids))
    (icid1, (m1, m2)), (icid2, (m3, m4)) = seen
    assert icid1 < icid2
    assert m1 < m2 < m3 < m4
    assert moat.spool_files()["queue"] == sorted(str(m) for m in (m1, m2, m3, m4))


def test_null_sender_and_multiple_recipients(moat):
    mark = moat.log_mark()
    c, icid = connect(moat)
    with c:
        c.expect("MAIL FROM:<>", "250 2.1.0 Sender ok")
        c.expect("RCPT TO:<a@example.com>", "250 2.1.5 Recipient ok")
        c.expect("RCPT TO:<x@other.test>", "550 5.1.0 Address rejected")
        c.expect("RCPT TO:<b@example.com>", "250 2.1.5 Recipient ok")
        c.expect("DATA", "354 Start mail input; end with <CRLF>.<CRLF>")
        c.send(b"Subject: bounce\r\n\r\nnull sender\r\n.\r\n")
        mid = accepted_mid(c.reply())
        c.expect("QUIT", "221 2.0.0 Bye")
    env, content = spooled(moat, mid)
    assert env["mail_from"] == ""
    assert env["rcpts"] == ["a@example.com", "b@example.com"]
    rcv, _ = split_received(content)
    assert b"\tfor <" not in rcv  # only named for a single recipient
    lines = session_log(moat, mark, icid)
    assert lines[2:] == [
        "Start MID %d ICID %d" % (mid, icid),
        "MID %d ICID %d From: <>" % (mid, icid),
        "MID %d ICID %d RID 0 To: <a@example.com>" % (mid, icid),
        "MID %d ICID %d To: <x@other.test> Rejected by RAT" % (mid, icid),
        "MID %d ICID %d RID 1 To: <b@example.com>" % (mid, icid),
        "MID %d Subject 'bounce'" % mid,
        "MID %d ready %d bytes from <>" % (mid, len(content)),
        "MID %d queued for delivery" % mid,
        "ICID %d close" % icid,
    ]


def test_dot_unstuffing(moat):
    body = (b"Subject: dots\r\n\r\n"
            b"..x\r\n"          # stuffed: stored as .x
            b"..\r\n"           # a line holding only '.', stuffed
            b"...\r\n"          # stored as ..
            b"a.\r\n"           # dot not at line start: unchanged
            b". leading dot and space\r\n"  # unstuffed (RFC 5321 4.5.2)
            b"end\r\n")
    c, icid = connect(moat)
    with c:
        mid = accepted_mid(send_message(c, body=body))
        # the session goes on after a message with a stuffed '.' line
        noop(c)
        c.expect("QUIT", "221 2.0.0 Bye")
    _, content = spooled(moat, mid)
    _, rest = split_received(content)
    assert rest == (b"Subject: dots\r\n\r\n.x\r\n.\r\n..\r\na.\r\n"
                    b" leading dot and space\r\nend\r\n")
    assert moat.spool_files()["queue"] == [str(mid)]


def test_empty_message_and_no_final_crlf_needed(moat):
    """DATA immediately followed by '.': an empty message is accepted."""
    c, icid = connect(moat)
    with c:
        mid = accepted_mid(send_message(c, body=b""))
        c.expect("QUIT", "221 2.0.0 Bye")
    _, content = spooled(moat, mid)
    _, rest = split_received(content)
    assert rest == b""


def test_pipelining_in_one_send(moat):
    mark = moat.log_mark()
    c, icid = connect(moat)
    with c:
        c.send(b"MAIL FROM:<p@other.test>\r\n"
               b"RCPT TO:<one@example.com>\r\n"
               b"RCPT TO:<two@example.com>\r\n"
               b"DATA\r\n")
        rs = c.replies(4)
        assert [r.line for r in rs] == [
            "250 2.1.0 Sender ok",
            "250 2.1.5 Recipient ok",
            "250 2.1.5 Recipient ok",
            "354 Start mail input; end with <CRLF>.<CRLF>",
        ]
        c.send(b"Subject: piped\r\n\r\nline 1\r\nline 2\r\n.\r\nQUIT\r\n")
        mid = accepted_mid(c.reply())
        assert c.reply().line == "221 2.0.0 Bye"
        assert c.closed()
    env, content = spooled(moat, mid)
    assert env["rcpts"] == ["one@example.com", "two@example.com"]
    assert split_received(content)[1] == b"Subject: piped\r\n\r\nline 1\r\nline 2\r\n"
    assert moat.spool_files() == {"queue": [str(mid)], "incoming": []}
    lines = session_log(moat, mark, icid)
    assert sum(ln.startswith("Start MID") for ln in lines) == 1
    assert lines[-2:] == ["MID %d queued for delivery" % mid, "ICID %d close" % icid]


def test_pipelining_whole_session_in_one_send(moat):
    """Everything, even the content and a second transaction, in one write:
    replies come back in order and each message is stored once."""
    c, icid = connect(moat, ehlo=False)
    with c:
        c.send(b"EHLO " + CLIENT.encode() + b"\r\n"
               b"MAIL FROM:<p@other.test>\r\n"
               b"RCPT TO:<nobody@other.test>\r\n"
               b"RCPT TO:<one@example.com>\r\n"
               b"DATA\r\n"
               b"Subject: first\r\n\r\nfirst\r\n.\r\n"
               b"MAIL FROM:<q@other.test>\r\n"
               b"RCPT TO:<two@example.com>\r\n"
               b"DATA\r\n"
               b"Subject: second\r\n\r\nsecond\r\n.\r\n"
               b"QUIT\r\n")
        rs = c.replies(11)
        assert rs[0].raw == EHLO_LINES
        lines = [r.line for r in rs[1:]]
        assert lines[:4] == ["250 2.1.0 Sender ok", "550 5.1.0 Address rejected",
                             "250 2.1.5 Recipient ok",
                             "354 Start mail input; end with <CRLF>.<CRLF>"]
        mid1 = accepted_mid(rs[5])
        assert lines[5:8] == ["250 2.1.0 Sender ok", "250 2.1.5 Recipient ok",
                              "354 Start mail input; end with <CRLF>.<CRLF>"]
        mid2 = accepted_mid(rs[9])
        assert rs[10].line == "221 2.0.0 Bye"
        assert c.closed()
    assert mid1 < mid2
    assert split_received(spooled(moat, mid1)[1])[1] == b"Subject: first\r\n\r\nfirst\r\n"
    assert split_received(spooled(moat, mid2)[1])[1] == b"Subject: second\r\n\r\nsecond\r\n"
    assert moat.spool_files()["queue"] == sorted([str(mid1), str(mid2)])


# ---------------------------------------------------------------------------
# recipient access (RAT) and relaying


def test_rat_rejects_foreign_domain(moat):
    mark = moat.log_mark()
    c, icid = connect(moat)
    with c:
        c.expect("MAIL FROM:<s@other.test>", "250 2.1.0 Sender ok")
        c.expect("RCPT TO:<x@other.test>", "550 5.1.0 Address rejected")
        c.expect("DATA", "503 5.5.1 Need RCPT command")
        c.expect("QUIT", "221 2.0.0 Bye")
    lines = session_log(moat, mark, icid)
    mid = int(re.fullmatch(r"Start MID (\d+) ICID \d+", lines[2]).group(1))
    assert lines[3:] == [
        "MID %d ICID %d From: <s@other.test>" % (mid, icid),
        "MID %d ICID %d To: <x@other.test> Rejected by RAT" % (mid, icid),
        "Message aborted MID %d Receiving aborted" % mid,
        "ICID %d close" % icid,
    ]


REJECTED = "550 5.1.0 Address rejected"
OK = "250 2.1.5 Recipient ok"


@pytest.mark.parametrize("rcpt, reply, logged", [
    # judged by the domain after the last '@' (example.com): fine to accept
    ("<user%other.test@example.com>", OK, "RID 0 To: <user%other.test@example.com>"),
    ("<USER@EXAMPLE.COM>", OK, "RID 0 To: <USER@EXAMPLE.COM>"),
    ("<user@Example.Com>", OK, "RID 0 To: <user@Example.Com>"),
    ("<@other.test:user@example.com>", OK, "RID 0 To: <user@example.com>"),
    # source routes: judged by the final domain
    ("<@example.com:user@other.test>", REJECTED,
     "To: <user@other.test> Rejected by RAT"),
    ("<@example.com,@mx.example.com:user@other.test>", REJECTED,
     "To: <user@other.test> Rejected by RAT"),
    # quoted local part with '@'
    ('<"user@example.com"@other.test>', REJECTED,
     'To: <"user@example.com"@other.test> Rejected by RAT'),
    # address literals match no domain row
    ("<user@[127.0.0.1]>", REJECTED, "To: <user@[127.0.0.1]> Rejected by RAT"),
    ("<user@[IPv6:::1]>", REJECTED, "To: <user@[IPv6:::1]> Rejected by RAT"),
    # look-alike domains
    ("<user@sub.example.com>", REJECTED, "To: <user@sub.example.com> Rejected by RAT"),
    ("<user@evilexample.com>", REJECTED, "To: <user@evilexample.com> Rejected by RAT"),
    ("<user@example.com.other.test>", REJECTED,
     "To: <user@example.com.other.test> Rejected by RAT"),
    # bare postmaster has no domain: no domain row matches it
    ("<postmaster>", REJECTED, "To: <postmaster> Rejected by RAT"),
])
def test_rat_relay_tricks(moat, rcpt, reply, logged):
    mark = moat.log_mark()
    c, icid = connect(moat)
    with c:
        c.expect("MAIL FROM:<s@other.test>", "250 2.1.0 Sender ok")
        c.expect("RCPT TO:" + rcpt, reply)
        c.expect("QUIT", "221 2.0.0 Bye")
    lines = session_log(moat, mark, icid)
    mid = int(re.fullmatch(r"Start MID (\d+) ICID \d+", lines[2]).group(1))
    assert lines[4] == "MID %d ICID %d %s" % (mid, icid, logged)


@pytest.mark.parametrize("rcpt, reply, why", [
    ("<user@other.test.>", "501 5.1.3 Bad recipient address syntax",
     "trailing dot in domain"),
    ("<user@example.com.>", "501 5.1.3 Bad recipient address syntax",
     "trailing dot in domain"),
    ("<user@example.com@other.test>", "501 5.1.3 Bad recipient address syntax",
     "bad character in local part"),
    ("<user@[127.0.0.1>", "501 5.1.3 Bad recipient address syntax",
     "bad address literal"),
    ("<>", "501 5.1.3 Bad recipient address syntax", "null path"),
    ("user@example.com", "501 5.1.3 Bad recipient address syntax", "missing '<'"),
    ("<user@example.com> NOTIFY=NEVER", "555 5.5.4 Unsupported MAIL/RCPT parameter",
     "rcpt parameters not supported"),
])
def test_rcpt_syntax_errors(moat, rcpt, reply, why):
    mark = moat.log_mark()
    c, icid = connect(moat)
    with c:
        c.expect("MAIL FROM:<s@other.test>", "250 2.1.0 Sender ok")
        c.expect("RCPT TO:" + rcpt, reply)
        c.expect("QUIT", "221 2.0.0 Bye")
    lines = session_log(moat, mark, icid)
    mid = int(re.fullmatch(r"Start MID (\d+) ICID \d+", lines[2]).group(1))
    assert lines[4] == "ICID %d MID %d Invalid recipient address: %s: 'TO:%s'" % (
        icid, mid, why, rcpt)


def test_private_listener_relays_for_loopback(moat):
    mark = moat.log_mark()
    c, icid = connect(moat, "OutgoingMail")
    with c:
        c.expect("MAIL FROM:<me@example.com>", "250 2.1.0 Sender ok")
        c.expect("RCPT TO:<friend@other.test>", "250 2.1.5 Recipient ok")
        c.expect("RCPT TO:<x@[192.0.2.1]>", "250 2.1.5 Recipient ok")
        c.expect("DATA", "354 Start mail input; end with <CRLF>.<CRLF>")
        c.send(b"Subject: out\r\n\r\noutbound\r\n.\r\n")
        mid = accepted_mid(c.reply())
        c.expect("QUIT", "221 2.0.0 Bye")
    env, _ = spooled(moat, mid)
    assert env["listener"] == "OutgoingMail"
    assert env["rcpts"] == ["friend@other.test", "x@[192.0.2.1]"]
    lines = session_log(moat, mark, icid)
    assert lines[:2] == [
        "New SMTP ICID %d interface OutgoingMail (127.0.0.1) address 127.0.0.1 "
        "reverse dns host localhost verified yes" % icid,
        "ICID %d RELAY SG RELAYLIST match 127.0.0.0/8 SBRS not enabled "
        "country not enabled" % icid,
    ]
    assert "MID %d ICID %d RID 0 To: <friend@other.test>" % (mid, icid) in lines


@pytest.mark.moat_conf({
    ("listener", "Private"): {"type": "private", "address": "127.0.0.1:{port}",
                              "relay_senders": ["10.9.9.9"]},
})
def test_private_listener_refuses_unlisted_client(moat):
    mark = moat.log_mark()
    with RawSMTP(moat.ports["Private"]) as c:
        r = c.reply()
        assert r.line == "554 5.7.1 %s Access denied" % HOSTNAME
        assert c.closed()
    icid = int(moat.wait_log(r"^New SMTP ICID (\d+)", since=mark).group(1))
    assert_lines(session_log(moat, mark, icid), [
        new_icid_re(icid, "Private"),
        r"ICID %d REJECT SG None match ALL SBRS not enabled country not enabled" % icid,
        r"ICID %d close" % icid,
    ])


# ---------------------------------------------------------------------------
# SMTP smuggling


SMUGGLED = (b"MAIL FROM:<admin@example.com>\r\n"
            b"RCPT TO:<victim@example.com>\r\n"
            b"DATA\r\n"
            b"Subject: smuggled\r\n\r\nsmuggled body\r\n")


@pytest.mark.parametrize("sep", [b"\n.\n", b"\r.\r", b"\n.\r\n", b"\r\n.\n",
                                 b"\r\n.\r", b"\r\n.\r\r\n"],
                         ids=["LF.LF", "CR.CR", "LF.CRLF", "CRLF.LF", "CRLF.CR",
                              "CRLF.CRCRLF"])
def test_smtp_smuggling_refused(moat, sep):
    mark = moat.log_mark()
    c, icid = connect(moat)
    with c:
        c.expect("MAIL FROM:<s@other.test>", "250 2.1.0 Sender ok")
        c.expect("RCPT TO:<user@example.com>", "250 2.1.5 Recipient ok")
        c.expect("DATA", "354 Start mail input; end with <CRLF>.<CRLF>")
        c.send(b"Subject: outer\r\n\r\nouter body" + sep + SMUGGLED + b".\r\n")
        r = c.reply()
        assert r.line == ("554 5.6.0 Message refused: bare CR or LF in message "
                          "(RFC 5321 2.3.8)")
        c.nothing_more(0.5)  # exactly one reply: nothing was smuggled
        assert moat.spool_files() == {"queue": [], "incoming": []}
        # the session is still usable
        mid = accepted_mid(send_message(c))
        c.expect("QUIT", "221 2.0.0 Bye")
    lines = session_log(moat, mark, icid)
    assert moat.spool_files() == {"queue": [str(mid)], "incoming": []}
    mids = [int(m.group(1)) for m in
            (re.fullmatch(r"Start MID (\d+) ICID \d+", ln) for ln in lines) if m]
    assert len(mids) == 2 and mids[1] == mid
    bad = mids[0]
    assert lines[2:7] == [
        "Start MID %d ICID %d" % (bad, icid),
        "MID %d ICID %d From: <s@other.test>" % (bad, icid),
        "MID %d ICID %d RID 0 To: <user@example.com>" % (bad, icid),
        "ICID %d Receiving Failed: Protocol error (bare CR or LF in message)" % icid,
        "Message aborted MID %d Receiving aborted" % bad,
    ]
    assert not any("admin@example.com" in ln or "victim" in ln for ln in lines)


@pytest.mark.parametrize("payload", [
    b"Subject: x\r\n\r\nbare LF\nhere\r\n",
    b"Subject: x\r\n\r\nbare CR\rhere\r\n",
    b"Subject: x\r\n\r\nends with bare CR\r",
], ids=["LF", "CR", "trailing-CR"])
def test_bdat_bare_cr_lf_refused(moat, payload):
    mark = moat.log_mark()
    c, icid = connect(moat)
    with c:
        c.expect("MAIL FROM:<s@other.test>", "250 2.1.0 Sender ok")
        c.expect("RCPT TO:<user@example.com>", "250 2.1.5 Recipient ok")
        c.send(b"BDAT %d LAST\r\n" % len(payload) + payload)
        assert c.reply().line == ("554 5.6.0 Message refused: bare CR or LF in "
                                  "message (RFC 5321 2.3.8)")
        noop(c)
        c.expect("QUIT", "221 2.0.0 Bye")
    lines = session_log(moat, mark, icid)
    assert ("ICID %d Receiving Failed: Protocol error (bare CR or LF in message)"
            % icid) in lines
    assert moat.spool_files() == {"queue": [], "incoming": []}


# ---------------------------------------------------------------------------
# BDAT (CHUNKING)


def test_bdat_stores_exact_bytes(moat):
    chunk1 = b"Subject: chunked\r\nMessage-ID: <bdat@x>\r\n\r\n..not unstuffed\r\n"
    chunk2 = b".\r\nQUIT\r\nMAIL FROM:<x@y>\r\nlast line\r\n"
    mark = moat.log_mark()
    c, icid = connect(moat)
    with c:
        c.expect("MAIL FROM:<s@other.test> BODY=8BITMIME", "250 2.1.0 Sender ok")
        c.expect("RCPT TO:<user@example.com>", "250 2.1.5 Recipient ok")
        c.send(b"BDAT %d\r\n" % len(chunk1) + chunk1)
        assert c.reply().line == "250 2.0.0 Ok: %d octets received" % len(chunk1)
        c.send(b"BDAT %d LAST\r\n" % len(chunk2) + chunk2)
        mid = accepted_mid(c.reply())
        c.nothing_more(0.3)
        c.expect("QUIT", "221 2.0.0 Bye")
    env, content = spooled(moat, mid)
    assert env["flags"] == 0x1  # 8BITMIME
    assert split_received(content)[1] == chunk1 + chunk2
    lines = session_log(moat, mark, icid)
    assert lines[5:9] == [
        "MID %d Message-ID '<bdat@x>'" % mid,
        "MID %d Subject 'chunked'" % mid,
        "MID %d ready %d bytes from <s@other.test>" % (mid, len(content)),
        "MID %d queued for delivery" % mid,
    ]


def test_bdat_zero_length_last_and_pipelined(moat):
    chunk = b"Subject: z\r\n\r\nzero\r\n"
    c, icid = connect(moat)
    with c:
        c.send(b"MAIL FROM:<s@other.test>\r\nRCPT TO:<user@example.com>\r\n"
               b"BDAT %d\r\n" % len(chunk) + chunk + b"BDAT 0 LAST\r\nNOOP\r\n")
        rs = c.replies(5)
        assert [r.line for r in rs[:3]] == [
            "250 2.1.0 Sender ok", "250 2.1.5 Recipient ok",
            "250 2.0.0 Ok: %d octets received" % len(chunk)]
        mid = accepted_mid(rs[3])
        assert rs[4].line.startswith("250 2.0.0 ")  # NOOP
        c.expect("QUIT", "221 2.0.0 Bye")
    assert split_received(spooled(moat, mid)[1])[1] == chunk


def test_bdat_without_mail_consumes_chunk(moat):
    chunk = (b"MAIL FROM:<evil@other.test>\r\nRCPT TO:<user@example.com>\r\n"
             b"DATA\r\nQUIT\r\n")
    mark = moat.log_mark()
    c, icid = connect(moat)
    with c:
        c.send(b"BDAT %d\r\n" % len(chunk) + chunk)
        assert c.reply().line == "503 5.5.1 Need MAIL command"
        c.nothing_more(0.5)  # the chunk's lines were not run as commands
        c.expect("MAIL FROM:<s@other.test>", "250 2.1.0 Sender ok")
        # BDAT without a recipient: also consumed, then refused
        c.send(b"BDAT %d LAST\r\n" % len(chunk) + chunk)
        assert c.reply().line == "503 5.5.1 Need RCPT command"
        c.nothing_more(0.5)
        c.expect("RCPT TO:<user@example.com>", "250 2.1.5 Recipient ok")
        c.send(b"BDAT 6 LAST\r\nok\r\n\r\n")
        mid = accepted_mid(c.reply())
        c.expect("QUIT", "221 2.0.0 Bye")
    assert split_received(spooled(moat, mid)[1])[1] == b"ok\r\n\r\n"
    lines = session_log(moat, mark, icid)
    assert not any("evil@" in ln for ln in lines)
    assert moat.spool_files()["queue"] == [str(mid)]


def test_data_after_bdat_refused(moat):
    c, icid = connect(moat)
    with c:
        c.expect("MAIL FROM:<s@other.test>", "250 2.1.0 Sender ok")
        c.expect("RCPT TO:<user@example.com>", "250 2.1.5 Recipient ok")
        c.send(b"BDAT 5\r\nab\r\nc")
        assert c.reply().line == "250 2.0.0 Ok: 5 octets received"
        c.expect("DATA", "503 5.5.1 DATA not allowed in a BDAT transaction")
        c.expect("RCPT TO:<more@example.com>", "503 5.5.1 Bad sequence of commands")
        c.send(b"BDAT 3 LAST\r\nd\r\n")
        mid = accepted_mid(c.reply())
        c.expect("QUIT", "221 2.0.0 Bye")
    env, content = spooled(moat, mid)
    assert env["rcpts"] == ["user@example.com"]
    assert split_received(content)[1] == b"ab\r\ncd\r\n"


def test_bdat_malformed_size_ends_session(moat):
    mark = moat.log_mark()
    c, icid = connect(moat)
    with c:
        c.expect("MAIL FROM:<s@other.test>", "250 2.1.0 Sender ok")
        c.expect("RCPT TO:<user@example.com>", "250 2.1.5 Recipient ok")
        c.send(b"BDAT 1x LAST\r\nMAIL FROM:<a@b.c>\r\n")
        assert c.reply().line == "501 5.5.4 Syntax error in parameters or arguments"
        assert c.closed()
    lines = session_log(moat, mark, icid)
    assert "ICID %d Bad syntax for command: BDAT" % icid in lines
    assert lines[-1] == "ICID %d close" % icid
    assert not any("a@b.c" in ln for ln in lines)
    assert moat.spool_files() == {"queue": [], "incoming": []}


def test_bdat_malformed_size_logs_abort(moat):
    mark = moat.log_mark()
    c, icid = connect(moat)
    with c:
        c.expect("MAIL FROM:<s@other.test>", "250 2.1.0 Sender ok")
        c.expect("RCPT TO:<user@example.com>", "250 2.1.5 Recipient ok")
        c.send(b"BDAT 1x LAST\r\n")
        assert c.reply().line == "501 5.5.4 Syntax error in parameters or arguments"
        assert c.closed()
    lines = session_log(moat, mark, icid)
    mid = int(re.fullmatch(r"Start MID (\d+) ICID \d+", lines[2]).group(1))
    assert lines[-3:] == [
        "ICID %d Bad syntax for command: BDAT" % icid,
        "Message aborted MID %d Receiving aborted" % mid,
        "ICID %d close" % icid]


@pytest.mark.moat_conf({
    ("listener", "IncomingMail"): {"type": "public", "address": "127.0.0.1:{port}",
                                   "chunking": False},
    ("rat", "IncomingMail"): {"example.com": "accept"},
})
def test_chunking_disabled(moat):
    c, icid = connect(moat, ehlo=False)
    with c:
        r = c.cmd("EHLO " + CLIENT)
        assert r.raw == [ln for ln in EHLO_LINES if "CHUNKING" not in ln]
        c.expect("MAIL FROM:<s@other.test>", "250 2.1.0 Sender ok")
        c.expect("RCPT TO:<user@example.com>", "250 2.1.5 Recipient ok")
        c.expect("BDAT 0 LAST", "500 5.5.1 Command unrecognized")
        c.expect("MAIL FROM:<s@other.test> BODY=BINARYMIME",
                 "503 5.5.1 Sender already specified")
        c.expect("RSET", "250 2.0.0 Reset state")
        c.expect("MAIL FROM:<s@other.test> BODY=BINARYMIME",
                 "555 5.5.4 Unsupported MAIL/RCPT parameter")
        c.expect("QUIT", "221 2.0.0 Bye")


# ---------------------------------------------------------------------------
# SMTPUTF8


def test_smtputf8_addresses(moat):
    mark = moat.log_mark()
    c, icid = connect(moat)
    with c:
        # without SMTPUTF8, non-ASCII addresses are refused
        c.expect("MAIL FROM:<s\u00e9nder@other.test>",
                 "553 5.6.7 Non-ASCII address requires SMTPUTF8")
        c.expect("MAIL FROM:<s@other.test>", "250 2.1.0 Sender ok")
        c.expect("RCPT TO:<j\u00f6rg@example.com>",
                 "553 5.6.7 Non-ASCII address requires SMTPUTF8")
        c.expect("RSET", "250 2.0.0 Reset state")
        # malformed UTF-8 is a syntax error even with SMTPUTF8
        c.expect(b"MAIL FROM:<s\xc3@other.test> SMTPUTF8",
                 "501 5.1.7 Bad sender address syntax")
        c.expect("MAIL FROM:<s\u00e9nder@other.test> SMTPUTF8",
                 "250 2.1.0 Sender ok")
        c.expect("RCPT TO:<j\u00f6rg@example.com>", "250 2.1.5 Recipient ok")
        c.expect("RCPT TO:<\u7528\u6237@example.com>", "250 2.1.5 Recipient ok")
        c.expect("DATA", "354 Start mail input; end with <CRLF>.<CRLF>")
        c.send("Subject: gr\u00fc\u00dfe\r\n\r\nUTF-8 body \u00e4\r\n.\r\n"
               .encode("utf-8"))
        mid = accepted_mid(c.reply())
        c.expect("QUIT", "221 2.0.0 Bye")
    env, content = spooled(moat, mid)
    assert env["flags"] & 0x2  # SMTPUTF8
    assert env["mail_from"] == "s\u00e9nder@other.test"
    assert env["rcpts"] == ["j\u00f6rg@example.com", "\u7528\u6237@example.com"]
    rcv, rest = split_received(content)
    assert b" with UTF8SMTP id %d " % mid in rcv
    assert rest == "Subject: gr\u00fc\u00dfe\r\n\r\nUTF-8 body \u00e4\r\n".encode()
    lines = session_log(moat, mark, icid)
    assert "MID %d ICID %d RID 0 To: <j\u00f6rg@example.com>" % (mid, icid) in lines


# ---------------------------------------------------------------------------
# swaks, an independent client


def test_swaks_plain_message(moat, swaks):
    r = swaks(moat.ports["IncomingMail"], "--to", "user@example.com",
              "--from", "sender@other.test", "--header", "Subject: via swaks",
              "--body", "swaks body line")
    assert r.returncode == 0, r.stdout + r.stderr
    m = re.search(r"<-  250 2\.0\.0 Ok: Message (\d+) accepted", r.stdout)
    assert m, r.stdout
    mid = int(m.group(1))
    assert "<-  220 %s ESMTP" % HOSTNAME in r.stdout
    assert "<-  221 2.0.0 Bye" in r.stdout
    _, content = spooled(moat, mid)
    rest = split_received(content)[1]
    assert b"Subject: via swaks\r\n" in rest
    assert b"\r\n\r\nswaks body line" in rest
    moat.wait_log(r"^MID %d Subject 'via swaks'$" % mid)


def test_swaks_pipeline(moat, swaks):
    r = swaks(moat.ports["IncomingMail"], "--pipeline",
              "--to", "a@example.com,b@example.com,c@other.test",
              "--from", "sender@other.test", "--header", "Subject: piped swaks")
    # one recipient is refused; swaks still sends the message to the others
    out = r.stdout
    # swaks really pipelined: DATA went out before the first reply came in
    assert out.index(" -> DATA") < out.index("<-  250 2.1.0 Sender ok"), out
    assert "<** 550 5.1.0 Address rejected" in out, out
    m = re.search(r"<-  250 2\.0\.0 Ok: Message (\d+) accepted", out)
    assert m, out + r.stderr
    env, _ = spooled(moat, int(m.group(1)))
    assert env["rcpts"] == ["a@example.com", "b@example.com"]
    assert moat.spool_files()["queue"] == [m.group(1)]


def test_swaks_private_listener(moat, swaks):
    mark = moat.log_mark()
    r = swaks(moat.ports["OutgoingMail"], "--to", "someone@far.away.test",
              "--from", "me@example.com", "--header", "Subject: outbound swaks")
    assert r.returncode == 0, r.stdout + r.stderr
    m = re.search(r"<-  250 2\.0\.0 Ok: Message (\d+) accepted", r.stdout)
    assert m, r.stdout
    mid = int(m.group(1))
    env, _ = spooled(moat, mid)
    assert env["listener"] == "OutgoingMail"
    assert env["rcpts"] == ["someone@far.away.test"]
    moat.wait_log(r"^ICID \d+ RELAY SG RELAYLIST match 127\.0\.0\.0/8 SBRS not "
                  r"enabled country not enabled$", since=mark)
    moat.wait_log(r"^MID %d ICID \d+ RID 0 To: <someone@far\.away\.test>$" % mid,
                  since=mark)


def test_smuggling_dot_lf_at_start_of_data(moat):
    """'.<LF>' as the very first bytes after 354 is not the end either."""
    c, icid = connect(moat)
    with c:
        c.expect("MAIL FROM:<s@other.test>", "250 2.1.0 Sender ok")
        c.expect("RCPT TO:<user@example.com>", "250 2.1.5 Recipient ok")
        c.expect("DATA", "354 Start mail input; end with <CRLF>.<CRLF>")
        c.send(b".\n" + SMUGGLED + b".\r\n")
        assert c.reply().line.startswith("554 5.6.0 ")
        c.nothing_more(0.5)
        c.expect("QUIT", "221 2.0.0 Bye")
    assert moat.spool_files() == {"queue": [], "incoming": []}


# ---------------------------------------------------------------------------
# robustness of the reader


def test_byte_by_byte_session(moat):
    """A whole session written one byte per segment: the line reader and the
    DATA scanner keep their state across reads."""
    mark = moat.log_mark()
    c, icid = connect(moat, ehlo=False)
    c.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    body = b"Subject: slow\r\n\r\n..stuffed\r\nx\r\n..\r\n"
    script = (b"EHLO " + CLIENT.encode() + b"\r\n"
              b"MAIL FROM:<s@other.test>\r\n"
              b"RCPT TO:<user@example.com>\r\n"
              b"DATA\r\n" + body + b".\r\nQUIT\r\n")
    with c:
        for i in range(len(script)):
            c.send(script[i:i + 1])
            time.sleep(0.002)
        rs = c.replies(6)
        assert rs[0].raw == EHLO_LINES
        assert [r.line for r in rs[1:4]] == [
            "250 2.1.0 Sender ok", "250 2.1.5 Recipient ok",
            "354 Start mail input; end with <CRLF>.<CRLF>"]
        mid = accepted_mid(rs[4])
        assert rs[5].line == "221 2.0.0 Bye"
        assert c.closed()
    assert split_received(spooled(moat, mid)[1])[1] == (
        b"Subject: slow\r\n\r\n.stuffed\r\nx\r\n.\r\n")
    assert "MID %d Subject 'slow'" % mid in session_log(moat, mark, icid)


def test_control_characters_in_commands(moat):
    mark = moat.log_mark()
    c, icid = connect(moat)
    with c:
        c.expect(b"XX\x01YY", "501 5.5.4 Syntax error in parameters or arguments")
        c.expect(b"NOOP\x00", "501 5.5.4 Syntax error in parameters or arguments")
        c.expect(b"MAIL FROM:<a\x7f@other.test>",
                 "501 5.5.4 Syntax error in parameters or arguments")
        # a bare LF does not end a command line: one line, one reply
        c.send(b"NOOP\nQUIT\r\n")
        assert c.reply().line == "501 5.5.4 Syntax error in parameters or arguments"
        c.nothing_more(0.3)
        c.expect("QUIT", "221 2.0.0 Bye")
    lines = session_log(moat, mark, icid)
    assert lines[2:] == [
        "ICID %d Bad syntax for command: XX\\x01YY" % icid,
        "ICID %d Bad syntax for command: NOOP\\x00" % icid,
        "ICID %d Bad syntax for command: MAIL FROM:<a\\x7f@other.test>" % icid,
        "ICID %d Bad syntax for command: NOOP\\nQUIT" % icid,
        "ICID %d close" % icid,
    ]


def test_log_escapes_untrusted_header_values(moat):
    mark = moat.log_mark()
    c, icid = connect(moat)
    with c:
        mid = accepted_mid(send_message(c, body=(
            b"Message-ID: <it's@x>\r\n"
            b"Subject: It's \"q\"\t\x01 \\ end\r\n  folded\r\n"
            b"Subject: second subject is ignored\r\n"
            b"\r\n"
            b"Subject: a body line is not a header\r\n")))
        c.expect("QUIT", "221 2.0.0 Bye")
    lines = session_log(moat, mark, icid)
    assert lines[5:7] == [
        "MID %d Message-ID '<it\\'s@x>'" % mid,
        "MID %d Subject 'It\\'s \"q\"\\t\\x01 \\\\ end  folded'" % mid,
    ]


def test_no_subject_logged_from_body(moat):
    mark = moat.log_mark()
    c, icid = connect(moat)
    with c:
        mid = accepted_mid(send_message(
            c, body=b"From: a@other.test\r\n\r\nSubject: in the body\r\n"
                    b"Message-ID: <body@x>\r\n"))
        c.expect("QUIT", "221 2.0.0 Bye")
    lines = session_log(moat, mark, icid)
    assert not any(("MID %d Subject" % mid) in ln or ("MID %d Message-ID" % mid) in ln
                   for ln in lines), lines


def test_received_header_names_recipient_verbatim(moat):
    rcpt = '"a\\"b"@example.com'  # the quoted-string "a\"b"
    c, icid = connect(moat)
    with c:
        c.expect("MAIL FROM:<s@other.test>", "250 2.1.0 Sender ok")
        c.expect("RCPT TO:<%s>" % rcpt, "250 2.1.5 Recipient ok")
        c.expect("DATA", "354 Start mail input; end with <CRLF>.<CRLF>")
        c.send(b"Subject: q\r\n\r\nq\r\n.\r\n")
        mid = accepted_mid(c.reply())
        c.expect("QUIT", "221 2.0.0 Bye")
    env, content = spooled(moat, mid)
    assert env["rcpts"] == [rcpt]
    rcv, _ = split_received(content)
    assert ("\tfor <%s>;\r\n" % rcpt).encode() in rcv, rcv


def test_message_kept_when_client_leaves_after_final_dot(moat):
    """Once the final '.' is read the message is committed, answer or not."""
    mark = moat.log_mark()
    c, icid = connect(moat)
    c.expect("MAIL FROM:<s@other.test>", "250 2.1.0 Sender ok")
    c.expect("RCPT TO:<user@example.com>", "250 2.1.5 Recipient ok")
    c.expect("DATA", "354 Start mail input; end with <CRLF>.<CRLF>")
    c.send(b"Subject: gone\r\n\r\nbye\r\n.\r\n")
    c.sock.shutdown(socket.SHUT_WR)
    c.close()
    m = moat.wait_log(r"^MID (\d+) queued for delivery$", since=mark)
    mid = int(m.group(1))
    lines = session_log(moat, mark, icid)
    assert "ICID %d lost" % icid in lines or "ICID %d close" % icid in lines
    assert not any(ln.startswith("Message aborted") for ln in lines), lines
    assert moat.spool_files() == {"queue": [str(mid)], "incoming": []}
    assert split_received(spooled(moat, mid)[1])[1] == b"Subject: gone\r\n\r\nbye\r\n"


def test_bdat_then_rset_discards_chunks(moat):
    mark = moat.log_mark()
    c, icid = connect(moat)
    with c:
        c.expect("MAIL FROM:<s@other.test>", "250 2.1.0 Sender ok")
        c.expect("RCPT TO:<user@example.com>", "250 2.1.5 Recipient ok")
        c.send(b"BDAT 9\r\nfirst\r\n\r\n")
        assert c.reply().line == "250 2.0.0 Ok: 9 octets received"
        c.expect("RSET", "250 2.0.0 Reset state")
        mid = accepted_mid(send_message(c, body=b"Subject: after\r\n\r\nafter\r\n"))
        c.expect("QUIT", "221 2.0.0 Bye")
    assert split_received(spooled(moat, mid)[1])[1] == b"Subject: after\r\n\r\nafter\r\n"
    assert moat.spool_files() == {"queue": [str(mid)], "incoming": []}
    lines = session_log(moat, mark, icid)
    first = int(re.fullmatch(r"Start MID (\d+) ICID \d+", lines[2]).group(1))
    assert "Message aborted MID %d Receiving aborted" % first in lines
    assert first < mid


def test_binarymime_needs_bdat(moat):
    c, icid = connect(moat)
    with c:
        c.expect("MAIL FROM:<s@other.test> BODY=BINARYMIME", "250 2.1.0 Sender ok")
        c.expect("RCPT TO:<user@example.com>", "250 2.1.5 Recipient ok")
        c.expect("DATA", "503 5.5.1 DATA not allowed in a BDAT transaction")
        c.send(b"BDAT 12 LAST\r\nSubject: b\r\n")
        mid = accepted_mid(c.reply())
        c.expect("QUIT", "221 2.0.0 Bye")
    env, content = spooled(moat, mid)
    assert env["flags"] == 0x4
    assert split_received(content)[1] == b"Subject: b\r\n"


@pytest.mark.moat_conf({
    ("listener", "IncomingMail"): {"type": "public", "address": "127.0.0.1:{port}"},
    ("rat", "IncomingMail"): {
        "gone@example.com": {"action": "reject", "code": 550, "text": "Gone away"},
        "temp.example.com": {"action": "reject", "code": 451, "text": "Try later"},
        "abuse@": "accept",
        ".example.com": "accept",
        "example.com": {"action": "accept", "code": 251},
        "ALL": {"action": "reject", "code": 554},
    },
})
def test_rat_rows_and_custom_replies(moat):
    mark = moat.log_mark()
    c, icid = connect(moat)
    with c:
        c.expect("MAIL FROM:<s@other.test>", "250 2.1.0 Sender ok")
        c.expect("RCPT TO:<gone@example.com>", "550 5.0.0 Gone away")
        c.expect("RCPT TO:<GONE@Example.COM>", "550 5.0.0 Gone away")
        c.expect("RCPT TO:<x@temp.example.com>", "451 4.0.0 Try later")
        c.expect("RCPT TO:<abuse@anywhere.test>", "250 2.1.5 Recipient ok")
        c.expect("RCPT TO:<x@deep.sub.example.com>", "250 2.1.5 Recipient ok")
        c.expect("RCPT TO:<x@example.com>", "251 2.0.0 Recipient ok")
        c.expect("RCPT TO:<x@other.test>", "554 5.0.0 Address rejected")
        c.expect("RCPT TO:<x@notexample.com>", "554 5.0.0 Address rejected")
        c.expect("QUIT", "221 2.0.0 Bye")
    lines = session_log(moat, mark, icid)
    mid = int(re.fullmatch(r"Start MID (\d+) ICID \d+", lines[2]).group(1))
    p = "MID %d ICID %d " % (mid, icid)
    assert lines[4:12] == [
        p + "To: <gone@example.com> Rejected by RAT",
        p + "To: <GONE@Example.COM> Rejected by RAT",
        p + "To: <x@temp.example.com> Rejected by RAT",
        p + "RID 0 To: <abuse@anywhere.test>",
        p + "RID 1 To: <x@deep.sub.example.com>",
        p + "RID 2 To: <x@example.com>",
        p + "To: <x@other.test> Rejected by RAT",
        p + "To: <x@notexample.com> Rejected by RAT",
    ]


@pytest.mark.moat_conf({
    ("listener", "IncomingMail"): {"type": "public", "address": "127.0.0.1:{port}",
                                   "max_message_size": 2000},
    ("rat", "IncomingMail"): {"example.com": "accept"},
})
def test_rcpt_after_oversized_bdat_chunk_is_bad_sequence(moat):
    c, icid = connect(moat)
    with c:
        c.expect("MAIL FROM:<s@other.test>", "250 2.1.0 Sender ok")
        c.expect("RCPT TO:<user@example.com>", "250 2.1.5 Recipient ok")
        c.send(b"BDAT 3000\r\n" + b"x" * 3000)
        assert c.reply().line == "250 2.0.0 Ok: 3000 octets received"
        c.expect("RCPT TO:<more@example.com>", "503 5.5.1 Bad sequence of commands")


def test_long_subject_is_logged_cut_with_ellipsis(moat):
    subject = "A" * 900 + " " + "B" * 900
    mark = moat.log_mark()
    c, icid = connect(moat)
    with c:
        mid = accepted_mid(send_message(c, body=(
            b"Subject: " + b"A" * 900 + b"\r\n " + b"B" * 900 + b"\r\n\r\nx\r\n")))
        c.expect("QUIT", "221 2.0.0 Bye")
    lines = session_log(moat, mark, icid)
    logged = [ln for ln in lines if ln.startswith("MID %d Subject '" % mid)]
    assert len(logged) == 1
    value = logged[0][len("MID %d Subject '" % mid):-1]
    assert value == subject or (value.endswith("...") and
                                subject.startswith(value[:-3])), value
