"""Crash safety of delivery: moatd is killed with SIGKILL while it delivers
a few hundred messages (some recipients deferred with 4xx, some refused
with 5xx so that DSNs are being made), restarted on the same spool, and
every recipient whose message was accepted (250) is accounted for:

- delivered at the sink at least once (matched by Message-ID and
  recipient), or, for the refused ones, reported to the sender by a DSN
  at least once;
- nothing lost, the queue empty at the end;
- duplicates only for deliveries that were in flight when the process
  died (the sink had accepted the copy, moatd had not yet recorded it):
  counted, bounded by what can be in flight, and reported.
"""

import re
import smtplib
import threading
import time
from collections import Counter

from delivery_fixtures import (  # noqa: F401  (fixtures)
    CLIENT, delivery_conf, message, parse_dsn, sinks, wait_queue_empty,
    wait_until)

SENDER = "sender@src.example"
N_MESSAGES = 400
KILL_AFTER = 200        # sink messages accepted before the kill
CONCURRENCY = 8
HARD_EVERY = 10         # every 10th message also has a refused recipient
SOFT_EVERY = 3          # every 3rd message has a recipient deferred once


def rcpts_for(i):
    r = ["ok%d@dst.example" % i]
    if i % SOFT_EVERY == 0:
        r.append("soft%d@dst.example" % i)
    if i % HARD_EVERY == 0:
        r.append("hard%d@dst.example" % i)
    return r


class Feeder(threading.Thread):
    """Submits the messages over two sessions, in order, recording which
    ones got their 250 (accepted) before the connection broke."""

    def __init__(self, port, indices):
        super().__init__(daemon=True)
        self.port = port
        self.indices = indices
        self.accepted = {}     # i -> (mid, message-id, rcpts)
        self.error = None
        self.unexpected = None

    def run(self):
        try:
            s = smtplib.SMTP("127.0.0.1", self.port, local_hostname=CLIENT, timeout=15)
            s.ehlo()
            for i in self.indices:
                msgid = "<crash-%d@client.test.example>" % i
                data = message("crash %d" % i, msgid=msgid,
                               body="message %d\r\n.dotted line %d\r\n" % (i, i))
                rc = rcpts_for(i)
                code, resp = s.mail(SENDER)
                if code != 250:
                    raise AssertionError((code, resp))
                for r in rc:
                    code, resp = s.rcpt(r)
                    if code != 250:
                        raise AssertionError((code, resp))
                code, resp = s.data(data)
                if code != 250:
                    raise AssertionError((code, resp))
                mid = int(re.search(rb"Message (\d+) accepted", resp).group(1))
                self.accepted[i] = (mid, msgid, rc)
            s.quit()
        except (OSError, smtplib.SMTPServerDisconnected) as e:
            self.error = e  # moatd was killed under us: expected
        except Exception as e:  # noqa: BLE001  (reported by the test)
            self.error = e
            self.unexpected = e


