"""Self-test of the next-hop SMTP servers in smtpsink.py (FaultSink and
PostfixSink): the delivery engine's tests rely on them, so every fault they
script is proven here with independent clients (smtplib, a raw socket,
swaks, smtp-source) before any moat code is involved."""

import os
import smtplib
import socket
import subprocess
import threading
import time

import pytest

from smtpsink import (DEFAULT_CAPABILITIES, FaultSink, PostfixSink,
                      format_reply, masked_greeting, reply_code,
                      smtp_sink_available)

SWAKS = "/usr/bin/swaks"
SMTP_SOURCE = "/usr/sbin/smtp-source"
T = 5.0  # client timeout: generous, but nothing here should need it

MSG = (b"From: sender@test.example\r\nTo: rcpt@test.example\r\n"
       b"Subject: harness\r\n\r\nbody line\r\n")


@pytest.fixture
def sink():
    s = FaultSink()
    yield s
    s.stop()
    assert s.internal_errors == []


@pytest.fixture
def make_sink():
    made = []

    def make(**kw):
        s = FaultSink(**kw)
        made.append(s)
        return s

    yield make
    for s in made:
        s.stop()
        assert s.internal_errors == []


class Raw:
    """A byte-level SMTP client: sends exactly what it is told."""

    def __init__(self, address, timeout=T):
        self.sock = socket.create_connection(address, timeout=timeout)
        self.file = self.sock.makefile("rb")

    def send(self, data):
        self.sock.sendall(data)

    def reply(self):
        """(code, [lines]) of one reply, or (None, []) at EOF."""
        lines = []
        while True:
            line = self.file.readline(4096)
            if not line:
                return None, lines
            lines.append(line.decode("utf-8", "replace").rstrip("\r\n"))
            if len(line) < 4 or line[3:4] != b"-":
                return int(line[:3]), lines

    def cmd(self, line):
        self.send(line.encode() + b"\r\n")
        return self.reply()

    def at_eof(self):
        try:
            return self.file.read(1) == b""
        except ConnectionResetError:
            return True

    def close(self):
        self.file.close()
        self.sock.close()


def raw(sink, ehlo=True):
    c = Raw(sink.address)
    assert c.reply()[0] == 220
    if ehlo:
        assert c.cmd("EHLO client.test")[0] == 250
    return c


def smtp(sink, timeout=T):
    return smtplib.SMTP(sink.host, sink.port, local_hostname="client.test",
                        timeout=timeout)


# --------------------------------------------------------------------------
# helpers

def test_format_reply_and_code():
    assert format_reply("250 ok") == b"250 ok\r\n"
    assert format_reply("250 a\n250 b\n250 c") == b"250-a\r\n250-b\r\n250 c\r\n"
    assert format_reply(["250-x", "250-y"]) == b"250-x\r\n250 y\r\n"
    assert format_reply("250") == b"250\r\n"
    assert format_reply(b"25O broken\n") == b"25O broken\n"
    assert reply_code("250-a\n452 b") == 452
    assert reply_code(None) == 0


def test_masked_greeting_keeps_length():
    g = "220 mx2.example.com ESMTP Postfix 2.10"
    m = masked_greeting(g)
    assert len(m) == len(g) and m.startswith("220 ")
    assert set(m[4:]) <= set("*20") and "2" in m[4:] and "0" in m[4:]


# --------------------------------------------------------------------------
# FaultSink: normal delivery

