"""Destination controls seen at the next hop: the recipient limit (N
recipients per window, observed over a window of a few seconds), limits
per MX IP address, and "Use Default" (a row's unset keys come from the
Default row). Concurrency and messages per connection at the sink are in
test_delivery.py (test_concurrency_limit_with_slow_sink,
test_connection_reuse_messages_per_connection).

Every next hop is a FaultSink on 127.0.0.x; waits are bounded.
"""

import re
import time

from conftest import Bare
from delivery_fixtures import (  # noqa: F401  (fixtures)
    Submitter, delivery_conf, grep, message, sinks, submit, wait_queue_empty,
    wait_until)

SENDER = "sender@src.example"
T = 20


def _release(moat, conf):
    conf["delivery"]["suspended"] = False
    moat.configure(conf)
    r = moat.ctl("commit")
    assert r.returncode == 0, r.stdout + r.stderr


def _windows(times, period):
    """Greedy windows as moat opens them: a window starts with the first
    recipient sent after the previous one ended."""
    out, start = [], None
    for t in sorted(times):
        if start is None or t >= start + period:
            start = t
            out.append([])
        out[-1].append(t)
    return out


def test_recipient_limit_window(moat_factory, sinks):
    """recipient_limit = 3 per 2 s: seven one-recipient messages go as
    3 + 3 + 1, each group a window apart; the held ones are logged as
    pending, and no attempt is charged to them."""
    sink = sinks()
    conf = delivery_conf({"dst.example": [sink.hostport]},
                         delivery={"suspended": True},
                         destinations={"dst.example": {
                             "recipient_limit": 3, "recipient_period": Bare("2s")}})
    moat = moat_factory(conf)
    with Submitter(moat) as s:
        mids = [s.send(SENDER, "r%d@dst.example" % i, message("rl %d" % i))
                for i in range(7)]
    _release(moat, conf)
    assert sink.wait_for(7, T)
    times = sorted(t.received_at for t in sink.messages)
    # Never more than 3 within any 2-second span that starts a window.
    for i, t in enumerate(times):
        assert len([u for u in times[i:] if u < t + 1.9]) <= 3, times
    groups = _windows(times, 1.9)
    assert [len(g) for g in groups] == [3, 3, 1], times
    assert times[-1] - times[0] >= 3.5, times
    held = grep(moat, r"^Message \d+ to RID \[0\] pending till ")
    assert len(held) >= 4, held
    assert not grep(moat, r"^Delayed: ")
    assert sorted(int(m) for ln in grep(moat, r"^Delivery start") for m in
                  re.findall(r"MID (\d+)", ln)) == mids
    wait_queue_empty(moat)


def test_recipient_limit_splits_a_message(moat_factory, sinks):
    """A message with more recipients than the window has left is split:
    five recipients under a limit of 2 per 2 s go as 2 + 2 + 1."""
    sink = sinks()
    conf = delivery_conf({"dst.example": [sink.hostport]},
                         destinations={"dst.example": {
                             "recipient_limit": 2, "recipient_period": Bare("2s")}})
    moat = moat_factory(conf)
    rcpts = ["r%d@dst.example" % i for i in range(5)]
    with Submitter(moat) as s:
        s.send(SENDER, rcpts, message("split"))
    assert wait_until(lambda: sum(len(t.rcpts) for t in sink.messages) == 5,
                      timeout=T)
    assert [len(t.rcpts) for t in sink.messages] == [2, 2, 1]
    got = [r for t in sink.messages for r in t.rcpts]
    assert sorted(got) == rcpts
    times = [t.received_at for t in sink.messages]
    assert times[1] - times[0] >= 1.5 and times[2] - times[1] >= 1.5, times
    wait_queue_empty(moat)


def test_recipient_limit_counts_per_domain(moat_factory, sinks):
    """The limit of a ".parent" row counts for each matching domain on its
    own; other domains are not held."""
    sink = sinks()
    conf = delivery_conf({".dst.example": [sink.hostport],
                          "free.example": [sink.hostport]},
                         delivery={"suspended": True},
                         destinations={".dst.example": {
                             "recipient_limit": 1, "recipient_period": Bare("60s")}})
    moat = moat_factory(conf)
    with Submitter(moat) as s:
        for dom in ("a.dst.example", "a.dst.example", "b.dst.example",
                    "free.example", "free.example"):
            s.send(SENDER, "u@" + dom, message(dom))
    _release(moat, conf)
    assert sink.wait_for(4, T)
    time.sleep(0.5)
    got = sorted(t.rcpts[0] for t in sink.messages)
    assert got == ["u@a.dst.example", "u@b.dst.example", "u@free.example",
                   "u@free.example"], got
    assert len(grep(moat, r"^Message \d+ to RID \[0\] pending till ")) == 1