def test_kill9_during_delivery_loses_nothing(moat_factory, sinks):
    sink = sinks()
    bsink = sinks()
    # Deferred once each (the first 40 "soft" RCPTs); refused always.
    sink.on("RCPT", "451 4.3.0 Try later", match="<soft", times=40)
    sink.on("RCPT", "550 5.1.1 No such user", match="<hard")
    # A little time after the dot widens the in-flight window.
    sink.on("DATA_END", delay=0.01)
    moat = moat_factory(delivery_conf(
        {"dst.example": [sink.hostport], "src.example": [bsink.hostport]},
        destinations={"dst.example": {"concurrency": CONCURRENCY,
                                      "messages_per_connection": 20}},
        profiles={"Default": {"initial_retry": 1, "max_retry_timeout": 1,
                              "max_retries": 30}}))
    port = moat.ports["OutgoingMail"]
    feeders = [Feeder(port, range(k, N_MESSAGES, 2)) for k in (0, 1)]
    t0 = time.monotonic()
    for f in feeders:
        f.start()
    # Distinct messages, not transactions: a recipient deferred once comes
    # back in a transaction of its own, so transactions run ahead of the
    # messages moat had accepted (by 19 in one loaded run).
    def distinct():
        return len({t.message["Message-ID"] for t in sink.messages})
    assert sink.wait_until(lambda: distinct() >= KILL_AFTER, 30), \
        "only %d delivered" % distinct()
    moat.kill9()
    t_kill = time.time()
    took = time.monotonic() - t0
    killed_log = moat.log_lines()
    for f in feeders:
        f.join(20)
        assert not f.is_alive()
        assert f.unexpected is None, repr(f.unexpected)
    accepted = {}
    for f in feeders:
        accepted.update(f.accepted)
    # Each message at the sink was accepted first; the feeders may not
    # have read the last few 250 replies when the kill came.
    assert len(accepted) >= KILL_AFTER - CONCURRENCY
    at_kill = len(sink.messages)

    moat.start()
    recovered = moat.wait_log(r"^Spool \S+ recovered: (\d+) message\(s\) queued", 5,
                              since=len(killed_log))

    # Everything accepted must arrive: the good recipients at the sink, a
    # DSN for every message with a refused one.
    want = Counter()
    want_dsn = set()
    for i, (mid, msgid, rc) in accepted.items():
        for r in rc:
            if r.startswith("hard"):
                want_dsn.add(msgid)
            else:
                want[(msgid, r)] += 1

    def delivered():
        got = Counter()
        for t in sink.messages:
            m = re.search(rb"^Message-ID: (<[^>]+>)", t.data, re.M)
            if m:
                for r in t.rcpts:
                    got[(m.group(1).decode(), r)] += 1
        return got

    def dsn_for():
        got = Counter()
        for t in bsink.messages:
            if t.mail_from != "":
                continue
            _, info = parse_dsn(t.data)
            orig = info["original"]
            m = re.search(r"^Message-ID: (<[^>]+>)", str(orig), re.M) if orig else None
            if m:
                got[m.group(1)] += 1
        return got

    ok = wait_until(lambda: all(delivered()[k] >= 1 for k in want)
                    and all(dsn_for()[k] >= 1 for k in want_dsn), 40, step=0.2)
    got = delivered()
    dsn_got = dsn_for()
    missing = [k for k in want if got[k] == 0]
    missing_dsn = [k for k in want_dsn if dsn_got[k] == 0]
    assert ok and not missing and not missing_dsn, (
        "lost after kill -9: %d deliveries %r..., %d DSNs %r...\n%s"
        % (len(missing), missing[:5], len(missing_dsn), missing_dsn[:5],
           moat.report(40)))
    wait_queue_empty(moat, 15)

    # Refused recipients never reached the sink's accepted messages.
    assert not any(r.startswith("hard") for t in sink.messages for r in t.rcpts)

    # Duplicates: only copies in flight at the kill. Such a copy was
    # accepted by the sink shortly before the kill, and moatd's pre-kill log
    # has no "Message done" covering it.
    dups = {k: n for k, n in got.items() if n > 1}
    done_before = set()
    mid_of = {msgid: mid for (mid, msgid, _) in accepted.values()}
    rid_of = {}
    for i, (mid, msgid, rc) in accepted.items():
        for rid, r in enumerate(rc):
            rid_of[(msgid, r)] = rid
    for ln in killed_log:
        m = re.match(r"^Message done DCID \d+ MID (\d+) to RID \[([\d, ]+)\]$", ln)
        if m:
            for rid in m.group(2).split(", "):
                done_before.add((int(m.group(1)), int(rid)))
    first_copy = {}
    for t in sink.messages:
        m = re.search(rb"^Message-ID: (<[^>]+>)", t.data, re.M)
        for r in t.rcpts:
            first_copy.setdefault((m.group(1).decode(), r), t.received_at)
    late = []
    logged_done = []
    for k in dups:
        if first_copy[k] < t_kill - 2.0:
            late.append(k)
        if (mid_of[k[0]], rid_of[k]) in done_before:
            logged_done.append(k)
    dup_dsn = {k: n for k, n in dsn_got.items() if n > 1}
    print("\nkill -9 after %.1fs: %d messages accepted, %d delivered at the kill "
          "(%d Delayed:, %d Bounced: lines), %s recovered; %d recipient(s) "
          "delivered twice (in flight at the kill), %d DSN(s) sent twice; %d of "
          "the duplicates had 'Message done' logged before the kill"
          % (took, len(accepted), at_kill,
             sum(1 for ln in killed_log if ln.startswith("Delayed:")),
             sum(1 for ln in killed_log if ln.startswith("Bounced:")),
             recovered.group(1), len(dups), len(dup_dsn), len(logged_done)))
    # In flight: at most one transaction per connection (<= 3 recipients).
    assert len(dups) <= CONCURRENCY * 3, dups
    assert late == [], "duplicates of copies accepted long before the kill: %r" % late
    assert all(n == 2 for n in dups.values()), dups
    assert all(n <= 2 for n in dup_dsn.values()), dup_dsn
    # A recipient recorded as delivered is never sent again, except in the
    # instant between the log line and the spool record.
    assert len(logged_done) <= 1, logged_done
    # No further surprises in the log after the restart.
    after = moat.log_lines()[len(killed_log):]
    assert not [ln for ln in after if ln.startswith(("Warning", "Critical"))], after[:20]