def test_delivery_recorded_byte_exact(sink):
    body = (b"Subject: exact\r\n\r\n"
            b".leading dot\r\n"          # stuffed by the client as ..leading
            b"..two dots\r\n"
            b".\r\n"                     # a lone dot line inside the message
            b"8bit \xc3\xa9\xff\r\n"
            b"\r\n\r\n")                 # trailing empty lines are content
    stuffed = b"".join(b"." + l if l.startswith(b".") else l
                       for l in body.splitlines(keepends=True))
    c = raw(sink)
    assert c.cmd("MAIL FROM:<a@test.example> BODY=8BITMIME SIZE=%d" % len(body))[0] == 250
    assert c.cmd("RCPT TO:<x@test.example>")[0] == 250
    assert c.cmd("RCPT TO:<y@test.example>")[0] == 250
    assert c.cmd("DATA")[0] == 354
    c.send(stuffed + b".\r\n")
    code, lines = c.reply()
    assert code == 250 and "queued as" in lines[0]
    assert c.cmd("QUIT")[0] == 221
    assert c.at_eof()
    c.close()

    assert sink.wait_for(1, timeout=T)
    t = sink.messages[0]
    assert t.data == body
    assert t.mail_from == "a@test.example"
    assert t.mail_params == {"BODY": "8BITMIME", "SIZE": str(len(body))}
    assert t.rcpts == ["x@test.example", "y@test.example"]
    assert t.helo == "client.test" and t.esmtp
    assert t.peer[0] == "127.0.0.1" and t.conn_id == 1
    assert t.eight_bit and not (t.bare_lf or t.bare_cr or t.long_line)
    assert t.queue_id in lines[0]
    assert sink.rcpts == ["x@test.example", "y@test.example"]
    assert sink.wait_for(1, timeout=T, what="closed")
    conn = sink.connection()
    assert conn.verbs == ["EHLO", "MAIL", "RCPT", "RCPT", "DATA", ".", "QUIT"]
    assert conn.quit and conn.closed_by == "client" and conn.violations == []


def test_smtplib_delivery_and_empty_sender(sink):
    with smtp(sink) as s:
        assert s.sendmail("", ["x@test.example"], MSG) == {}
        assert s.sendmail("b@test.example", ["y@test.example"], MSG + b"second\r\n") == {}
    assert sink.wait_for(2, timeout=T)
    first, second = sink.messages
    assert first.mail_from == "" and first.data == MSG
    assert second.data == MSG + b"second\r\n" and second.conn_id == first.conn_id
    assert first.message["Subject"] == "harness"


def test_data_end_needs_crlf_dot_crlf_and_flags_line_rules(sink):
    c = raw(sink)
    c.cmd("MAIL FROM:<a@test.example>")
    c.cmd("RCPT TO:<x@test.example>")
    assert c.cmd("DATA")[0] == 354
    content = (b"Subject: rules\r\n\r\n"
               + b"x" * 1200 + b"\r\n"          # over 1000 octets
               + b"bare\nlf\n.\nnot the end\r\n"  # LF.LF must not end DATA
               + b"cr\r\r\n"                     # a bare CR
               + b"last\r\n")
    c.send(content)
    c.send(b".\r\n")
    assert c.reply()[0] == 250
    c.close()
    assert sink.wait_for(1, timeout=T)
    t = sink.messages[0]
    assert t.data == content
    assert t.long_line and t.max_line_length == 1202
    assert t.bare_lf and t.bare_cr


def test_empty_message_and_dot_only_at_line_start(sink):
    c = raw(sink)
    c.cmd("MAIL FROM:<a@test.example>")
    c.cmd("RCPT TO:<x@test.example>")
    assert c.cmd("DATA")[0] == 354
    c.send(b".\r\n")
    assert c.reply()[0] == 250
    c.cmd("MAIL FROM:<a@test.example>")
    c.cmd("RCPT TO:<x@test.example>")
    assert c.cmd("DATA")[0] == 354
    c.send(b"a.\r\n. \r\n")                # neither line ends the data
    c.send(b".\r\n")
    assert c.reply()[0] == 250
    c.close()
    assert sink.wait_for(2, timeout=T)
    assert [t.data for t in sink.messages] == [b"", b"a.\r\n \r\n"]


def test_sequence_and_syntax_errors(make_sink):
    sink = make_sink(max_errors=6)
    c = Raw(sink.address)
    c.reply()
    assert c.cmd("MAIL FROM:<a@test.example>")[0] == 503     # no HELO yet
    assert c.cmd("EHLO client.test")[0] == 250
    assert c.cmd("RCPT TO:<x@test.example>")[0] == 503       # no MAIL
    assert c.cmd("MAIL FROM:a@test.example")[0] == 501       # no <>
    assert c.cmd("MAIL FROM:<a@test.example> FOO=1")[0] == 555
    assert c.cmd("MAIL FROM:<a@test.example>")[0] == 250
    assert c.cmd("DATA")[0] == 554                            # no recipient
    assert c.cmd("XYZZY")[0] == 500
    code, lines = c.reply()                                   # 6th error: 421
    assert code == 421 and "too many errors" in lines[0]
    assert c.at_eof()
    c.close()