def test_commit_releases_held_recipients(moat_factory, sinks):
    """Recipients held by a recipient limit are weighed again at a commit:
    with the limit removed they go at once, not when the window ends."""
    sink = sinks()
    conf = delivery_conf({"dst.example": [sink.hostport]},
                         delivery={"suspended": True},
                         destinations={"dst.example": {
                             "recipient_limit": 1, "recipient_period": Bare("60min")}})
    moat = moat_factory(conf)
    with Submitter(moat) as s:
        for i in range(3):
            s.send(SENDER, "r%d@dst.example" % i, message("held %d" % i))
    _release(moat, conf)
    assert sink.wait_for(1, T)
    assert wait_until(lambda: len(grep(moat, r"pending till")) >= 2, timeout=T)
    assert len(sink.messages) == 1
    del conf["destination", "dst.example"]["recipient_limit"]
    moat.configure(conf)
    assert moat.ctl("commit").returncode == 0
    assert sink.wait_for(3, T)
    wait_queue_empty(moat)


def test_recipient_limit_zero_opens_nothing(moat_factory, sinks):
    """recipient_limit = 0 (the appliance allows it): nothing is sent and,
    per MX IP too, no connection is opened just to hold the mail."""
    sink = sinks()
    conf = delivery_conf({"dst.example": [sink.hostport]},
                         destinations={"dst.example": {
                             "recipient_limit": 0, "limits_per": "mx_ip",
                             "recipient_period": Bare("2s")}})
    moat = moat_factory(conf)
    submit(moat, SENDER, "r@dst.example")
    time.sleep(3)
    assert sink.connection_count == 0
    assert grep(moat, r"^Message \d+ to RID \[0\] pending till ")


def _peak_per_sink(sink_list, n, timeout=T):
    deadline = time.monotonic() + timeout
    while sum(len(s.messages) for s in sink_list) < n and time.monotonic() < deadline:
        time.sleep(0.05)
    return [s.peak_connections for s in sink_list]


def test_limits_per_mx_ip(moat_factory, sinks):
    """limits_per = mx_ip: concurrency 1 counts for each address, so two
    MX addresses carry one connection each at once; limits_per = domain:
    one connection in all."""
    a = sinks(host="127.0.0.1")
    b = sinks(host="127.0.0.2", port=a.port)
    for s in (a, b):
        s.on("DATA_END", delay=0.4)
    n = 8
    hosts = ["127.0.0.1:%d" % a.port, "127.0.0.2:%d" % a.port]
    conf = delivery_conf({"dst.example": hosts}, delivery={"suspended": True},
                         destinations={"dst.example": {
                             "concurrency": 1, "messages_per_connection": 2,
                             "limits_per": "mx_ip"}})
    moat = moat_factory(conf)
    with Submitter(moat) as s:
        for i in range(n):
            s.send(SENDER, "r%d@dst.example" % i, message("ip %d" % i))
    _release(moat, conf)
    _peak_per_sink([a, b], n)
    assert len(a.messages) + len(b.messages) == n
    # One connection at a time per address (a connection counts until
    # moat saw it close; the sink notes the close a moment later).
    for s in (a, b):
        own = sorted((c.opened_at, c.closed_at or time.time())
                     for c in s.connections)
        assert own, "address %s not used" % s.host
        assert all(y[0] >= x[1] - 0.1 for x, y in zip(own, own[1:])), own
    # Both addresses worked at the same time at some point.
    spans = [(c.opened_at, c.closed_at or time.time())
             for s in (a, b) for c in s.connections]
    overlap = any(x[0] < y[1] and y[0] < x[1]
                  for i, x in enumerate(spans) for y in spans[i + 1:]
                  if x is not y)
    assert overlap, spans
    wait_queue_empty(moat)

    # The same per domain: one connection at a time over both addresses.
    for s in (a, b):
        s.clear_records()
    conf["destination", "dst.example"]["limits_per"] = "domain"
    conf["delivery"]["suspended"] = True
    moat.configure(conf)
    assert moat.ctl("commit").returncode == 0
    with Submitter(moat) as s:
        for i in range(4):
            s.send(SENDER, "d%d@dst.example" % i, message("dom %d" % i))
    t0 = time.time()  # the first run's connections may still be closing
    _release(moat, conf)
    _peak_per_sink([a, b], 4)
    spans = sorted((c.opened_at, c.closed_at or time.time())
                   for s in (a, b) for c in s.connections if c.opened_at >= t0)
    assert all(y[0] >= x[1] - 0.1 for x, y in zip(spans, spans[1:])), spans
    wait_queue_empty(moat)


def test_row_takes_unset_keys_from_default(moat_factory, sinks):
    """A row that sets only tls keeps the Default row's concurrency 1
    ("Use Default"), whichever comes first in the file."""
    sink = sinks()
    sink.on("DATA_END", delay=0.3)
    conf = delivery_conf({"dst.example": [sink.hostport]},
                         delivery={"suspended": True},
                         destinations={"dst.example": {"tls": "no"},
                                       "Default": {"concurrency": 1}})
    moat = moat_factory(conf)
    with Submitter(moat) as s:
        for i in range(4):
            s.send(SENDER, "r%d@dst.example" % i, message("inh %d" % i))
    _release(moat, conf)
    assert sink.wait_for(4, T)
    assert sink.peak_connections == 1
    wait_queue_empty(moat)


