"""The delivery engine (src/queue/, src/delivery/) against real peers.

Every test runs a real moatd (private listener OutgoingMail, relaying for
loopback) whose mail goes through SMTP routes or DNS (a knotd on loopback)
to scriptable next hops (smtpsink.FaultSink, Postfix), and accounts for
every message: delivered (byte-exact at the sink), retried (Delayed: /
pending till, then delivered) or bounced (Bounced: and a DSN, parsed with
Python's email package, at the sink that serves the sender's domain).

Conventions: senders are at src.example, recipients at dst.example unless
a test needs DNS; both are routed to sinks. The Default bounce profile is
fast (initial_retry 1 s, max_retry_timeout 2 s, max_retries 3) so that
retries happen within seconds; every wait is bounded.

An engine bug found here is marked xfail(strict=True, reason="BUG: ...")
until it is fixed. None is marked now: every bug this suite found in the
first engine commit (0136f63) and in the fixes that followed was fixed by
2566414; the tests named after them (test_nxdomain_log_lines,
test_busy_server_does_not_cause_a_connect_storm, ...) guard the fixes.
"""

import random
import re
import socket
import subprocess
import time

import pytest

from conftest import Bare, postfix_available
from delivery_fixtures import (  # noqa: F401  (fixtures)
    loopback_addr,
    HOSTNAME, Submitter, ctl, delivery_conf, dns_resolver, dns_server, grep,
    grep_entries, message, parse_dsn, sinks,
    status_counters, submit, wait_queue_empty, wait_until)
from smtpsink import masked_greeting

SENDER = "sender@src.example"
T = 10.0  # generous bound for anything that should take well under a second


# ---------------------------------------------------------------------------
# helpers

def two_sinks(sinks, **kw):
    """(sink for dst.example, sink for src.example: bounces come here)."""
    return sinks(**kw), sinks()


def routes_for(sink, bsink, **more):
    r = {"dst.example": [sink.hostport], "src.example": [bsink.hostport]}
    r.update(more)
    return r


def in_order(moat, patterns, since=0):
    """Find each regex in the stripped log after the previous one's line;
    returns the match objects. Fails with the log if one is missing."""
    lines = moat.log_lines()
    at = since
    found = []
    for p in patterns:
        rx = re.compile(p)
        for i in range(at, len(lines)):
            m = rx.search(lines[i])
            if m:
                found.append(m)
                at = i + 1
                break
        else:
            raise AssertionError("no line matching %r after line %d\n--- log:\n%s"
                                 % (p, at, "\n".join(lines[since:])))
    return found


def dsns(bsink):
    """Accepted DSNs (MAIL FROM:<>) at a sink."""
    return [t for t in bsink.messages if t.mail_from == ""]


def received_prefix_ok(data, original):
    """data == moat's Received: header + original."""
    assert data.endswith(original), (data[-300:], original[-300:])
    prefix = data[:len(data) - len(original)]
    # 127.0.0.1 is "localhost" (libunbound's built-in reverse zone).
    assert re.fullmatch(rb"Received: from client\.test\.example \(localhost "
                        rb"\[127\.0\.0\.1\]\)\r\n\tby gw\.test\.example with "
                        rb"(?:E?SMTP|UTF8SMTP) id \d+ \(ICID \d+\)(?:\r\n\tfor <[^>\r\n]*>)?;"
                        rb"\r\n\t[^\r\n]+\r\n", prefix), prefix
    return prefix


# ---------------------------------------------------------------------------
# 1. relay through an SMTP route

def test_relay_byte_exact_with_log_and_quit(moat_factory, sinks):
    sink, bsink = two_sinks(sinks)
    moat = moat_factory(delivery_conf(routes_for(sink, bsink)))
    body = (".hidden\r\n"
            "..two dots\r\n"
            ".\r\n"
            "a line\r\n"
            " .not at start\r\n"
            ". dot space\r\n"
            "last line without dot\r\n")
    orig = message("relay test", body=body)
    mid = submit(moat, SENDER, ["a@dst.example", "b@dst.example"], orig)
    assert sink.wait_for(1, T)
    assert sink.wait_for(1, T, what="closed")
    t = sink.messages[0]
    assert t.mail_from == SENDER
    assert t.rcpts == ["a@dst.example", "b@dst.example"]
    received_prefix_ok(t.data, orig)
    assert t.mail_params.get("SIZE") == str(len(t.data))
    assert not (t.bare_lf or t.bare_cr or t.long_line)
    assert t.helo == HOSTNAME and t.esmtp
    c = sink.connections[0]
    assert c.quit, c.commands
    assert c.violations == []
    assert c.verbs == ["EHLO", "MAIL", "RCPT", "RCPT", "DATA", ".", "QUIT"]

    m = in_order(moat, [
        r"^MID %d queued for delivery$" % mid,
        r"^New SMTP DCID (\d+) interface 127\.0\.0\.1 address 127\.0\.0\.1 port %d$"
        % sink.port,
    ])
    dcid = m[1].group(1)
    in_order(moat, [
        r"^New SMTP DCID %s " % dcid,
        r"^Delivery start DCID %s MID %d to RID \[0, 1\]$" % (dcid, mid),
        r"^Message done DCID %s MID %d to RID \[0, 1\]$" % (dcid, mid),
        r"^MID %d RID \[0, 1\] Response '2\.0\.0 Ok: queued as %s'$" % (mid, t.queue_id),
        r"^Message finished MID %d done$" % mid,
        r"^DCID %s close$" % dcid,
    ])
    wait_queue_empty(moat)
    assert moat.spool_files() == {"queue": [], "incoming": []}
    st = status_counters(moat)
    assert st["Delivered Recipients"] == 2
    assert st["Hard Bounced Recipients"] == 0
    assert st["Current Outbound Conn."] == 0
    assert dsns(bsink) == []