def test_size_limit(make_sink):
    sink = make_sink(capabilities=("PIPELINING", "SIZE 100"))
    c = raw(sink)
    assert c.cmd("MAIL FROM:<a@test.example> SIZE=101")[0] == 552
    assert c.cmd("MAIL FROM:<a@test.example> SIZE=100")[0] == 250
    c.cmd("RCPT TO:<x@test.example>")
    assert c.cmd("DATA")[0] == 354
    c.send(b"y" * 200 + b"\r\n.\r\n")
    assert c.reply()[0] == 552
    c.close()
    assert sink.wait_for(1, timeout=T, what="transactions")
    t = sink.transactions[0]
    assert t.oversize and not t.accepted and t.size == 202 and len(t.data) == 100
    assert sink.messages == []


# --------------------------------------------------------------------------
# pipelining

def test_pipelined_group_answered_in_order(sink):
    sink.on("RCPT", "452 4.2.1 Mailbox busy", match="busy@")
    sink.on("MAIL", delay=0.2)          # a slow first reply must not be overtaken
    c = raw(sink)
    c.send(b"MAIL FROM:<a@test.example>\r\n"
           b"RCPT TO:<x@test.example>\r\n"
           b"RCPT TO:<busy@test.example>\r\n"
           b"RCPT TO:<y@test.example>\r\n"
           b"DATA\r\n")
    codes = [c.reply()[0] for _ in range(5)]
    assert codes == [250, 250, 452, 250, 354]
    c.send(MSG + b".\r\nQUIT\r\n")      # QUIT pipelined after the dot
    assert c.reply()[0] == 250
    assert c.reply()[0] == 221
    c.close()
    assert sink.wait_for(1, timeout=T, what="closed")
    conn = sink.connection()
    assert conn.pipelined and conn.violations == []
    t = sink.messages[0]
    assert t.rcpts == ["x@test.example", "y@test.example"]
    assert t.rejected_rcpts == [("busy@test.example", "452 4.2.1 Mailbox busy")]
    # replies went out in command order
    server = [x for d, x in conn.transcript if d == "S"]
    assert [s[:3] for s in server[-7:]] == ["250", "250", "452", "250", "354", "250", "221"]


def test_all_rcpts_rejected_pipelined_data_gets_554(sink):
    sink.on("RCPT", "550 5.1.1 No such user")
    c = raw(sink)
    c.send(b"MAIL FROM:<a@test.example>\r\nRCPT TO:<x@test.example>\r\nDATA\r\n")
    assert [c.reply()[0] for _ in range(3)] == [250, 550, 554]
    c.close()


def test_pipelining_violations_recorded(make_sink):
    sink = make_sink()
    c = raw(sink)
    c.send(b"MAIL FROM:<a@test.example>\r\nRCPT TO:<x@test.example>\r\n"
           b"DATA\r\n" + MSG + b".\r\n")     # content before the 354
    assert [c.reply()[0] for _ in range(4)] == [250, 250, 354, 250]
    c.close()
    assert sink.wait_for(1, timeout=T, what="closed")
    assert any("DATA" in v for v in sink.connection().violations)

    sink2 = make_sink(capabilities=("SIZE 1000",))   # no PIPELINING
    c = raw(sink2)
    c.send(b"MAIL FROM:<a@test.example>\r\nRCPT TO:<x@test.example>\r\n")
    assert [c.reply()[0] for _ in range(2)] == [250, 250]
    c.close()
    assert sink2.wait_for(1, timeout=T, what="closed")
    assert any("without PIPELINING" in v for v in sink2.connection().violations)