# --------------------------------------------------------------------------
# moatctl destconfig

DEST_CONF = {
    "Default": {"concurrency": 100, "tls": "preferred",
                "bounce_verification": "yes"},
    "example.com": {"tls": "required"},
    ".example.org": {"recipient_limit": 50, "recipient_period": Bare("5min"),
                     "limits_per": "mx_ip", "ip_preference": "ipv4_only",
                     "bounce_profile": "Slow"},
}


def _dest_moat(moat_factory):
    conf = delivery_conf({}, destinations=DEST_CONF,
                         profiles={"Slow": {"max_retries": 5}})
    return moat_factory(conf)


def test_destconfig_list(moat_factory):
    moat = _dest_moat(moat_factory)
    r = moat.ctl("destconfig", "list")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    head = lines[1].split()
    assert head == ["Domain", "Limiting", "TLS", "Verification", "Profile",
                    "Preference"], lines
    rows = {ln.split()[0]: ln for ln in lines[2:] if ln.strip()}
    assert re.match(r"example\.com\s+Default\s+Required\s+Default\s+Default\s+Default$",
                    rows["example.com"]), rows
    assert re.match(r"\.example\.org\s+On\s+Default\s+Default\s+Slow\s+IPv4 Only$",
                    rows[".example.org"]), rows
    assert re.match(r"\(Default\)\s+On\s+Preferred\s+On\s+\(Default\)\s+Prefer IPv6$",
                    rows["(Default)"]), rows
    assert "There are currently 2 entries configured." in r.stdout


def test_destconfig_detail(moat_factory):
    moat = _dest_moat(moat_factory)
    r = moat.ctl("destconfig", "detail", "example.com")
    assert r.returncode == 0, r.stderr
    assert "    TLS Support: Required\n" in r.stdout
    assert "    Maximum Concurrent Connections: Default (100)\n" in r.stdout
    assert "    Bounce Verification Address Tagging: Default (Yes)\n" in r.stdout
    r = moat.ctl("destconfig", "detail", "a.example.org")
    assert "has no row of its own" in r.stdout
    assert "    Recipient Limit: 50 per 5 minutes\n" in r.stdout
    assert "    Apply Limits Per Destination: Each Mail Exchanger (MX Record) IP address\n" \
        in r.stdout
    r = moat.ctl("destconfig", "detail")
    assert r.stdout.count("TLS Support:") == 3
    r = moat.ctl("destconfig", "detail", "--help")
    assert "usage: moatctl destconfig detail [DOMAIN]" in r.stdout


def test_destconfig_export_import_round_trip(moat_factory, tmp_path):
    moat = _dest_moat(moat_factory)
    out = tmp_path / "dest.conf"
    r = moat.ctl("destconfig", "export", str(out))
    assert r.returncode == 0, r.stderr
    first = out.read_text()
    assert 'destination "example.com" {\n    tls = required;\n}\n' in first
    assert 'destination "Default" {\n    concurrency = 100;\n' in first
    before = moat.ctl("destconfig", "detail").stdout
    # Import the export unchanged: the same table, and the file still
    # exports the same text.
    r = moat.ctl("destconfig", "import", str(out))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Changes committed" in r.stdout
    assert moat.ctl("destconfig", "detail").stdout == before
    assert moat.ctl("destconfig", "export").stdout == first
    assert (moat.conf_path.parent / (moat.conf_path.name + ".bak")).exists()
    # An edited table: a row added, one removed, the Default changed.
    edited = first.replace("tls = required;", "tls = required_verify_hosted;")
    edited = re.sub(r'destination "\.example\.org" \{.*?\n\}\n', "", edited, flags=re.S)
    edited += 'destination "new.example" {\n    concurrency = 3;\n}\n'
    out.write_text(edited)
    r = moat.ctl("destconfig", "import", str(out))
    assert r.returncode == 0, r.stdout + r.stderr
    lst = moat.ctl("destconfig", "list").stdout
    assert "Required - Verify Hosted Domains" in lst
    assert ".example.org" not in lst and "new.example" in lst
    assert moat.conf_path.read_text().count("destination ") == 3


def test_destconfig_import_refuses_bad_file(moat_factory, tmp_path):
    moat = _dest_moat(moat_factory)
    before = moat.conf_path.read_text()
    bad = tmp_path / "bad.conf"
    bad.write_text('destination "example.com" {\n    tls = maybe;\n}\n')
    r = moat.ctl("destconfig", "import", str(bad))
    assert r.returncode != 0
    assert re.search(r":\d+:\d+: tls in destination \"example\.com\": .*not \"maybe\"",
                     r.stderr), r.stderr
    assert moat.conf_path.read_text() == before
    bad.write_text('smtp_route "x.com" { hosts = [ "y.com" ]; }\n')
    r = moat.ctl("destconfig", "import", str(bad))
    assert r.returncode != 0 and "may hold only destination" in r.stderr, r.stderr
    assert moat.conf_path.read_text() == before