def test_large_message_dot_stuffing_across_chunks(moat_factory, sinks):
    """A 300 KB message whose lines start with '.' everywhere, including at
    the client's 64 KiB content-chunk boundaries, arrives byte-exact."""
    sink = sinks()
    moat = moat_factory(delivery_conf({"dst.example": [sink.hostport]}))
    lines = []
    size = 0
    i = 0
    while size < 300_000:
        # Line lengths vary so that line starts fall on every offset mod 64K.
        n = 1 + (i * 37) % 200
        line = ("." if i % 3 == 0 else "x") + ("%d-" % i) * (n // 4 + 1)
        line = line[:n] + "\r\n"
        lines.append(line)
        size += len(line)
        i += 1
    orig = message("big", body="".join(lines))
    submit(moat, SENDER, "big@dst.example", orig)
    assert sink.wait_for(1, T)
    received_prefix_ok(sink.messages[0].data, orig)


def test_8bitmime_and_size_parameters(moat_factory, sinks):
    """BODY=8BITMIME goes with an 8-bit message to a server offering it;
    a server without SIZE/8BITMIME gets no parameters (and the 8-bit
    message as it is)."""
    full = sinks()
    bare = sinks(capabilities=("PIPELINING", "ENHANCEDSTATUSCODES"))
    moat = moat_factory(delivery_conf({"full.example": [full.hostport],
                                       "bare.example": [bare.hostport]}))
    orig = message("8bit", body="caf\u00e9 \u00fcber\r\n").replace(
        b"Subject: 8bit", b"Subject: 8bit\r\nContent-Type: text/plain; charset=utf-8\r\n"
        b"Content-Transfer-Encoding: 8bit")
    with Submitter(moat) as s:
        s.send(SENDER, "x@full.example", orig, mail_options=["BODY=8BITMIME"])
        s.send(SENDER, "x@bare.example", orig, mail_options=["BODY=8BITMIME"])
        s.send(SENDER, "y@full.example", message("7bit"))
    assert full.wait_for(2, T) and bare.wait_for(1, T)
    by_rcpt = {t.rcpts[0]: t for t in full.messages}
    t8 = by_rcpt["x@full.example"]
    assert t8.mail_params == {"SIZE": str(len(t8.data)), "BODY": "8BITMIME"}
    assert t8.eight_bit
    received_prefix_ok(t8.data, orig)
    t7 = by_rcpt["y@full.example"]
    assert t7.mail_params == {"SIZE": str(len(t7.data))}
    tb = bare.messages[0]
    assert tb.mail_params == {}
    received_prefix_ok(tb.data, orig)
    assert bare.connections[0].violations == []


# ---------------------------------------------------------------------------
# 2. protocol variants

def test_pipelining_used_only_when_offered(moat_factory, sinks):
    pipe = sinks()
    nopipe = sinks(capabilities=("SIZE 10485760", "8BITMIME", "ENHANCEDSTATUSCODES"))
    moat = moat_factory(delivery_conf({"pipe.example": [pipe.hostport],
                                       "nopipe.example": [nopipe.hostport]}))
    submit(moat, SENDER, ["a@pipe.example", "b@pipe.example", "c@pipe.example"])
    submit(moat, SENDER, ["a@nopipe.example", "b@nopipe.example"])
    assert pipe.wait_for(1, T) and nopipe.wait_for(1, T)
    assert pipe.wait_for(1, T, what="closed") and nopipe.wait_for(1, T, what="closed")
    cp = pipe.connections[0]
    assert cp.pipelined, cp.transcript
    assert cp.violations == []
    cn = nopipe.connections[0]
    assert not cn.pipelined, cn.transcript
    assert cn.violations == []
    assert cn.verbs == ["EHLO", "MAIL", "RCPT", "RCPT", "DATA", ".", "QUIT"]


def test_pipelined_commands_in_one_write(moat_factory, sinks):
    """RFC 2920: MAIL, RCPTs and DATA arrive before the first reply."""
    sink = sinks()
    # Delay the MAIL reply: everything the client pipelined is in by then.
    sink.on("MAIL", delay=0.3)
    moat = moat_factory(delivery_conf({"dst.example": [sink.hostport]}))
    submit(moat, SENDER, ["a@dst.example", "b@dst.example"])
    assert sink.wait_for(1, T)
    tr = sink.connections[0].transcript
    i_mail = next(i for i, (d, x) in enumerate(tr) if d == "C" and x.startswith("MAIL"))
    # The next server line after MAIL is its reply; the client lines logged
    # before that reply went out are the pipelined group.
    j = next(i for i in range(i_mail, len(tr)) if tr[i][0] == "S")
    # The sink logs a command when it reads it, so look at which commands
    # were already buffered: all of them were logged before the 354.
    i_354 = next(i for i, (d, x) in enumerate(tr) if d == "S" and x.startswith("354"))
    verbs = [x.split(" ")[0] for d, x in tr[i_mail:i_354] if d == "C"]
    assert verbs == ["MAIL", "RCPT", "RCPT", "DATA"]
    assert sink.connections[0].pipelined
    assert j > i_mail


def test_helo_fallback_when_ehlo_refused(moat_factory, sinks):
    sink = sinks(ehlo_reject="502 5.5.1 Error: command not implemented")
    moat = moat_factory(delivery_conf({"dst.example": [sink.hostport]}))
    orig = message("helo")
    submit(moat, SENDER, "a@dst.example", orig)
    assert sink.wait_for(1, T)
    t = sink.messages[0]
    assert not t.esmtp and t.helo == HOSTNAME
    assert t.mail_params == {}  # no SIZE after HELO
    c = sink.connections[0]
    assert c.verbs[:2] == ["EHLO", "HELO"]
    assert not c.pipelined and c.violations == []
    received_prefix_ok(t.data, orig)


def test_masked_greetings_accepted(moat_factory, sinks):
    masked = sinks(greeting=masked_greeting())
    assert masked.greeting.startswith("220 ") and "*" in masked.greeting
    # A firewall that masks the code's digits too: "2** ****...".
    digits = sinks()
    digits.on("CONNECT", "2** ****2***0**0*****", action="reply")
    multi = sinks(greeting="220-sink.test first line\n220-second\n220 third")
    moat = moat_factory(delivery_conf({"masked.example": [masked.hostport],
                                       "digits.example": [digits.hostport],
                                       "multi.example": [multi.hostport]}))
    for d in ("masked", "digits", "multi"):
        submit(moat, SENDER, "a@%s.example" % d)
    for s in (masked, digits, multi):
        assert s.wait_for(1, T), moat.report()
    assert grep(moat, r"^Connection Error") == []


def test_custom_helo_name(moat_factory, sinks):
    sink = sinks()
    moat = moat_factory(delivery_conf({"dst.example": [sink.hostport]},
                                      delivery={"helo": "out.gw.example"}))
    submit(moat, SENDER, "a@dst.example")
    assert sink.wait_for(1, T)
    assert sink.messages[0].helo == "out.gw.example"


# ---------------------------------------------------------------------------
# 3. connection reuse and concurrency

def _release(moat, conf):
    """Rewrite the configuration without suspended and commit it."""
    conf["delivery"] = dict(conf["delivery"], suspended=False)
    moat.configure(conf)
    r = moat.ctl("commit")
    assert r.returncode == 0, r.stdout + r.stderr


def test_connection_reuse_messages_per_connection(moat_factory, sinks):
    sink = sinks()
    conf = delivery_conf({"dst.example": [sink.hostport]},
                         delivery={"suspended": True},
                         destinations={"dst.example": {
                             "concurrency": 1, "messages_per_connection": 3}})
    moat = moat_factory(conf)
    n = 7
    with Submitter(moat) as s:
        mids = [s.send(SENDER, "r%d@dst.example" % i, message("reuse %d" % i))
                for i in range(n)]
    time.sleep(0.5)
    assert sink.connection_count == 0  # suspended
    _release(moat, conf)
    assert sink.wait_for(n, T)
    assert sink.wait_until(lambda: sink.active_connections == 0, T)
    conns = sink.connections
    per_conn = [c.transactions for c in conns]
    assert sum(per_conn) == n
    assert max(per_conn) <= 3
    assert len(conns) == 3, per_conn  # ceil(7 / 3) with concurrency 1
    assert all(c.quit for c in conns)
    # The log shows the same: at most 3 deliveries per DCID.
    starts = grep(moat, r"^Delivery start DCID")
    by_dcid = {}
    for ln in starts:
        d = ln.split()[3]
        by_dcid[d] = by_dcid.get(d, 0) + 1
    assert sorted(by_dcid.values()) == [1, 3, 3]
    assert sorted(int(x) for x in re.findall(r"MID (\d+)", " ".join(starts))) == mids
    wait_queue_empty(moat)


def test_closing_connection_counts_against_concurrency(moat_factory, sinks):
    """concurrency = 1: the next connection opens only once the previous
    one is closed, not while it still waits for the reply to QUIT (a
    server limiting connections per client would refuse it)."""
    sink = sinks()
    sink.on("QUIT", delay=0.5)
    conf = delivery_conf({"dst.example": [sink.hostport]},
                         delivery={"suspended": True},
                         destinations={"dst.example": {
                             "concurrency": 1, "messages_per_connection": 1}})
    moat = moat_factory(conf)
    with Submitter(moat) as s:
        for i in range(3):
            s.send(SENDER, "r%d@dst.example" % i, message("overlap %d" % i))
    _release(moat, conf)
    assert sink.wait_for(3, T)
    assert sink.wait_until(lambda: sink.active_connections == 0
                           and sink.connection_count >= 3, T)
    conns = sink.connections
    overlaps = [(b.opened_at - a.closed_at) for a, b in zip(conns, conns[1:])
                if b.opened_at < a.closed_at - 0.1]
    assert overlaps == [], "connection opened %.2fs before the previous one closed" % (
        -min(overlaps))


def test_idle_connection_reused_for_mail_a_moment_later(moat_factory, sinks):
    """A message arriving shortly after the previous one was delivered
    goes over the same connection (moat keeps an idle connection for a
    moment, as Postfix's connection cache does)."""
    sink = sinks()
    moat = moat_factory(delivery_conf({"dst.example": [sink.hostport]}))
    submit(moat, SENDER, "a@dst.example")
    assert sink.wait_for(1, T)
    time.sleep(0.5)
    submit(moat, SENDER, "b@dst.example")
    assert sink.wait_for(2, T)
    assert sink.connection_count == 1
    assert sink.wait_for(1, T, what="closed")  # and it does close by itself
    assert sink.connections[0].quit


def test_route_change_applies_to_idle_connection(moat_factory, sinks):
    old, new = sinks(), sinks()
    moat = moat_factory(delivery_conf({"dst.example": [old.hostport]}))
    submit(moat, SENDER, "a@dst.example")
    assert old.wait_for(1, T)
    moat.configure(delivery_conf({"dst.example": [new.hostport]}))
    assert moat.ctl("commit").returncode == 0
    submit(moat, SENDER, "b@dst.example")
    wait_until(lambda: len(old.messages) + len(new.messages) >= 2, T)
    assert [t.rcpts for t in new.messages] == [["b@dst.example"]]
    assert len(old.messages) == 1


def test_concurrency_limit_with_slow_sink(moat_factory, sinks):
    sink = sinks()
    sink.on("DATA_END", delay=0.5)
    conf = delivery_conf({"dst.example": [sink.hostport]},
                         delivery={"suspended": True},
                         destinations={"dst.example": {"concurrency": 2}})
    moat = moat_factory(conf)
    n = 8
    with Submitter(moat) as s:
        for i in range(n):
            s.send(SENDER, "r%d@dst.example" % i, message("conc %d" % i))
    _release(moat, conf)
    # Watch moat's own gauge while it works.
    seen = []
    deadline = time.monotonic() + 15
    while len(sink.messages) < n and time.monotonic() < deadline:
        st = status_counters(moat)
        seen.append(st["Current Outbound Conn."])
        time.sleep(0.1)
    assert len(sink.messages) == n
    assert sink.peak_connections <= 2
    assert max(seen) <= 2, seen
    # Both connections were used (the work was shared), and reused.
    assert sink.peak_connections == 2
    assert sink.connection_count < n
    wait_queue_empty(moat)


def test_burst_opens_no_idle_connections(moat_factory, sinks):
    """Ten messages queued at once with the default concurrency: every
    connection moat opens carries at least one message (none is opened
    only to say EHLO and QUIT)."""
    sink = sinks()
    conf = delivery_conf({"dst.example": [sink.hostport]},
                         delivery={"suspended": True})
    moat = moat_factory(conf)
    n = 10
    with Submitter(moat) as s:
        for i in range(n):
            s.send(SENDER, "r%d@dst.example" % i, message("burst %d" % i))
    _release(moat, conf)
    assert sink.wait_for(n, T)
    assert sink.wait_until(lambda: sink.active_connections == 0, T)
    empty = [c.verbs for c in sink.connections if c.transactions == 0]
    assert empty == [], "%d of %d connections carried nothing: %r" % (
        len(empty), sink.connection_count, empty[:3])


# ---------------------------------------------------------------------------
# 4. per-recipient results and DSNs

@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelined", "lockstep"])
def test_rcpt_550_bounces_that_recipient_only(moat_factory, sinks, pipelining):
    caps = ("PIPELINING", "SIZE 10485760", "8BITMIME", "ENHANCEDSTATUSCODES")
    sink = sinks(capabilities=caps if pipelining else caps[1:])
    bsink = sinks()
    sink.on("RCPT", "550 5.1.1 <bad@dst.example>: no such user", match="bad@")
    moat = moat_factory(delivery_conf(routes_for(sink, bsink)))
    orig = message("per rcpt", body="the original body\r\n")
    mid = submit(moat, SENDER, ["bad@dst.example", "good@dst.example"], orig)
    assert sink.wait_for(1, T)
    assert bsink.wait_for(1, T)
    t = sink.messages[0]
    assert t.rcpts == ["good@dst.example"]
    assert [r for r, _ in t.rejected_rcpts] == ["bad@dst.example"]

    d = dsns(bsink)
    assert len(d) == 1
    dsn = d[0]
    assert dsn.mail_from == "" and dsn.rcpts == [SENDER]
    msg, info = parse_dsn(dsn.data)
    assert msg["From"].addresses[0].addr_spec == "MAILER-DAEMON@" + HOSTNAME
    assert msg["To"].addresses[0].addr_spec == SENDER
    assert msg["Subject"] == "Delivery Status Notification (Failure)"
    assert msg["Auto-Submitted"].startswith("auto-replied")
    assert info["report"]["Reporting-MTA"] == "dns; " + HOSTNAME
    assert len(info["statuses"]) == 1
    s = info["statuses"][0]
    assert s["Final-Recipient"].lower() == "rfc822; bad@dst.example"
    assert s["Action"] == "failed"
    assert s["Status"] == "5.1.1"
    assert "550 5.1.1 <bad@dst.example>: no such user" in s["Diagnostic-Code"]
    assert s["Diagnostic-Code"].startswith("smtp;")
    assert s["Remote-MTA"] == "dns; 127.0.0.1"
    assert sink.connections[0].violations == []
    # The original is attached whole (it is small).
    assert info["original"] is not None
    assert info["original"].get_content_type() == "message/rfc822"
    inner = info["original"].get_payload()[0]
    assert inner["Subject"] == "per rcpt"
    assert "the original body" in inner.get_content()

    dcid = in_order(moat, [r"^New SMTP DCID (\d+) .* port %d$" % sink.port])[0].group(1)
    in_order(moat, [
        r"^Delivery start DCID %s MID %d to RID \[0, 1\]$" % (dcid, mid),
        r"^Message done DCID %s MID %d to RID \[1\]$" % (dcid, mid),
        r"^MID %d RID \[1\] Response '2\.0\.0 Ok" % mid,
    ])
    bl = in_order(moat, [
        r"^Bounced: DCID %s MID %d to RID 0 - 5\.1\.1 - Bad destination mailbox "
        r"address \('550', \['5\.1\.1 <bad@dst\.example>: no such user'\]\)$" % (dcid, mid),
        r"^MID (\d+) was generated for bounce of MID %d$" % mid,
    ])
    bmid = int(bl[1].group(1))
    in_order(moat, [
        r"^Start MID %d ICID 0$" % bmid,
        r"^MID %d ICID 0 From: <>$" % bmid,
        r"^MID %d ICID 0 RID 0 To: <%s>$" % (bmid, SENDER),
        r"^MID %d queued for delivery$" % bmid,
    ])
    moat.wait_log(r"^Message finished MID %d done$" % mid, T)
    moat.wait_log(r"^Message finished MID %d done$" % bmid, T)
    wait_queue_empty(moat)
    st = status_counters(moat)
    assert st["Delivered Recipients"] == 2  # good@ and the DSN
    assert st["Hard Bounced Recipients"] == 1
    assert st["Gen. Bounce Messages"] == 1


def test_rcpt_4xx_retried_then_delivered(moat_factory, sinks):
    sink, bsink = two_sinks(sinks)
    sink.on("RCPT", "452 4.2.2 Mailbox busy", match="busy@", times=1)
    moat = moat_factory(delivery_conf(routes_for(sink, bsink)))
    mid = submit(moat, SENDER, ["busy@dst.example", "ok@dst.example"])
    assert sink.wait_for(2, T)
    first, second = sink.messages[:2]
    assert first.rcpts == ["ok@dst.example"]
    assert second.rcpts == ["busy@dst.example"]
    assert second.received_at - first.received_at >= 0.5
    moat.wait_log(r"^Message finished MID %d done$" % mid, T)
    in_order(moat, [
        r"^Delayed: DCID \d+ MID %d to RID 0 - 4\.2\.2 - Mailbox full "
        r"\('452', \['4\.2\.2 Mailbox busy'\]\)$" % mid,
        r"^Message %d to RID \[0\] pending till " % mid,
        r"^Delivery start DCID \d+ MID %d to RID \[0\]$" % mid,
        r"^Message done DCID \d+ MID %d to RID \[0\]$" % mid,
        r"^Message finished MID %d done$" % mid,
    ])
    wait_queue_empty(moat)
    assert sorted(sink.rcpts) == ["busy@dst.example", "ok@dst.example"]
    assert dsns(bsink) == []
    st = status_counters(moat)
    assert st["Soft Bounced Events"] == 1 and st["Delivered Recipients"] == 2


def test_550_after_data_bounces_all_in_one_dsn(moat_factory, sinks):
    sink, bsink = two_sinks(sinks)
    sink.on("DATA_END", "550 5.7.1 Message content rejected")
    moat = moat_factory(delivery_conf(routes_for(sink, bsink)))
    mid = submit(moat, SENDER, ["a@dst.example", "b@dst.example"], message("spam"))
    assert bsink.wait_for(1, T)
    assert sink.messages == [] and len(sink.transactions) == 1
    d = dsns(bsink)
    assert len(d) == 1
    _, info = parse_dsn(d[0].data)
    got = sorted((s["Final-Recipient"].lower(), s["Status"]) for s in info["statuses"])
    assert got == [("rfc822; a@dst.example", "5.7.1"), ("rfc822; b@dst.example", "5.7.1")]
    for rid in (0, 1):
        moat.wait_log(r"^Bounced: DCID \d+ MID %d to RID %d - 5\.7\.1 - Delivery not "
                      r"authorized, message refused \('550', \['5\.7\.1 Message content "
                      r"rejected'\]\)$" % (mid, rid), T)
    assert len(grep(moat, r"was generated for bounce of MID %d$" % mid)) == 1
    wait_queue_empty(moat)


@pytest.mark.parametrize("verb", ["MAIL", "DATA"])
def test_mail_or_data_5xx_bounces_all(moat_factory, sinks, verb):
    sink, bsink = two_sinks(sinks)
    sink.on(verb, "553 5.7.1 Sender refused")
    moat = moat_factory(delivery_conf(routes_for(sink, bsink)))
    mid = submit(moat, SENDER, ["a@dst.example", "b@dst.example"])
    assert bsink.wait_for(1, T)
    _, info = parse_dsn(dsns(bsink)[0].data)
    assert [s["Status"] for s in info["statuses"]] == ["5.7.1", "5.7.1"]
    assert len(grep(moat, r"^Bounced: DCID \d+ MID %d to RID [01] - 5\.7\.1 " % mid)) == 2
    assert sink.transactions == []
    wait_queue_empty(moat)


def test_data_end_4xx_retried_delivered_once(moat_factory, sinks):
    sink, bsink = two_sinks(sinks)
    sink.on("DATA_END", "451 4.3.0 Try again later", times=1)
    moat = moat_factory(delivery_conf(routes_for(sink, bsink)))
    mid = submit(moat, SENDER, ["a@dst.example", "b@dst.example"])
    assert sink.wait_for(1, T)
    wait_queue_empty(moat)
    assert len(sink.transactions) == 2 and len(sink.messages) == 1
    assert sink.messages[0].rcpts == ["a@dst.example", "b@dst.example"]
    assert len(grep(moat, r"^Delayed: DCID \d+ MID %d to RID [01] - 4\.3\.0 " % mid)) == 2


def test_max_recipients_per_transaction_splits(moat_factory, sinks):
    sink = sinks()
    moat = moat_factory(delivery_conf({"dst.example": [sink.hostport]},
                                      delivery={"max_recipients_per_transaction": 2}))
    rcpts = ["r%d@dst.example" % i for i in range(5)]
    submit(moat, SENDER, rcpts)
    assert sink.wait_for(5, T, what="rcpts")
    wait_queue_empty(moat)
    assert sorted(sink.rcpts) == rcpts
    assert sorted(len(t.rcpts) for t in sink.messages) == [1, 2, 2]


def test_message_over_server_size_bounces_unsent(moat_factory, sinks):
    sink = sinks(capabilities=("PIPELINING", "SIZE 2000", "ENHANCEDSTATUSCODES"))
    bsink = sinks()
    moat = moat_factory(delivery_conf(routes_for(sink, bsink)))
    mid = submit(moat, SENDER, "a@dst.example", message("big", body="x" * 70 + "\r\n") * 40)
    assert bsink.wait_for(1, T)
    moat.wait_log(r"^Bounced: DCID \d+ MID %d to RID 0 - 5\.3\.4 - Message too big "
                  r"for system " % mid, T)
    assert sink.transactions == []
    assert all("MAIL" not in c.verbs for c in sink.connections)
    _, info = parse_dsn(dsns(bsink)[0].data)
    assert info["statuses"][0]["Status"] == "5.3.4"


def test_recipients_in_two_domains(moat_factory, sinks):
    a, b = sinks(), sinks()
    moat = moat_factory(delivery_conf({"a.example": [a.hostport],
                                       "b.example": [b.hostport]}))
    mid = submit(moat, SENDER, ["x@a.example", "y@b.example", "z@a.example"])
    assert a.wait_for(1, T) and b.wait_for(1, T)
    assert a.messages[0].rcpts == ["x@a.example", "z@a.example"]
    assert b.messages[0].rcpts == ["y@b.example"]
    moat.wait_log(r"^Message finished MID %d done$" % mid, T)
    assert len(grep(moat, r"^Message finished MID %d " % mid)) == 1
    in_order(moat, [r"Delivery start DCID \d+ MID %d to RID \[0, 2\]" % mid])
    in_order(moat, [r"Delivery start DCID \d+ MID %d to RID \[1\]" % mid])


def test_all_rcpts_refused_then_next_message_same_connection(moat_factory, sinks):
    """Every RCPT refused (pipelined: DATA gets 554): RSET, and the next
    message goes over the same connection."""
    sink, bsink = two_sinks(sinks)
    sink.on("RCPT", "550 5.1.1 no such user", match="gone")
    conf = delivery_conf(routes_for(sink, bsink), delivery={"suspended": True},
                         destinations={"dst.example": {"concurrency": 1}})
    moat = moat_factory(conf)
    m1 = submit(moat, SENDER, ["gone1@dst.example", "gone2@dst.example"])
    m2 = submit(moat, SENDER, "here@dst.example")
    _release(moat, conf)
    assert sink.wait_for(1, T)
    assert bsink.wait_for(1, T)
    moat.wait_log(r"^Message finished MID %d done$" % m2, T)
    c = sink.connections[0]
    assert c.verbs[:7] == ["EHLO", "MAIL", "RCPT", "RCPT", "DATA", "RSET", "MAIL"], c.verbs
    assert c.violations == []
    assert sink.messages[0].rcpts == ["here@dst.example"]
    assert len(grep(moat, r"^Bounced: DCID \d+ MID %d to RID [01] - 5\.1\.1 " % m1)) == 2


def test_multiline_final_reply_logged(moat_factory, sinks):
    sink = sinks()
    sink.on("DATA_END", "250-2.0.0 first line\n250-2.0.0 second line\n250 2.0.0 queued as X1")
    moat = moat_factory(delivery_conf({"dst.example": [sink.hostport]}))
    mid = submit(moat, SENDER, "a@dst.example")
    moat.wait_log(r"^MID %d RID \[0\] Response '2\.0\.0 first line / second line / "
                  r"queued as X1'$" % mid, T)


def test_smtputf8_message(moat_factory, sinks):
    """An SMTPUTF8 message goes with SMTPUTF8 to a server offering it, and
    bounces 5.6.7 at one that does not."""
    yes = sinks(capabilities=("PIPELINING", "SIZE 10485760", "8BITMIME",
                              "ENHANCEDSTATUSCODES", "SMTPUTF8"))
    no = sinks()
    bsink = sinks()
    moat = moat_factory(delivery_conf({"yes.example": [yes.hostport],
                                       "no.example": [no.hostport],
                                       "src.example": [bsink.hostport]}))
    data = message("utf8", body="gr\u00fc\u00dfe\r\n")
    with Submitter(moat) as s:
        s.s.ehlo()
        assert s.s.has_extn("smtputf8")
        s.send(SENDER, "j\u00fcrgen@yes.example".encode().decode(), data,
               mail_options=["SMTPUTF8", "BODY=8BITMIME"])
        m2 = s.send(SENDER, "j\u00fcrgen@no.example", data,
                    mail_options=["SMTPUTF8", "BODY=8BITMIME"])
    assert yes.wait_for(1, T)
    t = yes.messages[0]
    assert "SMTPUTF8" in t.mail_params and t.rcpts == ["j\u00fcrgen@yes.example"]
    moat.wait_log(r"^Bounced: DCID \d+ MID %d to RID 0 - 5\.6\.7 - Non-ASCII "
                  r"addresses not permitted for that recipient " % m2, T)
    assert no.transactions == []
    assert all("MAIL" not in c.verbs for c in no.connections)


def test_utf8_headers_keep_smtputf8(moat_factory, sinks):
    """ASCII envelope, UTF-8 in the headers (RFC 6532), received with
    SMTPUTF8: a next hop that offers SMTPUTF8 gets the message with it
    (8-bit headers are only allowed in an SMTPUTF8 transaction)."""
    yes = sinks(capabilities=("PIPELINING", "SIZE 10485760", "8BITMIME",
                              "ENHANCEDSTATUSCODES", "SMTPUTF8"))
    moat = moat_factory(delivery_conf({"yes.example": [yes.hostport]}))
    data = message("Gr\u00fc\u00dfe aus K\u00f6ln", body="hallo\r\n")
    with Submitter(moat) as s:
        s.send(SENDER, "plain@yes.example", data, mail_options=["SMTPUTF8"])
    assert yes.wait_for(1, T)
    t = yes.messages[0]
    assert "SMTPUTF8" in t.mail_params, t.mail_params
    received_prefix_ok(t.data, data)


def test_ascii_message_flagged_smtputf8_is_delivered(moat_factory, sinks):
    no = sinks()  # no SMTPUTF8
    moat = moat_factory(delivery_conf({"no.example": [no.hostport]}))
    with Submitter(moat) as s:
        mid = s.send(SENDER, "plain@no.example", message("ascii"),
                     mail_options=["SMTPUTF8"])
    wait_until(lambda: no.messages or grep(moat, r"^Bounced: "), T)
    assert grep(moat, r"^Bounced: DCID \d+ MID %d " % mid) == []
    assert [t.rcpts for t in no.messages] == [["plain@no.example"]]
    assert "SMTPUTF8" not in no.messages[0].mail_params


def test_dsn_for_smtputf8_message_reaches_ascii_sender(moat_factory, sinks):
    no = sinks()
    bsink = sinks()  # no SMTPUTF8
    moat = moat_factory(delivery_conf({"no.example": [no.hostport],
                                       "src.example": [bsink.hostport]}))
    with Submitter(moat) as s:
        s.send(SENDER, "j\u00fcrgen@no.example", message("utf8"),
               mail_options=["SMTPUTF8"])
    moat.wait_log(r"^Bounced: DCID \d+ MID \d+ to RID 0 - 5\.6\.7 ", T)
    wait_until(lambda: bsink.messages or grep(moat, r"^Double bounce:"), T)
    assert grep(moat, r"^Double bounce:") == []
    assert len(dsns(bsink)) == 1


def test_ip_preference(moat_factory, sinks, dns_server):
    """One MX host with an A and an AAAA record: ipv6_preferred (default)
    uses the IPv6 address, ipv4_only the IPv4 one."""
    ip4 = loopback_addr()
    try:
        v6 = sinks(host="::1", port=25)
    except OSError:
        pytest.skip("[::1]:25 not available")
    v4 = sinks(host=ip4, port=25)
    dns = dns_server({"dual.example": [("@", "MX", "10 mx.dual.example."),
                                       ("mx", "A", ip4), ("mx", "AAAA", "::1")],
                      "v4.example": [("@", "MX", "10 mx.dual.example.")]})
    moat = moat_factory(delivery_conf(
        resolver=dns_resolver(dns),
        destinations={"v4.example": {"ip_preference": Bare("ipv4_only")}}))
    submit(moat, SENDER, "a@dual.example")
    submit(moat, SENDER, "b@v4.example")
    assert v6.wait_for(1, T) and v4.wait_for(1, T)
    assert v6.messages[0].rcpts == ["a@dual.example"]
    assert v4.messages[0].rcpts == ["b@v4.example"]
    assert grep(moat, r"^New SMTP DCID \d+ interface ::1 address ::1 port 25$")


def test_retry_state_survives_restart(moat_factory, sinks):
    """After a restart a deferred recipient keeps its retry time and its
    count of failed attempts (docs/delivery.md)."""
    sink = sinks()
    rule = sink.on("RCPT", "451 4.3.0 later")
    moat = moat_factory(delivery_conf(
        {"dst.example": [sink.hostport]},
        profiles={"Default": {"initial_retry": 4, "max_retry_timeout": 8,
                              "max_retries": 5}}))
    mid = submit(moat, SENDER, "a@dst.example")
    moat.wait_log(r"^Message %d to RID \[0\] pending till" % mid, T)
    t_fail = time.time()
    assert moat.stop() == 0
    moat.start()
    show = ctl(moat, "queue", "show", mid).stdout
    assert re.search(r"RID 0 <a@dst\.example> pending, retry at .+, 1 failed "
                     r"attempt\(s\)", show), show
    sink.remove(rule)
    assert sink.wait_for(1, T)
    waited = sink.messages[0].received_at - t_fail
    assert 2.5 <= waited <= 7, waited  # the retry time, not at once
    assert sink.connection_count == 2


# ---------------------------------------------------------------------------
# 5. retries and expiry

def rcpt_clock(sink, reply, match=None):
    """Refuse RCPTs (matching `match`) with `reply`; returns the list of
    times they came (an attempt each: connections may be reused)."""
    times = []

    def hit(subject):
        if match is None or match in subject:
            times.append(time.time())
            return True
        return False

    sink.on("RCPT", reply, match=hit)
    return times


def test_retries_spaced_then_bounced_5_4_7(moat_factory, sinks):
    sink, bsink = two_sinks(sinks)
    attempts = rcpt_clock(sink, "451 4.3.0 Temporary failure")
    moat = moat_factory(delivery_conf(
        routes_for(sink, bsink),
        profiles={"Default": {"initial_retry": 1, "max_retry_timeout": 2,
                              "max_retries": 2}}))
    mid = submit(moat, SENDER, "a@dst.example")
    assert bsink.wait_for(1, 15)
    # Attempts at t0, t0+1, t0+1+2, then the bounce.
    assert len(attempts) == 3, attempts
    g1, g2 = attempts[1] - attempts[0], attempts[2] - attempts[1]
    assert 0.7 <= g1 <= 2.5, (g1, g2)
    assert 1.7 <= g2 <= 3.5, (g1, g2)
    assert g2 > g1
    delayed = grep(moat, r"^Delayed: DCID \d+ MID %d to RID 0 - 4\.3\.0 " % mid)
    assert len(delayed) == 2
    assert len(grep(moat, r"^Message %d to RID \[0\] pending till " % mid)) == 2
    moat.wait_log(r"^Bounced: DCID \d+ MID %d to RID 0 - 5\.4\.7 - Delivery retries "
                  r"exceeded \('451', \['4\.3\.0 Temporary failure'\]\)$" % mid, T)
    _, info = parse_dsn(dsns(bsink)[0].data)
    s = info["statuses"][0]
    assert s["Status"] == "5.4.7" and s["Action"] == "failed"
    assert "4.3.0" in s.get("Diagnostic-Code", "")
    wait_queue_empty(moat)
    # No fourth attempt.
    time.sleep(1)
    assert len(attempts) == 3
    st = status_counters(moat)
    assert st["Hard Bounced Recipients"] == 1
    assert st["Expired Hard Bounces"] == 1


def test_soft_bounce_events_match_delayed_lines(moat_factory, sinks):
    sink = sinks()
    sink.on("RCPT", "451 4.3.0 Temporary failure")
    moat = moat_factory(delivery_conf(
        {"dst.example": [sink.hostport]},
        profiles={"Default": {"max_retries": 0, "send_bounces": False}}))
    mid = submit(moat, SENDER, "a@dst.example")
    moat.wait_log(r"^Bounced: DCID \d+ MID %d to RID 0 - 5\.4\.7 - Delivery retries "
                  r"exceeded" % mid, T)
    assert grep(moat, r"^Delayed:") == []
    st = status_counters(moat)
    assert (st["Soft Bounced Events"], st["Hard Bounced Recipients"]) == (0, 1)


def test_pending_till_matches_profile(moat_factory, sinks):
    """'pending till' names the retry time: now + initial_retry, doubling."""
    sink, bsink = two_sinks(sinks)
    sink.on("RCPT", "451 4.3.0 Temporary failure")
    moat = moat_factory(delivery_conf(
        routes_for(sink, bsink),
        profiles={"Default": {"initial_retry": 20, "max_retry_timeout": 100,
                              "max_retries": 5}}))
    mid = submit(moat, SENDER, "a@dst.example")
    e = None
    deadline = time.monotonic() + T
    while e is None and time.monotonic() < deadline:
        got = grep_entries(moat, r"^Message %d to RID \[0\] pending till (.*)$" % mid)
        e = got[0] if got else None
        time.sleep(0.05)
    assert e is not None
    import datetime
    till = datetime.datetime.strptime(
        re.search(r"pending till (.*)$", e.text).group(1), "%a %b %d %H:%M:%S %Y")
    assert 19 <= (till - e.when).total_seconds() <= 21
    show = ctl(moat, "queue", "show", mid).stdout
    assert re.search(r"RID 0 <a@dst\.example> pending, retry at .*, 1 failed "
                     r"attempt\(s\), last error: ", show), show


def test_max_queue_lifetime_bounces(moat_factory, sinks):
    sink, bsink = two_sinks(sinks)
    attempts = rcpt_clock(sink, "451 4.3.0 Temporary failure")
    moat = moat_factory(delivery_conf(
        routes_for(sink, bsink),
        profiles={"Default": {"initial_retry": 1, "max_retry_timeout": 1,
                              "max_retries": 100, "max_queue_lifetime": 3}}))
    t0 = time.time()
    mid = submit(moat, SENDER, "a@dst.example")
    assert bsink.wait_for(1, 12)
    took = bsink.messages[0].received_at - t0
    assert 1.5 <= took <= 6, took
    assert 2 <= len(attempts) <= 5, attempts
    moat.wait_log(r"^Bounced: DCID \d+ MID %d to RID 0 - 5\.4\.7 - Delivery expired "
                  r"\(message too old\)" % mid, T)
    _, info = parse_dsn(dsns(bsink)[0].data)
    assert info["statuses"][0]["Status"] == "5.4.7"
    wait_queue_empty(moat)


def test_connection_refused_retried_then_bounced(moat_factory, sinks, free_port):
    bsink = sinks()
    dead = free_port()
    moat = moat_factory(delivery_conf(
        {"dst.example": ["127.0.0.1:%d" % dead], "src.example": [bsink.hostport]},
        profiles={"Default": {"initial_retry": 1, "max_retry_timeout": 1,
                              "max_retries": 1}}))
    mid = submit(moat, SENDER, "a@dst.example")
    assert bsink.wait_for(1, 10)
    errs = grep(moat, r"^Connection Error: DCID \d+ domain: dst\.example IP: 127\.0\.0\.1 "
                      r"port: %d details: connection refused interface: " % dead)
    assert len(errs) == 2, errs
    in_order(moat, [
        r"^Delayed: DCID \d+ MID %d to RID 0 - 4\.4\.0 - Other network problem " % mid,
        r"^Message %d to RID \[0\] pending till " % mid,
        r"^Bounced: DCID \d+ MID %d to RID 0 - 5\.4\.7 - Delivery retries exceeded" % mid,
    ])
    wait_queue_empty(moat)


def test_destination_down_then_up(moat_factory, sinks, free_port):
    """Ten messages for a host that refuses connections: deferred (one
    Delayed: per recipient and attempt, no storm), and all delivered once
    the host listens again."""
    port = free_port()
    moat = moat_factory(delivery_conf(
        {"dst.example": ["127.0.0.1:%d" % port]},
        profiles={"Default": {"initial_retry": 1, "max_retry_timeout": 1,
                              "max_retries": 30}}))
    with Submitter(moat) as s:
        mids = [s.send(SENDER, "r%d@dst.example" % i, message("down %d" % i))
                for i in range(10)]
    wait_until(lambda: len(grep(moat, r"^Delayed: ")) >= 10, T)
    time.sleep(1.5)
    sink = sinks(port=port)
    assert sink.wait_for(10, 10, what="rcpts"), moat.report()
    for mid in mids:
        moat.wait_log(r"^Message finished MID %d done$" % mid, T)
    assert sorted(sink.rcpts) == sorted("r%d@dst.example" % i for i in range(10))
    errors = grep(moat, r"^Connection Error: ")
    delayed = grep(moat, r"^Delayed: ")
    assert len(errors) <= 10, len(errors)  # about one probe a second
    # Every Delayed: line is for a recipient that was then delivered once.
    assert len(delayed) <= 10 * 5, len(delayed)


def test_down_destination_is_not_hammered(moat_factory, sinks, free_port):
    """While a destination's only host refuses connections, new mail for it
    waits for the retry time instead of a connection attempt each."""
    dead = free_port()
    moat = moat_factory(delivery_conf(
        {"dst.example": ["127.0.0.1:%d" % dead]},
        profiles={"Default": {"initial_retry": 30, "max_retry_timeout": 60,
                              "max_retries": 5}}))
    submit(moat, SENDER, "a@dst.example")
    moat.wait_log(r"^Connection Error: DCID", T)
    for i in range(5):
        submit(moat, SENDER, "b%d@dst.example" % i)
    time.sleep(1)
    assert len(grep(moat, r"^Connection Error: DCID")) == 1
    show = ctl(moat, "hoststatus", "dst.example").stdout
    assert "Host up/down:         down" in show, show


def test_busy_server_does_not_cause_a_connect_storm(moat_factory, sinks):
    """A server that takes one connection and answers 421 to the others
    (too many connections) while moat's first connection is busy: moat
    must not reconnect in a tight loop."""
    sink = sinks(max_connections=1)
    sink.on("DATA_END", delay=2.0, times=1)
    # Each refused attempt counts as a retry: allow enough of them that
    # the test does not depend on which retry meets the busy slot.
    conf = delivery_conf({"dst.example": [sink.hostport]},
                         delivery={"suspended": True},
                         destinations={"dst.example": {"concurrency": 4}},
                         profiles={"Default": {"max_retries": 10}})
    moat = moat_factory(conf)
    with Submitter(moat) as s:
        for i in range(4):
            s.send(SENDER, "r%d@dst.example" % i, message("storm %d" % i))
    _release(moat, conf)
    assert sink.wait_for(4, 15)
    # 4 messages, 1 slot: a handful of refused attempts is fine, hundreds
    # are a storm.
    assert sink.connection_count <= 12, (
        "%d connections for 4 messages; %d Connection Error lines"
        % (sink.connection_count, len(grep(moat, r"^Connection Error"))))


# ---------------------------------------------------------------------------
# 6. DNS

def test_mx_preference_order_and_fallback(moat_factory, sinks, dns_server):
    ip1, ip2 = loopback_addr(), loopback_addr()
    mx1 = sinks(host=ip1, port=25)
    mx2 = sinks(host=ip2, port=25)
    dns = dns_server({"mxpref.example": [
        ("@", "MX", "20 mx2.mxpref.example."),
        ("@", "MX", "10 mx1.mxpref.example."),
        ("mx1", "A", ip1), ("mx2", "A", ip2)]})
    moat = moat_factory(delivery_conf(resolver=dns_resolver(dns)))
    for i in range(3):
        submit(moat, SENDER, "r%d@mxpref.example" % i)
    assert mx1.wait_for(3, T)
    assert mx2.connection_count == 0
    assert grep(moat, r"^New SMTP DCID \d+ interface \S+ address %s port 25$"
                % re.escape(ip1))
    # The preferred MX goes away: the next one gets the mail in the same
    # attempt.
    mx1.stop()
    mid = submit(moat, SENDER, "late@mxpref.example")
    assert mx2.wait_for(1, T)
    moat.wait_log(r"^Message finished MID %d done$" % mid, T)
    assert mx2.messages[0].rcpts == ["late@mxpref.example"]
    in_order(moat, [
        r"^Connection Error: DCID \d+ domain: mxpref\.example IP: %s port: 25 details: "
        r"connection refused " % re.escape(ip1),
        r"^New SMTP DCID \d+ interface \S+ address %s port 25$" % re.escape(ip2),
        r"^Message finished MID %d done$" % mid,
    ])
    assert grep(moat, r"^Delayed:") == []


def test_equal_preference_mx_spread(moat_factory, sinks, dns_server):
    ip1, ip2 = loopback_addr(), loopback_addr()
    a = sinks(host=ip1, port=25)
    b = sinks(host=ip2, port=25)
    dns = dns_server({"spread.example": [
        ("@", "MX", "10 a.spread.example."), ("@", "MX", "10 b.spread.example."),
        ("a", "A", ip1), ("b", "A", ip2)]})
    moat = moat_factory(delivery_conf(
        resolver=dns_resolver(dns),
        destinations={"spread.example": {"messages_per_connection": 1,
                                         "concurrency": 1}}))
    n = 16
    with Submitter(moat) as s:
        for i in range(n):
            s.send(SENDER, "r%d@spread.example" % i, message("spread %d" % i))
    assert wait_until(lambda: len(a.messages) + len(b.messages) >= n, 20)
    # Each connection shuffles equal preferences: both get a share
    # (P(all 16 on one host) = 2^-15).
    assert len(a.messages) >= 1 and len(b.messages) >= 1, (len(a.messages),
                                                           len(b.messages))


def test_implicit_mx_a_record(moat_factory, sinks, dns_server):
    ip = loopback_addr()
    sink = sinks(host=ip, port=25)
    dns = dns_server({"amx.example": [("@", "A", ip)]})
    moat = moat_factory(delivery_conf(resolver=dns_resolver(dns)))
    mid = submit(moat, SENDER, "x@amx.example")
    assert sink.wait_for(1, T)
    moat.wait_log(r"^Message finished MID %d done$" % mid, T)


def test_null_mx_bounces_5_1_10(moat_factory, sinks, dns_server):
    bsink = sinks()
    dns = dns_server({"nullmx.example": [("@", "MX", "0 ."), ("@", "A", "127.0.0.1")]})
    moat = moat_factory(delivery_conf({"src.example": [bsink.hostport]},
                                      resolver=dns_resolver(dns)))
    mid = submit(moat, SENDER, "x@nullmx.example")
    assert bsink.wait_for(1, T)
    in_order(moat, [
        r"^DNS Error nullmx\.example MX - null MX$",
        r"^Bounced: DCID 0 MID %d to RID 0 - 5\.1\.10 - Recipient address has null MX "
        r"\('000', \['DNS Hard Error looking up nullmx\.example \(MX\):  null MX'\]\)$" % mid,
    ])
    _, info = parse_dsn(dsns(bsink)[0].data)
    assert info["statuses"][0]["Status"] == "5.1.10"
    wait_queue_empty(moat)


def test_nxdomain_bounces_5_1_2(moat_factory, sinks, dns_server):
    bsink = sinks()
    dns = dns_server({"other.example": [("@", "A", "127.0.0.1")]})
    dom = "nx%d.example" % random.randint(1000, 9999)
    moat = moat_factory(delivery_conf({"src.example": [bsink.hostport]},
                                      resolver=dns_resolver(dns)))
    mid = submit(moat, SENDER, ["x@" + dom, "y@" + dom])
    assert bsink.wait_for(1, T)
    for rid in (0, 1):
        assert len(grep(moat, r"^Bounced: DCID 0 MID %d to RID %d - 5\.1\.2 - Bad "
                              r"destination host \('000', \['DNS Hard Error looking up "
                              r"%s " % (mid, rid, re.escape(dom)))) == 1
    assert len(dsns(bsink)) == 1
    _, info = parse_dsn(dsns(bsink)[0].data)
    assert [s["Status"] for s in info["statuses"]] == ["5.1.2", "5.1.2"]
    wait_queue_empty(moat)
    st = status_counters(moat)
    assert st["DNS Hard Bounces"] == 2


def test_nxdomain_log_lines(moat_factory, sinks, dns_server):
    dns = dns_server({"other.example": [("@", "A", "127.0.0.1")]})
    dom = "nx%d.example" % random.randint(1000, 9999)
    moat = moat_factory(delivery_conf(resolver=dns_resolver(dns)))
    mid = submit(moat, SENDER, "x@" + dom)
    moat.wait_log(r"^Bounced: DCID 0 MID %d to RID 0 " % mid, T)
    in_order(moat, [
        r"^DNS Error %s MX - NXDomain$" % re.escape(dom),
        r"^Bounced: DCID 0 MID %d to RID 0 - 5\.1\.2 - Bad destination host "
        r"\('000', \['DNS Hard Error looking up %s \(MX\):  NXDomain'\]\)$"
        % (mid, re.escape(dom)),
    ])


def test_persistent_servfail_is_never_a_hard_bounce(moat_factory, sinks, dns_server):
    dom = "sf%d.example" % random.randint(1000, 9999)
    dns = dns_server({"ok.example": [("@", "A", "127.0.0.1")]}, servfail=[dom])
    moat = moat_factory(delivery_conf(
        resolver=dns_resolver(dns),
        profiles={"Default": {"initial_retry": 1, "max_retry_timeout": 1,
                              "max_retries": 50}}))
    mid = submit(moat, SENDER, "x@" + dom)
    # Several retries inside and after libunbound's 5 s SERVFAIL cache.
    wait_until(lambda: len(grep(moat, r"^Delayed: DCID 0 MID %d " % mid)) >= 5
               or grep(moat, r"^Bounced: "), 10)
    assert grep(moat, r"^Bounced: ") == []
    assert grep(moat, r"^DNS Error ") == []
    delayed = grep(moat, r"^Delayed: DCID 0 MID %d to RID 0 " % mid)
    assert len(delayed) >= 5
    assert all("4.4.3 - Directory server failure ('000', ['DNS Temporary Error looking "
               "up %s (MX):  ServFail'])" % dom in d for d in delayed), delayed


def test_servfail_delayed_then_delivered(moat_factory, sinks, dns_server):
    ip = loopback_addr()
    sink = sinks(host=ip, port=25)
    dom = "sf%d.example" % random.randint(1000, 9999)
    dns = dns_server({"ok.example": [("@", "A", "127.0.0.1")]}, servfail=[dom])
    moat = moat_factory(delivery_conf(
        resolver=dns_resolver(dns),
        profiles={"Default": {"initial_retry": 1, "max_retry_timeout": 2,
                              "max_retries": 30}}))
    mid = submit(moat, SENDER, "x@" + dom)
    moat.wait_log(r"^DNS Temporary Failure %s MX - ServFail$" % re.escape(dom), T)
    moat.wait_log(r"^Delayed: DCID 0 MID %d to RID 0 - 4\.4\.3 - Directory server "
                  r"failure \('000', \['DNS Temporary Error looking up %s \(MX\):  "
                  r"ServFail'\]\)$" % (mid, re.escape(dom)), T)
    dns.set_zone(dom, [("@", "MX", "10 mx.%s." % dom), ("mx", "A", ip)], apply=False)
    dns.set_servfail(dom, False)
    # libunbound keeps the SERVFAIL for 5 s; retries come every 1-2 s.
    wait_until(lambda: sink.messages or grep(moat, r"^Bounced: "), 15)
    assert grep(moat, r"^Bounced: ") == []
    assert sink.wait_for(1, 1), moat.report()
    moat.wait_log(r"^Message finished MID %d done$" % mid, T)


def test_dns_timeout_is_temporary(moat_factory, sinks, free_port):
    """A resolver that never answers: DNS Temporary Failure ... timeout."""
    moat = moat_factory(delivery_conf(
        resolver={"resolv_conf": "", "stub_zones": {".": ["127.0.0.1@%d" % free_port()]},
                  "timeout": 1},
        profiles={"Default": {"initial_retry": 30, "max_retry_timeout": 60}}))
    mid = submit(moat, SENDER, "x@slow.example")
    moat.wait_log(r"^DNS Temporary Failure slow\.example MX - (timeout|ServFail)$", T)
    moat.wait_log(r"^Delayed: DCID 0 MID %d to RID 0 - 4\.4\.3 " % mid, T)
    assert grep(moat, r"^Bounced:") == []


def test_routes_usedns_devnull_and_host_name(moat_factory, sinks, dns_server):
    ip = loopback_addr()
    mx = sinks(host=ip, port=25)
    routed = sinks()
    named = sinks()
    dns = dns_server({
        "example.org": [("usedns", "MX", "10 mx.example.org."), ("mx", "A", ip)],
        "example.net": [("relay", "A", "127.0.0.1"),
                        ("mxrelay", "MX", "5 relay.example.net.")],
    })
    moat = moat_factory(delivery_conf({
        ".example.org": [routed.hostport],
        "usedns.example.org": "USEDNS",
        "devnull.example": "/dev/null",
        "named.example": ["relay.example.net:%d" % named.port],
        "viamx.example": ["mxrelay.example.net:%d" % named.port],
    }, resolver=dns_resolver(dns)))
    m1 = submit(moat, SENDER, "a@usedns.example.org")
    m2 = submit(moat, SENDER, "b@other.example.org")
    m3 = submit(moat, SENDER, ["c@devnull.example", "d@devnull.example"])
    m4 = submit(moat, SENDER, "e@named.example")
    m5 = submit(moat, SENDER, "f@viamx.example")
    assert mx.wait_for(1, T) and routed.wait_for(1, T) and named.wait_for(2, T)
    assert mx.messages[0].rcpts == ["a@usedns.example.org"]
    assert routed.messages[0].rcpts == ["b@other.example.org"]
    assert sorted(r for t in named.messages for r in t.rcpts) == [
        "e@named.example", "f@viamx.example"]
    moat.wait_log(r"^MID %d RID \[0, 1\] dropped by SMTP route 'devnull\.example' to "
                  r"/dev/null$" % m3, T)
    for m in (m1, m2, m3, m4, m5):
        moat.wait_log(r"^Message finished MID %d done$" % m, T)
    assert grep(moat, r"Delivery start DCID \d+ MID %d " % m3) == []
    st = status_counters(moat)
    assert st["Deleted Recipients"] == 2
    assert st["Delivered Recipients"] == 4
    hs = ctl(moat, "hoststatus", "named.example").stdout
    assert "named.example -> relay.example.net:%d/pri=0" % named.port in hs, hs


def test_route_changed_to_devnull_drops_queued_mail(moat_factory, sinks):
    """Mail queued for a domain whose route a commit turns into /dev/null
    is dropped (logged, counted as deleted), not delivered."""
    sink = sinks()
    conf = delivery_conf({"dst.example": [sink.hostport]}, delivery={"suspended": True})
    moat = moat_factory(conf)
    mid = submit(moat, SENDER, ["a@dst.example", "b@dst.example"])
    conf = delivery_conf({"dst.example": "/dev/null"})
    moat.configure(conf)
    assert moat.ctl("commit").returncode == 0
    moat.wait_log(r"^MID %d RID \[0, 1\] dropped by SMTP route 'dst\.example' to "
                  r"/dev/null$" % mid, T)
    moat.wait_log(r"^Message finished MID %d done$" % mid, T)
    wait_queue_empty(moat)
    assert sink.connection_count == 0
    assert status_counters(moat)["Deleted Recipients"] == 2


def test_route_priorities_and_unreachable_host(moat_factory, sinks, free_port):
    primary = sinks()
    backup = sinks()
    dead = free_port()
    moat = moat_factory(delivery_conf({"dst.example": [
        "127.0.0.1:%d/pri=10" % backup.port, "127.0.0.1:%d/pri=0" % primary.port]}))
    submit(moat, SENDER, "a@dst.example")
    assert primary.wait_for(1, T)
    assert primary.wait_for(1, T, what="closed")
    assert backup.connection_count == 0
    # The preferred host refuses: the next priority takes the mail at once.
    conf = delivery_conf({"dst.example": [
        "127.0.0.1:%d/pri=10" % backup.port, "127.0.0.1:%d/pri=0" % dead]})
    moat.configure(conf)
    assert moat.ctl("commit").returncode == 0
    mid = submit(moat, SENDER, "b@dst.example")
    assert backup.wait_for(1, T)
    moat.wait_log(r"^Message finished MID %d done$" % mid, T)
    in_order(moat, [
        r"^Connection Error: DCID \d+ domain: dst\.example IP: 127\.0\.0\.1 port: %d "
        r"details: connection refused" % dead,
        r"^Message finished MID %d done$" % mid,
    ])
    assert grep(moat, r"^Delayed:") == []


def test_route_all_and_equal_priority_spread(moat_factory, sinks):
    """ALL catches every domain without a better route; route hosts of
    equal priority are shuffled per connection."""
    a, b, catch = sinks(), sinks(), sinks()
    moat = moat_factory(delivery_conf(
        {"dst.example": [a.hostport, b.hostport], "ALL": [catch.hostport]},
        destinations={"dst.example": {"messages_per_connection": 1, "concurrency": 1}}))
    n = 12
    with Submitter(moat) as s:
        for i in range(n):
            s.send(SENDER, "r%d@dst.example" % i, message("spread %d" % i))
        s.send(SENDER, "x@anything.example", message("catch-all"))
    assert catch.wait_for(1, T)
    assert catch.messages[0].rcpts == ["x@anything.example"]
    assert wait_until(lambda: len(a.messages) + len(b.messages) >= n, 15)
    assert a.messages and b.messages, (len(a.messages), len(b.messages))


def test_route_ipv6_literal(moat_factory, sinks):
    try:
        v6 = sinks(host="::1")
    except OSError:
        pytest.skip("no IPv6 loopback")
    moat = moat_factory(delivery_conf({"dst.example": ["[::1]:%d" % v6.port]}))
    mid = submit(moat, SENDER, "a@dst.example")
    assert v6.wait_for(1, T)
    moat.wait_log(r"^New SMTP DCID \d+ interface ::1 address ::1 port %d$" % v6.port, T)
    moat.wait_log(r"^Message finished MID %d done$" % mid, T)


def test_domain_case_is_ignored(moat_factory, sinks):
    """Recipient domains in any case go to the same destination (routes
    match case-insensitively, the RCPT keeps the sender's case)."""
    sink, bsink = two_sinks(sinks)
    sink.on("RCPT", "550 5.1.1 no such user", match="gone@")
    moat = moat_factory(delivery_conf(routes_for(sink, bsink)))
    mid = submit(moat, SENDER, ["Up@DST.Example", "low@dst.example", "gone@DST.EXAMPLE"])
    assert sink.wait_for(1, T) and bsink.wait_for(1, T)
    assert sink.messages[0].rcpts == ["Up@DST.Example", "low@dst.example"]
    moat.wait_log(r"^Message finished MID %d done$" % mid, T)
    assert len(grep(moat, r"^Delivery start DCID \d+ MID %d " % mid)) == 1


def test_bounce_creates_no_phantom_destination(moat_factory, sinks):
    sink, bsink = two_sinks(sinks)
    sink.on("RCPT", "550 5.1.1 no such user")
    moat = moat_factory(delivery_conf(routes_for(sink, bsink)))
    mid = submit(moat, SENDER, "gone@DST.EXAMPLE")
    assert bsink.wait_for(1, T)
    moat.wait_log(r"^Message finished MID %d done$" % mid, T)
    hosts = [ln.split()[1] for ln in ctl(moat, "tophosts").stdout.splitlines()
             if re.match(r"^\s*\d+ ", ln)]
    assert sorted(hosts) == ["dst.example", "src.example"], hosts


def test_server_recipient_limit_452(moat_factory, sinks):
    """A server taking 2 recipients per transaction (452 4.5.3 for the
    rest): the others go at once in further transactions on the same
    connection (RFC 5321 4.5.3.1.10), not as a retry; none lost."""
    sink = sinks(max_recipients=2)
    moat = moat_factory(delivery_conf({"dst.example": [sink.hostport]}))
    rcpts = ["r%d@dst.example" % i for i in range(5)]
    mid = submit(moat, SENDER, rcpts)
    assert sink.wait_for(5, 15, what="rcpts")
    moat.wait_log(r"^Message finished MID %d done$" % mid, T)
    assert sorted(sink.rcpts) == rcpts
    assert all(len(t.rcpts) <= 2 for t in sink.messages)
    assert len(sink.messages) == 3
    assert sink.connection_count == 1
    assert grep(moat, r"^Delayed: ") == []


# ---------------------------------------------------------------------------
# 7. odd servers

def test_421_mid_session_retried(moat_factory, sinks):
    sink, bsink = two_sinks(sinks)
    sink.on("RCPT", "421 4.3.2 Service shutting down", times=1)
    moat = moat_factory(delivery_conf(routes_for(sink, bsink)))
    mid = submit(moat, SENDER, "a@dst.example")
    assert sink.wait_for(1, T)
    wait_queue_empty(moat)
    assert len(sink.messages) == 1
    assert len(grep(moat, r"^Delayed: DCID \d+ MID %d to RID 0 " % mid)) == 1
    assert dsns(bsink) == []


def test_421_reply_text_in_delayed_line(moat_factory, sinks):
    """The Delayed: line carries the server's 421 reply, as it does for any
    other 4xx reply."""
    sink = sinks()
    sink.on("RCPT", "421 4.3.2 Service shutting down", times=1)
    moat = moat_factory(delivery_conf({"dst.example": [sink.hostport]}))
    mid = submit(moat, SENDER, "a@dst.example")
    moat.wait_log(r"^Delayed: DCID \d+ MID %d to RID 0 " % mid, T)
    line = grep(moat, r"^Delayed: DCID \d+ MID %d to RID 0 " % mid)[0]
    assert "('421', ['4.3.2 Service shutting down'])" in line, line


def test_close_after_mail_retried(moat_factory, sinks):
    sink = sinks()
    sink.close_on("MAIL", times=1)
    moat = moat_factory(delivery_conf({"dst.example": [sink.hostport]}))
    mid = submit(moat, SENDER, "a@dst.example")
    assert sink.wait_for(1, T)
    wait_queue_empty(moat)
    in_order(moat, [
        r"^Delayed: DCID (\d+) MID %d to RID 0 - 4\.4\.2 - Bad connection "
        r"\('000', \['127\.0\.0\.1: EOF'\]\)$" % mid,
        r"^Message finished MID %d done$" % mid,
    ])
    assert len(sink.messages) == 1


def test_close_after_final_dot_redelivered(moat_factory, sinks):
    """No reply after the final dot: the server may have the message, moat
    cannot know: it sends it again (at least once, never zero)."""
    sink = sinks()
    sink.close_on("DATA_END", times=1)
    moat = moat_factory(delivery_conf({"dst.example": [sink.hostport]}))
    orig = message("dot close")
    mid = submit(moat, SENDER, ["a@dst.example", "b@dst.example"], orig)
    assert sink.wait_for(1, T)
    wait_queue_empty(moat)
    assert len(sink.transactions) == 2
    assert sink.transactions[0].reply is None
    assert len(sink.messages) == 1
    received_prefix_ok(sink.messages[0].data, orig)
    assert len(grep(moat, r"^Delayed: DCID \d+ MID %d to RID [01] " % mid)) == 2


def test_greeting_554_next_host_used(moat_factory, sinks):
    bad = sinks(greeting="554 5.7.1 No SMTP service here")
    good = sinks()
    moat = moat_factory(delivery_conf({"dst.example": [
        "127.0.0.1:%d/pri=0" % bad.port, "127.0.0.1:%d/pri=5" % good.port]}))
    mid = submit(moat, SENDER, "a@dst.example")
    assert good.wait_for(1, T)
    moat.wait_log(r"^Message finished MID %d done$" % mid, T)
    in_order(moat, [
        r"^Connection Error: DCID (\d+) domain: dst\.example IP: 127\.0\.0\.1 port: %d "
        r"details: \S.* reason: 554 5\.7\.1 No SMTP service here$" % bad.port,
        r"^Message finished MID %d done$" % mid,
    ])
    assert grep(moat, r"^Delayed:") == []


def test_greeting_554_sends_quit(moat_factory, sinks):
    """RFC 5321 3.1: after a 554 greeting the client SHOULD send QUIT
    (the server waits for it) rather than just drop the connection."""
    bad = sinks(greeting="554 5.7.1 No SMTP service here")
    moat = moat_factory(delivery_conf(
        {"dst.example": [bad.hostport]},
        profiles={"Default": {"initial_retry": 30, "max_retry_timeout": 60}}))
    submit(moat, SENDER, "a@dst.example")
    assert bad.wait_for(1, T, what="closed")
    c = bad.connections[0]
    assert c.quit, (c.closed_by, c.transcript)


def test_greeting_554_only_host_retried_then_bounced(moat_factory, sinks):
    bad = sinks(greeting="554 5.7.1 No SMTP service here")
    bsink = sinks()
    moat = moat_factory(delivery_conf(
        {"dst.example": [bad.hostport], "src.example": [bsink.hostport]},
        profiles={"Default": {"initial_retry": 1, "max_retry_timeout": 1,
                              "max_retries": 1}}))
    mid = submit(moat, SENDER, "a@dst.example")
    assert bsink.wait_for(1, T)
    in_order(moat, [
        r"^Delayed: DCID \d+ MID %d to RID 0 - 4\.4\.0 - Other network problem "
        r"\('000', \['127\.0\.0\.1\[127\.0\.0\.1\]:%d: 554 5\.7\.1 No SMTP service here'\]\)$"
        % (mid, bad.port),
        r"^Bounced: DCID \d+ MID %d to RID 0 - 5\.4\.7 " % mid,
    ])
    wait_queue_empty(moat)


def test_broken_hosts_skipped_in_priority_order(moat_factory, sinks):
    """421 greeting, garbage greeting, EHLO and HELO refused: each host is
    logged as a Connection Error and the next one is tried at once."""
    busy = sinks(greeting="421 4.3.2 Too busy")
    garbage = sinks()
    garbage.on("CONNECT", b"hello there\r\n", action="reply")
    nohelo = sinks(ehlo_reject="550 5.7.1 Go away")
    nohelo.on("HELO", "550 5.7.1 Go away")
    good = sinks()
    moat = moat_factory(delivery_conf({"dst.example": [
        "127.0.0.1:%d/pri=0" % busy.port, "127.0.0.1:%d/pri=1" % garbage.port,
        "127.0.0.1:%d/pri=2" % nohelo.port, "127.0.0.1:%d/pri=3" % good.port]}))
    mid = submit(moat, SENDER, "a@dst.example")
    assert good.wait_for(1, T)
    moat.wait_log(r"^Message finished MID %d done$" % mid, T)
    errs = grep(moat, r"^Connection Error: ")
    assert len(errs) == 3, errs
    assert re.search(r"port: %d details: \S.* reason: 421 4\.3\.2 Too busy$" % busy.port,
                     errs[0]), errs[0]
    assert re.search(r"port: %d details: .*protocol" % garbage.port, errs[1]), errs[1]
    assert re.search(r"port: %d details: .* reason: 550 5\.7\.1 Go away$" % nohelo.port,
                     errs[2]), errs[2]
    assert nohelo.connections[0].verbs[:2] == ["EHLO", "HELO"]
    assert grep(moat, r"^Delayed:") == []


def test_every_logged_dcid_is_closed(moat_factory, sinks):
    """Each 'New SMTP DCID' line gets its 'DCID close', also when the
    server refuses the session at the greeting or EHLO."""
    bad = sinks(greeting="421 4.3.2 Too busy")
    good = sinks()
    moat = moat_factory(delivery_conf({"dst.example": [
        "127.0.0.1:%d/pri=0" % bad.port, "127.0.0.1:%d/pri=5" % good.port]}))
    mid = submit(moat, SENDER, "a@dst.example")
    assert good.wait_for(1, T)
    moat.wait_log(r"^Message finished MID %d done$" % mid, T)
    assert good.wait_for(1, T, what="closed")  # idle connections linger a moment
    time.sleep(0.3)
    new = {m.group(1) for m in (re.search(r"^New SMTP DCID (\d+) ", ln)
                                for ln in moat.log_lines()) if m}
    closed = {m.group(1) for m in (re.search(r"^DCID (\d+) close$", ln)
                                   for ln in moat.log_lines()) if m}
    assert new - closed == set(), moat.log_lines()


def test_timeouts_greeting_command_and_data_done(moat_factory, sinks):
    """A server silent at the greeting: greeting_timeout, next attempt.
    Slow to answer MAIL: command_timeout. Slow after the dot:
    data_done_timeout. Each is retried."""
    slow_greet = sinks()
    slow_greet.on("CONNECT", delay=3, times=1)
    slow_mail = sinks()
    slow_mail.on("MAIL", delay=3, times=1)
    slow_dot = sinks()
    slow_dot.on("DATA_END", delay=3, times=1)
    moat = moat_factory(delivery_conf(
        {"greet.example": [slow_greet.hostport], "dot.example": [slow_dot.hostport],
         "mail.example": [slow_mail.hostport]},
        delivery={"greeting_timeout": 1, "command_timeout": 1, "data_done_timeout": 1}))
    m1 = submit(moat, SENDER, "a@greet.example")
    m2 = submit(moat, SENDER, "b@dot.example")
    m3 = submit(moat, SENDER, "c@mail.example")
    moat.wait_log(r"^Delayed: DCID \d+ MID %d to RID 0 - 4\.4\.2 - Bad connection "
                  r"\('000', \['127\.0\.0\.1: timeout'\]\)$" % m3, T)
    moat.wait_log(r"^Message finished MID %d done$" % m3, 15)
    assert len(slow_mail.messages) == 1
    moat.wait_log(r"^Connection Error: DCID \d+ domain: greet\.example .* details: "
                  r"timeout ", T)
    moat.wait_log(r"^Delayed: DCID \d+ MID %d to RID 0 - 4\.4\.2 - Bad connection "
                  r"\('000', \['127\.0\.0\.1: timeout'\]\)$" % m2, T)
    for m in (m1, m2):
        moat.wait_log(r"^Message finished MID %d done$" % m, 15)
    assert len(slow_greet.messages) == 1
    # The slow server did take the first copy (it answered 250 after moat
    # gave up): the retry is a duplicate, which at-least-once allows.
    assert 1 <= len(slow_dot.messages) <= 2


def test_early_reply_during_data(moat_factory, sinks):
    """A server that answers 554 in the middle of the content and closes."""
    sink, bsink = two_sinks(sinks)
    sink.on("DATA_BODY", "554 5.6.0 Content refused", match="FORBIDDEN", times=1)
    moat = moat_factory(delivery_conf(routes_for(sink, bsink)))
    mid = submit(moat, SENDER, "a@dst.example", message("early", body="ok\r\nFORBIDDEN\r\n"))
    moat.wait_log(r"^(Bounced|Delayed): DCID \d+ MID %d to RID 0 " % mid, T)
    line = grep(moat, r"^(Bounced|Delayed): DCID \d+ MID %d to RID 0 " % mid)[0]
    assert "5.6.0" in line and "554" in line, line
    wait_queue_empty(moat, 10)
    # Whatever was decided, the message is accounted for: a DSN (bounced)
    # or a delivery (retried and accepted).
    assert len(dsns(bsink)) + len(sink.messages) == 1


# ---------------------------------------------------------------------------
# 8. null sender

def test_null_sender_double_bounce(moat_factory, sinks):
    sink, bsink = two_sinks(sinks)
    sink.on("RCPT", "550 5.1.1 no such user")
    moat = moat_factory(delivery_conf(routes_for(sink, bsink)))
    mid = submit(moat, "", "gone@dst.example")
    moat.wait_log(r"^Double bounce: MID %d to RID 0 - 5\.1\.1 - " % mid, T)
    moat.wait_log(r"^Message finished MID %d done$" % mid, T)
    time.sleep(0.5)
    assert grep(moat, r"was generated for bounce") == []
    assert bsink.connection_count == 0
    assert all(t.mail_from != "" or False for t in sink.transactions)
    wait_queue_empty(moat)
    st = status_counters(moat)
    assert st["Gen. Bounce Messages"] == 0


def test_double_bounce_line_shape(moat_factory, sinks):
    sink = sinks()
    sink.on("RCPT", "550 5.1.1 no such user")
    moat = moat_factory(delivery_conf({"dst.example": [sink.hostport]}))
    mid = submit(moat, "", "gone@dst.example")
    m = moat.wait_log(r"^Double bounce: MID %d to RID 0 - (.*)$" % mid, T)
    assert m.group(1) == "5.1.1 - Bad destination mailbox address", m.group(0)


def test_bounce_of_a_bounce_is_a_double_bounce(moat_factory, sinks):
    """The DSN itself cannot be delivered (the sender's domain refuses it):
    it is not bounced again."""
    sink, bsink = two_sinks(sinks)
    sink.on("RCPT", "550 5.1.1 no such user")
    bsink.on("RCPT", "550 5.1.1 sender unknown")
    moat = moat_factory(delivery_conf(routes_for(sink, bsink)))
    mid = submit(moat, SENDER, "gone@dst.example")
    m = moat.wait_log(r"^MID (\d+) was generated for bounce of MID %d$" % mid, T)
    bmid = int(m.group(1))
    moat.wait_log(r"^Double bounce: MID %d to RID 0 - 5\.1\.1 - " % bmid, T)
    wait_queue_empty(moat)
    assert len(grep(moat, r"was generated for bounce")) == 1


def test_send_bounces_no(moat_factory, sinks):
    sink, bsink = two_sinks(sinks)
    sink.on("RCPT", "550 5.1.1 no such user")
    moat = moat_factory(delivery_conf(routes_for(sink, bsink),
                                      profiles={"Default": {"send_bounces": False}}))
    mid = submit(moat, SENDER, "gone@dst.example")
    moat.wait_log(r"^Bounced: DCID \d+ MID %d to RID 0 - 5\.1\.1 " % mid, T)
    moat.wait_log(r"^Message finished MID %d done$" % mid, T)
    time.sleep(0.5)
    assert bsink.connection_count == 0
    assert grep(moat, r"was generated for bounce") == []


def test_large_original_only_headers_in_dsn(moat_factory, sinks):
    sink, bsink = two_sinks(sinks)
    sink.on("RCPT", "550 5.1.1 no such user")
    moat = moat_factory(delivery_conf(routes_for(sink, bsink),
                                      profiles={"Default": {"max_bounce_copy": 2048,
                                                            "bounce_subject": "Undeliverable"}}))
    big = message("big original", body=("y" * 70 + "\r\n") * 100)
    submit(moat, SENDER, "gone@dst.example", big)
    assert bsink.wait_for(1, T)
    dsn = dsns(bsink)[0]
    msg, info = parse_dsn(dsn.data)
    assert msg["Subject"] == "Undeliverable"
    assert info["original"].get_content_type() == "text/rfc822-headers"
    assert b"yyyyyyyy" not in dsn.data
    assert b"Subject: big original" in dsn.data


# ---------------------------------------------------------------------------
# 9. moatctl

def test_suspended_holds_and_commit_releases(moat_factory, sinks):
    sink = sinks()
    conf = delivery_conf({"dst.example": [sink.hostport]},
                         delivery={"suspended": True})
    moat = moat_factory(conf)
    m1 = submit(moat, SENDER, ["a@dst.example", "b@dst.example"])
    m2 = submit(moat, "", "c@dst.example")
    time.sleep(1)
    assert sink.connection_count == 0
    out = moat.ctl("queue", "list")
    assert out.returncode == 0
    lines = out.stdout.splitlines()
    assert re.match(r"^MID\s+Bytes\s+Received\s+Rcpts\s+Sender$", lines[0]), lines
    assert re.match(r"^%d\s+\d+\s+.+\s+2\s+<%s>$" % (m1, re.escape(SENDER)), lines[1]), lines
    assert re.match(r"^%d\s+\d+\s+.+\s+1\s+<>$" % m2, lines[2]), lines
    assert re.match(r"^2 message\(s\), \d+ bytes$", lines[3]), lines
    show = ctl(moat, "queue", "show", m1).stdout
    for pat in (r"^MID:\s+%d$" % m1, r"^Sender:\s+<%s>$" % re.escape(SENDER),
                r"^  RID 0 <a@dst\.example> pending, ready, 0 failed attempt\(s\)$",
                r"^  RID 1 <b@dst\.example> pending, ready, 0 failed attempt\(s\)$",
                r"^Listener:\s+OutgoingMail$"):
        assert re.search(pat, show, re.M), (pat, show)
    _release(moat, conf)
    assert sink.wait_for(2, T)
    wait_queue_empty(moat)
    assert ctl(moat, "queue", "show", m1).returncode != 0


def test_queue_flush_and_retry(moat_factory, sinks):
    sink = sinks()
    refuse = sink.on("RCPT", "451 4.3.0 later")
    other = sinks()
    other_refuse = other.on("RCPT", "451 4.3.0 later")
    moat = moat_factory(delivery_conf(
        {"dst.example": [sink.hostport], "oth.example": [other.hostport]},
        profiles={"Default": {"initial_retry": 300, "max_retry_timeout": 600}}))
    m1 = submit(moat, SENDER, "a@dst.example")
    m2 = submit(moat, SENDER, "b@oth.example")
    moat.wait_log(r"^Message %d to RID \[0\] pending till" % m1, T)
    moat.wait_log(r"^Message %d to RID \[0\] pending till" % m2, T)
    show = ctl(moat, "queue", "show", m1).stdout
    assert re.search(r"RID 0 <a@dst\.example> pending, retry at .+, 1 failed "
                     r"attempt\(s\), last error: 4\.3\.0 later", show), show
    sink.remove(refuse)
    other.remove(other_refuse)
    r = ctl(moat, "queue", "flush", "dst.example")
    assert r.returncode == 0
    assert r.stdout.strip() == "1 recipient(s) for dst.example scheduled for delivery now"
    assert sink.wait_for(1, T)
    time.sleep(0.5)
    assert other.messages == []  # only the flushed domain
    r = ctl(moat, "queue", "retry", m2)
    assert r.returncode == 0 and "1 job(s) scheduled" in r.stdout, r.stdout
    assert other.wait_for(1, T)
    wait_queue_empty(moat)
    r = ctl(moat, "queue", "retry", m2)
    assert r.returncode != 0 and "not in the queue" in r.stdout


def test_queue_delete_and_bounce(moat_factory, sinks):
    sink, bsink = two_sinks(sinks)
    conf = delivery_conf(routes_for(sink, bsink), delivery={"suspended": True})
    moat = moat_factory(conf)
    m1 = submit(moat, SENDER, ["a@dst.example", "b@dst.example"])
    m2 = submit(moat, SENDER, "c@dst.example")
    r = ctl(moat, "queue", "delete", m1)
    assert r.returncode == 0 and r.stdout.strip() == "MID %d: 2 recipient(s) deleted" % m1
    in_order(moat, [r"^Deleted: MID %d to \[0, 1\] \(deleted by administrator\)$" % m1,
                    r"^Message finished MID %d aborted$" % m1])
    r = ctl(moat, "queue", "bounce", m2)
    assert r.returncode == 0 and r.stdout.strip() == "MID %d: 1 recipient(s) bounced" % m2
    moat.wait_log(r"^Bounced: DCID 0 MID %d to RID 0 - 5\.3\.0 - Bounced by "
                  r"administrator " % m2, T)
    moat.wait_log(r"^MID \d+ was generated for bounce of MID %d$" % m2, T)
    assert ctl(moat, "queue", "delete", m1).returncode != 0
    assert ctl(moat, "queue", "show", "abc").returncode != 0
    # Only the DSN remains; release delivery: it goes out, nothing else.
    _release(moat, conf)
    assert bsink.wait_for(1, T)
    _, info = parse_dsn(dsns(bsink)[0].data)
    assert info["statuses"][0]["Status"] == "5.3.0"
    time.sleep(0.5)
    assert sink.transactions == []
    wait_queue_empty(moat)
    st = status_counters(moat)
    assert st["Deleted Recipients"] == 2


def test_moatctl_passes_arguments(moat_factory, sinks):
    sink = sinks()
    conf = delivery_conf({"dst.example": [sink.hostport]}, delivery={"suspended": True})
    moat = moat_factory(conf)
    mid = submit(moat, SENDER, "a@dst.example")
    r = moat.ctl("queue", "show", mid)
    assert r.returncode == 0 and re.search(r"^MID:\s+%d$" % mid, r.stdout, re.M), (
        r.returncode, r.stdout, r.stderr)
    r = moat.ctl("hoststatus", "dst.example")
    assert r.returncode == 0 and "Host mail status for: dst.example" in r.stdout
    r = moat.ctl("queue", "flush", "dst.example")
    assert r.returncode == 0
    r = moat.ctl("queue", "show")  # MID missing
    assert r.returncode == 2 and "usage: moatctl queue show MID" in r.stderr, r.stderr
    r = moat.ctl("status", "extra")
    assert r.returncode == 2


def test_tophosts_and_hoststatus(moat_factory, sinks):
    sink, bsink = two_sinks(sinks)
    sink.on("RCPT", "550 5.1.1 no such user", match="bad@")
    sink.on("RCPT", "451 4.3.0 later", match="soft@", times=1)
    moat = moat_factory(delivery_conf(routes_for(sink, bsink)))
    submit(moat, SENDER, ["ok1@dst.example", "ok2@dst.example", "bad@dst.example",
                          "soft@dst.example"])
    assert sink.wait_for(3, T, what="rcpts")
    wait_queue_empty(moat)
    assert wait_until(lambda: status_counters(moat)["Current Outbound Conn."] == 0, T)
    r = moat.ctl("tophosts")
    assert r.returncode == 0
    lines = r.stdout.splitlines()
    assert lines[0].startswith("Status as of:")
    hdr = next(ln for ln in lines if "Recipient Host" in ln)
    assert re.match(r"^\s*#\s+Recipient Host\s+Active Recip\.\s+Conn\. Out\s+"
                    r"Deliv\. Recip\.\s+Soft Bounced\s+Hard Bounced$", hdr), hdr
    rows = {ln.split()[1]: ln.split() for ln in lines if re.match(r"^\s*\d+ ", ln)}
    assert rows["dst.example"][2:] == ["0", "0", "3", "1", "1"], rows
    assert rows["src.example"][2:] == ["0", "0", "1", "0", "0"], rows
    r = ctl(moat, "tophosts", "delivered")
    first = [ln for ln in r.stdout.splitlines() if re.match(r"^\s*1 ", ln)][0]
    assert "dst.example" in first and "sorted by delivered" in r.stdout
    r = ctl(moat, "tophosts", "bogus")
    assert r.returncode != 0
    hs = ctl(moat, "hoststatus", "DST.example")
    assert hs.returncode == 0
    for pat in (r"^Host mail status for: dst\.example$", r"^Host up/down:\s+up$",
                r"^  Soft Bounced Events\s+1$", r"^    Hard Bounced Recipients\s+1$",
                r"^    Delivered Recipients\s+3$", r"^  Active Recipients\s+0$",
                r"^  Current Outbound Connections\s+0$",
                r"^SMTP routes for this host: dst\.example -> 127\.0\.0\.1:%d/pri=0$"
                % sink.port,
                r"^Bounce profile:\s+Default \(max retries 3, "):
        assert re.search(pat, hs.stdout, re.M), (pat, hs.stdout)
    r = ctl(moat, "hoststatus", "nowhere.example")
    assert r.returncode != 0 and "No record of host: nowhere.example" in r.stdout
    st = status_counters(moat)
    assert st["Delivered Recipients"] == 4  # 3 + the DSN
    assert st["Soft Bounced Events"] == 1
    assert st["Hard Bounced Recipients"] == 1
    assert st["Current Outbound Conn."] == 0
    assert st["Active Recipients"] == 0


def test_queue_delete_during_delivery(moat_factory, sinks):
    """queue delete while the message is being delivered: the delivery in
    flight decides; a 4xx outcome then deletes instead of retrying."""
    sink = sinks()
    sink.on("DATA_END", "451 4.3.0 later", delay=1.5, times=1)
    moat = moat_factory(delivery_conf({"dst.example": [sink.hostport]}))
    mid = submit(moat, SENDER, "a@dst.example")
    moat.wait_log(r"^Delivery start DCID \d+ MID %d " % mid, T)
    r = ctl(moat, "queue", "delete", mid)
    assert r.returncode == 0 and "delivery in progress" in r.stdout, r.stdout
    moat.wait_log(r"^Deleted: MID %d to \[0\] \(deleted by administrator\)$" % mid, T)
    moat.wait_log(r"^Message finished MID %d (aborted|done)$" % mid, T)
    wait_queue_empty(moat)
    time.sleep(1.5)
    assert sink.messages == []
    assert grep(moat, r"^Delayed:") == []


def test_delete_while_connecting_is_honoured(moat_factory, sinks):
    """queue delete while the connection for the message is still being
    set up (slow greeting): nothing was sent yet, so nothing is sent."""
    sink = sinks()
    sink.on("CONNECT", delay=1.5, times=1)
    moat = moat_factory(delivery_conf({"dst.example": [sink.hostport]}))
    mid = submit(moat, SENDER, "a@dst.example")
    assert sink.wait_for(1, T, what="connections")
    r = ctl(moat, "queue", "delete", mid)
    assert r.returncode == 0, r.stdout
    moat.wait_log(r"^Deleted: MID %d to \[0\] \(deleted by administrator\)$" % mid, T)
    time.sleep(2.5)
    assert sink.transactions == [], "deleted message delivered"
    wait_queue_empty(moat)


def test_delete_during_delivery_logs_aborted(moat_factory, sinks):
    """A message whose last recipients an administrator deleted is
    'Message finished ... aborted' (docs/maillog.md), whether or not a
    delivery was in flight when the command came."""
    sink = sinks()
    sink.on("DATA_END", "451 4.3.0 later", delay=1.5, times=1)
    moat = moat_factory(delivery_conf({"dst.example": [sink.hostport]}))
    mid = submit(moat, SENDER, "a@dst.example")
    moat.wait_log(r"^Delivery start DCID \d+ MID %d " % mid, T)
    ctl(moat, "queue", "delete", mid)
    m = moat.wait_log(r"^Message finished MID %d (aborted|done)$" % mid, T)
    assert m.group(1) == "aborted"


def test_sigterm_during_delivery_keeps_recipient(moat_factory, sinks):
    """A clean stop while a delivery waits for its reply: the recipient
    stays queued and goes out after the restart."""
    sink = sinks()
    sink.on("DATA_END", "451 4.3.0 later", delay=3, times=1)
    moat = moat_factory(delivery_conf({"dst.example": [sink.hostport]}))
    mid = submit(moat, SENDER, "a@dst.example")
    moat.wait_log(r"^Delivery start DCID \d+ MID %d " % mid, T)
    assert moat.stop() == 0
    moat.start()
    assert sink.wait_for(1, T)
    moat.wait_log(r"^Message finished MID %d done$" % mid, T)


def test_quit_without_reply_at_shutdown(moat_factory, sinks):
    """A server that never answers QUIT, then moatd is stopped: it exits
    cleanly (status 0, no leak reports under ASan)."""
    sink = sinks()
    sink.on("QUIT", delay=20)
    moat = moat_factory(delivery_conf({"dst.example": [sink.hostport]}))
    mid = submit(moat, SENDER, "a@dst.example")
    assert sink.wait_for(1, T)
    moat.wait_log(r"^Message finished MID %d done$" % mid, T)
    time.sleep(0.3)
    rc = moat.stop()
    assert rc == 0, moat.stderr_text()[-3000:]


# ---------------------------------------------------------------------------
# 10. Postfix as the next hop

@pytest.mark.postfix
@pytest.mark.skipif(not postfix_available(), reason="needs root and Postfix")
def test_postfix_next_hop(moat_factory, postfix_peer):
    pf = postfix_peer("hold")
    moat = moat_factory(delivery_conf({"dst.example": ["127.0.0.1:%d" % pf.port]}))
    n = 5
    with Submitter(moat) as s:
        mids = [s.send(SENDER, ["a%d@dst.example" % i, "b%d@dst.example" % i],
                       message("to postfix %d" % i)) for i in range(n)]
    for mid in mids:
        moat.wait_log(r"^Message finished MID %d done$" % mid, 20)
    assert pf.wait_count(n, timeout=20) == n
    log = pf.maillog()
    assert log.count("from=<%s>" % SENDER) >= n
    assert log.count("Client host triggers HOLD action") == n
    for i, mid in enumerate(mids):
        resp = grep(moat, r"^MID %d RID \[0, 1\] Response '2\.0\.0 Ok: queued as "
                          r"([0-9A-Za-z]+)'$" % mid)
        assert resp, grep(moat, r"^MID %d " % mid)
        qid = re.search(r"queued as ([0-9A-Za-z]+)'$", resp[0]).group(1)
        # The queued file, as Postfix stored it: our headers and body.
        r = subprocess.run(["postcat", "-c", str(pf.dir / "etc"), "-bh", "-q", qid],
                           capture_output=True, text=True, timeout=20)
        assert r.returncode == 0, r.stderr
        assert "Subject: to postfix %d" % i in r.stdout
        assert re.search(r"^Received: from client\.test\.example", r.stdout, re.M)
        assert "body line" in r.stdout
    wait_queue_empty(moat)