@pytest.mark.skipif(not os.access(SWAKS, os.X_OK), reason="swaks not installed")
def test_swaks_pipelined_delivery(sink):
    r = subprocess.run(
        [SWAKS, "--server", sink.hostport, "--pipeline", "--from", "a@test.example",
         "--to", "x@test.example,y@test.example", "--helo", "client.test",
         "--body", "swaks body", "--timeout", "5"],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr
    assert sink.wait_for(1, timeout=T)
    t = sink.messages[0]
    assert t.rcpts == ["x@test.example", "y@test.example"]
    assert b"swaks body" in t.data
    assert sink.wait_for(1, timeout=T, what="closed")
    conn = sink.connection()
    assert conn.pipelined and conn.quit and conn.violations == []


# --------------------------------------------------------------------------
# scripted replies

def test_rcpt_reply_for_matching_recipient(sink):
    sink.on("RCPT", "452 4.2.1 Mailbox busy", match="busy@")
    with smtp(sink) as s:
        refused = s.sendmail("a@test.example", ["ok@test.example", "busy@test.example"], MSG)
    assert refused == {"busy@test.example": (452, b"4.2.1 Mailbox busy")}
    assert sink.wait_for(1, timeout=T)
    assert sink.messages[0].rcpts == ["ok@test.example"]


def test_mail_temp_failure_only_first_time(sink):
    rule = sink.on("MAIL", "451 4.3.0 try later", times=1)
    with smtp(sink) as s:
        with pytest.raises(smtplib.SMTPSenderRefused) as e:
            s.sendmail("a@test.example", ["x@test.example"], MSG)
        assert e.value.smtp_code == 451
        assert s.sendmail("a@test.example", ["x@test.example"], MSG) == {}
    assert rule.hits == 1 and rule.spent
    assert sink.wait_for(1, timeout=T) and len(sink.messages) == 1


def test_reject_after_final_dot(sink):
    sink.on("DATA_END", "550 5.7.1 rejected", match="Subject: harness")
    with smtp(sink) as s:
        with pytest.raises(smtplib.SMTPDataError) as e:
            s.sendmail("a@test.example", ["x@test.example"], MSG)
        assert e.value.smtp_code == 550
        s.sendmail("a@test.example", ["x@test.example"], b"Subject: other\r\n\r\nok\r\n")
    assert sink.wait_for(1, timeout=T)
    rejected, accepted = sink.transactions
    assert not rejected.accepted and rejected.reply == "550 5.7.1 rejected"
    assert rejected.data == MSG
    assert sink.messages == [accepted]


def test_rule_removal_and_regex_match(sink):
    import re
    rule = sink.on("RCPT", "550 5.1.1 no", match=re.compile(r"<bad\d@"))
    c = raw(sink)
    c.cmd("MAIL FROM:<a@test.example>")
    assert c.cmd("RCPT TO:<bad1@test.example>")[0] == 550
    assert c.cmd("RCPT TO:<bad@test.example>")[0] == 250
    sink.remove(rule)
    assert c.cmd("RCPT TO:<bad2@test.example>")[0] == 250
    c.close()


def test_bytes_reply_sent_verbatim(sink):
    sink.on("NOOP", b"250 bare lf reply\n")
    c = raw(sink)
    c.send(b"NOOP\r\n")
    assert c.file.readline() == b"250 bare lf reply\n"
    c.close()


# --------------------------------------------------------------------------
# disconnects

@pytest.mark.parametrize("event", ["MAIL", "RCPT", "DATA"])
def test_close_on_command(sink, event):
    sink.close_on(event)
    with smtp(sink) as s:
        with pytest.raises(smtplib.SMTPServerDisconnected):
            s.sendmail("a@test.example", ["x@test.example"], MSG)
    assert sink.wait_for(1, timeout=T, what="closed")
    conn = sink.connection()
    assert conn.closed_by == "server" and conn.verbs[-1] == event
    assert sink.transactions == []


def test_close_during_data(sink):
    sink.close_on("DATA_BODY", match="Subject:")
    big = MSG + (b"z" * 998 + b"\r\n") * 2000     # ~2 MB: the client is still writing
    with pytest.raises((smtplib.SMTPServerDisconnected, OSError)):
        with smtp(sink) as s:
            s.sendmail("a@test.example", ["x@test.example"], big)
    assert sink.wait_for(1, timeout=T, what="closed")
    conn = sink.connection()
    assert conn.closed_by == "server" and conn.verbs[-1] == "DATA"
    assert sink.transactions == []


def test_close_after_final_dot_without_reply(sink):
    sink.close_on("DATA_END")
    with smtp(sink) as s:
        with pytest.raises(smtplib.SMTPServerDisconnected):
            s.sendmail("a@test.example", ["x@test.example"], MSG)
    assert sink.wait_for(1, timeout=T, what="transactions")
    t = sink.transactions[0]
    assert t.reply is None and not t.accepted and t.data == MSG
    assert sink.messages == []


def test_close_after_greeting(sink):
    sink.close_after_greeting(times=1)
    s = smtp(sink)                       # the greeting arrives ...
    with pytest.raises(smtplib.SMTPServerDisconnected):
        s.ehlo()                         # ... then the connection is gone
    s.close()
    with smtp(sink) as s:                # times=1: the next one is normal
        assert s.ehlo()[0] == 250


def test_close_before_greeting(sink):
    sink.close_on("CONNECT")
    with pytest.raises(smtplib.SMTPServerDisconnected):
        smtp(sink)


def test_421_mid_session_closes(sink):
    sink.on("RCPT", "421 4.3.2 Service shutting down")
    c = raw(sink)
    c.cmd("MAIL FROM:<a@test.example>")
    assert c.cmd("RCPT TO:<x@test.example>") == (421, ["421 4.3.2 Service shutting down"])
    assert c.at_eof()
    c.close()
    with smtp(sink) as s:
        with pytest.raises(smtplib.SMTPRecipientsRefused):
            s.sendmail("a@test.example", ["x@test.example"], MSG)
    assert sink.wait_for(2, timeout=T, what="closed")
    assert all(c.closed_by == "server" for c in sink.connections)


# --------------------------------------------------------------------------
# greetings, EHLO

def test_greeting_421(make_sink):
    sink = make_sink(greeting="421 4.3.2 sink.test busy, try later")
    with pytest.raises(smtplib.SMTPConnectError) as e:
        smtp(sink)
    assert e.value.smtp_code == 421
    assert sink.wait_for(1, timeout=T, what="closed")
    assert sink.connection().closed_by == "server"


def test_greeting_554_waits_for_quit(make_sink):
    sink = make_sink(greeting="554 5.7.1 sink.test no service for you")
    c = Raw(sink.address)
    assert c.reply()[0] == 554
    assert c.cmd("EHLO client.test")[0] == 503
    assert c.cmd("MAIL FROM:<a@test.example>")[0] == 503
    assert c.cmd("QUIT")[0] == 221
    assert c.at_eof()
    c.close()


def test_masked_greeting_sent_verbatim(make_sink):
    greeting = "220 2**0*****************0**"
    sink = make_sink(greeting=greeting)
    c = Raw(sink.address)
    assert c.file.readline() == greeting.encode() + b"\r\n"
    c.close()
    sink.greeting = masked_greeting()    # runtime change: next connection
    c = Raw(sink.address)
    assert c.file.readline() == masked_greeting().encode() + b"\r\n"
    c.close()
    with smtp(sink) as s:                # a client must accept it
        assert s.sendmail("a@test.example", ["x@test.example"], MSG) == {}
    assert sink.wait_for(1, timeout=T)


def test_multiline_greeting(make_sink):
    sink = make_sink(greeting="220 sink.test ESMTP\n220 second line")
    c = Raw(sink.address)
    assert c.reply() == (220, ["220-sink.test ESMTP", "220 second line"])
    c.close()


@pytest.mark.parametrize("reject", ["500 5.5.1 Command unrecognized",
                                    "502 5.5.1 Error: command not implemented"])
def test_helo_fallback(make_sink, reject):
    sink = make_sink(ehlo_reject=reject)
    with smtp(sink) as s:
        assert s.sendmail("a@test.example", ["x@test.example"], MSG) == {}
    assert sink.wait_for(1, timeout=T)
    t = sink.messages[0]
    assert not t.esmtp and t.helo == "client.test" and t.mail_params == {}
    assert sink.wait_for(1, timeout=T, what="closed")
    assert sink.connection().verbs == ["EHLO", "HELO", "MAIL", "RCPT", "DATA", ".", "QUIT"]


def test_ehlo_rule_and_params_after_helo(sink):
    sink.on("EHLO", "502 5.5.1 no ESMTP here", times=1)
    c = Raw(sink.address)
    c.reply()
    assert c.cmd("EHLO client.test")[0] == 502
    assert c.cmd("HELO client.test")[0] == 250
    assert c.cmd("MAIL FROM:<a@test.example> SIZE=10")[0] == 555   # no ESMTP
    assert c.cmd("EHLO client.test") == (250, ["250-sink.test"] + [
        "250-" + x for x in DEFAULT_CAPABILITIES[:-1]] + ["250 " + DEFAULT_CAPABILITIES[-1]])
    assert c.cmd("MAIL FROM:<a@test.example> SIZE=10")[0] == 250
    c.close()


def test_capabilities_changed_at_runtime(sink):
    sink.capabilities = ["SIZE 2000", "DSN"]
    c = raw(sink)
    assert c.cmd("MAIL FROM:<a@test.example> RET=HDRS BODY=8BITMIME")[0] == 555
    assert c.cmd("MAIL FROM:<a@test.example> RET=HDRS")[0] == 250
    assert c.cmd("RCPT TO:<x@test.example> NOTIFY=NEVER")[0] == 250
    c.close()


# --------------------------------------------------------------------------
# delays, timeouts, waiting

def test_delay_before_reply(sink):
    sink.on("DATA_END", delay=0.3)
    with smtp(sink) as s:
        t0 = time.monotonic()
        s.sendmail("a@test.example", ["x@test.example"], MSG)
        assert time.monotonic() - t0 >= 0.3


def test_delay_makes_client_time_out_and_stop_interrupts_it(sink):
    sink.on("MAIL", delay=60)
    s = smtp(sink, timeout=0.3)
    s.ehlo()
    with pytest.raises((socket.timeout, smtplib.SMTPServerDisconnected)):
        s.mail("a@test.example")
    s.close()
    t0 = time.monotonic()
    sink.stop()
    assert time.monotonic() - t0 < 1.0
    assert sink.connection().closed_by == "stop"


def test_slow_reader_during_data(sink):
    sink.on("DATA_BODY", delay=0.3, times=1)
    with smtp(sink) as s:
        t0 = time.monotonic()
        s.sendmail("a@test.example", ["x@test.example"], MSG)
        assert time.monotonic() - t0 >= 0.3
    assert sink.wait_for(1, timeout=T) and sink.messages[0].data == MSG


def test_command_timeout(make_sink):
    sink = make_sink(command_timeout=0.3)
    c = Raw(sink.address)
    assert c.reply()[0] == 220
    code, lines = c.reply()             # nothing sent: the sink gives up
    assert code == 421 and "4.4.2" in lines[0]
    assert c.at_eof()
    c.close()
    assert sink.wait_for(1, timeout=T, what="closed")
    assert sink.connection().closed_by == "timeout"


def test_wait_for(sink):
    def send():
        with smtp(sink) as s:
            for i in range(3):
                time.sleep(0.05)
                s.sendmail("a@test.example", ["x@test.example", "y@test.example"], MSG)

    th = threading.Thread(target=send)
    th.start()
    try:
        assert sink.wait_for(3, timeout=T)
        assert sink.wait_for(6, timeout=T, what="rcpts")
        t0 = time.monotonic()
        assert not sink.wait_for(4, timeout=0.2)
        assert 0.15 <= time.monotonic() - t0 < 1.0
        assert sink.wait_for(1, timeout=T, what="closed")
        assert sink.wait_until(lambda: sink.connection().quit, timeout=T)
    finally:
        th.join(T)
    with pytest.raises(ValueError):
        sink.wait_for(1, timeout=0.01, what="bogus")


def test_quit_in_command_log(sink):
    with smtp(sink) as s:                # context exit sends QUIT
        s.noop()
    c = socket.create_connection(sink.address, timeout=T)
    c.recv(100)
    c.close()                            # hang up without QUIT
    assert sink.wait_for(2, timeout=T, what="closed")
    polite, rude = sink.connections
    assert polite.quit and polite.verbs[-1] == "QUIT" and polite.closed_by == "client"
    assert not rude.quit and rude.commands == [] and rude.closed_by == "client"


# --------------------------------------------------------------------------
# connections

def test_200_concurrent_connections(sink):
    clients = []
    try:
        for _ in range(200):
            clients.append(socket.create_connection(sink.address, timeout=T))
        for c in clients:                # every one is greeted right away
            assert c.recv(100).startswith(b"220 ")
        assert sink.active_connections == 200
        assert sink.peak_connections == 200
        for c in clients:
            c.sendall(b"QUIT\r\n")
        for c in clients:
            assert c.recv(100).startswith(b"221 ")
    finally:
        for c in clients:
            c.close()
    assert sink.wait_for(200, timeout=T, what="closed")
    assert sink.active_connections == 0 and sink.connection_count == 200


def test_max_connections(make_sink):
    sink = make_sink(max_connections=2)
    a, b = raw(sink, ehlo=False), raw(sink, ehlo=False)
    c = Raw(sink.address)
    assert c.reply()[0] == 421
    for x in (a, b, c):
        x.close()


def test_stop_closes_idle_sessions_promptly(sink):
    clients = [raw(sink) for _ in range(5)]
    t0 = time.monotonic()
    sink.stop()
    assert time.monotonic() - t0 < 1.0
    assert all(c.at_eof() for c in clients)
    assert {c.closed_by for c in sink.connections} == {"stop"}
    for c in clients:
        c.close()
    with pytest.raises(OSError):
        socket.create_connection(sink.address, timeout=1).close()


def _ipv6_loopback():
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback")
def test_ipv6_loopback(make_sink):
    sink = make_sink(host="::1")
    assert sink.hostport == "[::1]:%d" % sink.port
    with smtplib.SMTP("::1", sink.port, timeout=T) as s:
        s.sendmail("a@test.example", ["x@test.example"], MSG)
    assert sink.wait_for(1, timeout=T)
    assert sink.messages[0].peer[0] == "::1"


def test_given_port(make_sink):
    s0 = make_sink()
    port = s0.port
    s0.stop()
    sink = make_sink(port=port)
    assert sink.port == port
    with smtp(sink) as s:
        assert s.noop()[0] == 250


# --------------------------------------------------------------------------
# PostfixSink (smtp-sink)

needs_smtp_sink = pytest.mark.skipif(not smtp_sink_available(),
                                     reason="smtp-sink not installed (postfix)")


@pytest.fixture
def postfix_sink():
    made = []

    def make(**kw):
        s = PostfixSink(**kw)
        made.append(s)
        return s

    yield make
    for s in made:
        s.cleanup()


@needs_smtp_sink
def test_postfix_sink_counts_and_dumps(postfix_sink):
    ps = postfix_sink()
    assert ps.count() == 0
    with smtplib.SMTP(ps.host, ps.port, local_hostname="client.test", timeout=T) as s:
        for i in range(3):
            body = MSG + b".dot %d\r\n" % i
            s.sendmail("a@test.example", ["x@test.example", "y@test.example"], body)
    assert ps.wait_for(3, timeout=T)
    assert ps.wait_for(1, timeout=T, what="sess")
    assert ps.counters() == {"sess": 1, "quit": 1, "mesg": 3}
    msgs = ps.messages()
    assert len(msgs) == 3
    for i, m in enumerate(msgs):
        assert m.mail_from == "a@test.example"
        assert m.rcpts == ["x@test.example", "y@test.example"]
        assert m.helo == "client.test" and m.proto == "ESMTP"
        assert m.client_addr == "127.0.0.1"
        # CRs are gone, dots unstuffed
        assert m.data == (MSG + b".dot %d\r\n" % i).replace(b"\r\n", b"\n")
        assert m.message["Subject"] == "harness"


@needs_smtp_sink
def test_postfix_sink_hard_reject_rcpt(postfix_sink):
    ps = postfix_sink(hard_reject=("RCPT",), hard_reply="550 5.1.1 No such user")
    with smtplib.SMTP(ps.host, ps.port, timeout=T) as s:
        with pytest.raises(smtplib.SMTPRecipientsRefused) as e:
            s.sendmail("a@test.example", ["x@test.example"], MSG)
    assert e.value.recipients == {"x@test.example": (550, b"5.1.1 No such user")}
    assert ps.wait_for(1, timeout=T, what="sess") and ps.count() == 0


@needs_smtp_sink
def test_postfix_sink_soft_reject_mail(postfix_sink):
    ps = postfix_sink(soft_reject=("MAIL",))
    with smtplib.SMTP(ps.host, ps.port, timeout=T) as s:
        with pytest.raises(smtplib.SMTPSenderRefused) as e:
            s.sendmail("a@test.example", ["x@test.example"], MSG)
    assert e.value.smtp_code == 450


@needs_smtp_sink
def test_postfix_sink_disconnect_and_421(postfix_sink):
    ps = postfix_sink(disconnect=("RCPT",))
    with smtplib.SMTP(ps.host, ps.port, timeout=T) as s:
        with pytest.raises(smtplib.SMTPServerDisconnected):
            s.sendmail("a@test.example", ["x@test.example"], MSG)
    ps2 = postfix_sink(reply_421=("MAIL",))
    c = Raw(ps2.address)
    assert c.reply()[0] == 220
    assert c.cmd("HELO client.test")[0] == 250
    assert c.cmd("MAIL FROM:<a@test.example>")[0] == 421
    assert c.at_eof()
    c.close()


@needs_smtp_sink
def test_postfix_sink_rejected_dot_still_counted(postfix_sink):
    """Documented quirk: mesg and the dump count a message when its "."
    arrives, before the (here: rejecting) reply."""
    ps = postfix_sink(hard_reject=(".",))
    with smtplib.SMTP(ps.host, ps.port, timeout=T) as s:
        with pytest.raises(smtplib.SMTPDataError):
            s.sendmail("a@test.example", ["x@test.example"], MSG)
    assert ps.count() == 1 and len(ps.messages()) == 1


@needs_smtp_sink
def test_postfix_sink_pix_greeting_and_helo_fallback(postfix_sink):
    ps = postfix_sink(pix_greeting=True)
    c = Raw(ps.address)
    assert c.file.readline() == b"220 ********\r\n"
    c.close()
    with smtplib.SMTP(ps.host, ps.port, local_hostname="client.test", timeout=T) as s:
        assert s.ehlo()[0] == 500            # -P implies no ESMTP
        assert s.sendmail("a@test.example", ["x@test.example"], MSG) == {}
    assert ps.wait_for(1, timeout=T)
    assert ps.messages()[0].proto == "SMTP"


@needs_smtp_sink
@pytest.mark.skipif(not os.access(SWAKS, os.X_OK), reason="swaks not installed")
def test_postfix_sink_swaks_pipelined(postfix_sink):
    ps = postfix_sink()
    r = subprocess.run(
        [SWAKS, "--server", ps.hostport, "--pipeline", "--from", "a@test.example",
         "--to", "x@test.example", "--timeout", "5"],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr
    assert ps.wait_for(1, timeout=T)
    assert ps.messages()[0].rcpts == ["x@test.example"]


@needs_smtp_sink
@pytest.mark.skipif(not os.access(SMTP_SOURCE, os.X_OK), reason="smtp-source not installed")
def test_postfix_sink_bulk_count_without_dump(postfix_sink):
    """The benchmark recipe: -c without -D, counted from the counter file."""
    ps = postfix_sink(dump=False)
    n = 1000
    r = subprocess.run([SMTP_SOURCE, "-s", "10", "-m", str(n), "-c", ps.hostport],
                       stdin=subprocess.DEVNULL, capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert ps.wait_for(n, timeout=T)
    assert ps.count() == n
    with pytest.raises(RuntimeError):
        ps.messages()
