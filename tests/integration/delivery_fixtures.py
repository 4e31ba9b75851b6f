"""Helpers and fixtures for the delivery engine's integration tests
(test_delivery.py, test_delivery_crash.py).

Every test builds its moat.conf with ``delivery_conf()``: one private
listener ``OutgoingMail`` (relays for 127.0.0.0/8, so any recipient domain
is accepted), a ``delivery`` block with short timeouts (so the harness does
not suspend delivery), SMTP routes and destinations given as dicts, and a
fast ``Default`` bounce profile. Mail goes in with ``submit()`` (smtplib,
byte-exact content) and comes out at a ``FaultSink`` (fixture ``sinks``) or
a Postfix. ``MailLog`` reads moat's mail log with timestamps, for ordering
and spacing checks.
"""

import datetime
import random
import re
import smtplib
import socket
import time
from email import message_from_bytes, policy

import pytest

from dnsserver import DnsServer, knot_available
from smtpsink import FaultSink

HOSTNAME = "gw.test.example"
CLIENT = "client.test.example"

# "Mon Nov 23 10:01:02 2026 Info: "
_STAMP = re.compile(r"^([A-Z][a-z]{2} [A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d \d{4}) "
                    r"([A-Za-z]+): (.*)$")


# --------------------------------------------------------------------------
# configuration

def delivery_conf(routes=None, *, delivery=None, destinations=None,
                  profiles=None, resolver=None, extra=None):
    """A moat.conf dict for delivery tests.

    routes: {"example.com": ["127.0.0.1:PORT", ...] | "USEDNS" | "/dev/null"}
    delivery: keys merged over fast defaults (connect 2 s, commands 5 s).
    destinations: {"Default" | domain: {...}}.
    profiles: {"Default" | name: {...}} merged over a fast Default profile
    (initial_retry 1, max_retry_timeout 2, max_retries 3).
    resolver: the resolver block (None: the harness's dead stub).
    """
    dl = {"connect_timeout": 2, "greeting_timeout": 5, "command_timeout": 5,
          "data_timeout": 5, "data_done_timeout": 5}
    dl.update(delivery or {})
    conf = {
        "hostname": HOSTNAME,
        ("listener", "OutgoingMail"): {
            "type": "private", "address": "127.0.0.1:{port}",
            "relay_senders": ["127.0.0.0/8"]},
        "delivery": dl,
    }
    if resolver is not None:
        conf["resolver"] = resolver
    prof = {"Default": {"initial_retry": 1, "max_retry_timeout": 2,
                        "max_retries": 3}}
    for name, p in (profiles or {}).items():
        prof.setdefault(name, {})
        prof[name] = dict(prof[name], **p)
    for name, p in prof.items():
        conf[("bounce_profile", name)] = p
    for dom, hosts in (routes or {}).items():
        if isinstance(hosts, str):
            hosts = [hosts]
        conf[("smtp_route", dom)] = {"hosts": list(hosts)}
    for dom, d in (destinations or {}).items():
        conf[("destination", dom)] = d
    conf.update(extra or {})
    return conf


def loopback_addr():
    """A random 127.x.y.z (not 127.0.0.1) with port 25 free, for sinks that
    must listen on port 25 (MX targets)."""
    for _ in range(50):
        ip = "127.%d.%d.%d" % (random.randint(1, 250), random.randint(0, 250),
                               random.randint(2, 250))
        with socket.socket() as s:
            try:
                s.bind((ip, 25))
                return ip
            except OSError:
                continue
    pytest.skip("no free 127.x.y.z:25")


def dns_resolver(dns, timeout=3):
    """resolver block pointing every zone at a DnsServer."""
    return {"resolv_conf": "", "stub_zones": {".": [dns.address]},
            "timeout": timeout}


# --------------------------------------------------------------------------
# submitting mail

_ACCEPTED = re.compile(rb"Ok: Message (\d+) accepted")


def message(subject="test", msgid=None, body="body line\r\n", frm="sender@src.example",
            to="rcpt@dst.example", extra_headers=""):
    """A small RFC 5322 message (bytes, CRLF)."""
    msgid = msgid or "<%s.%f@client.test.example>" % (re.sub(r"\W", "", subject),
                                                      time.time())
    return ("From: %s\r\nTo: %s\r\nSubject: %s\r\nMessage-ID: %s\r\n%s\r\n%s"
            % (frm, to, subject, msgid, extra_headers, body)).encode()


class Submitter:
    """One SMTP session to moat's OutgoingMail listener (smtplib)."""

    def __init__(self, moat, listener="OutgoingMail"):
        self.s = smtplib.SMTP("127.0.0.1", moat.ports[listener],
                              local_hostname=CLIENT, timeout=15)

    def send(self, mail_from, rcpts, data, mail_options=()):
        """Returns the MID moat assigned (from its 250 reply)."""
        if isinstance(rcpts, str):
            rcpts = [rcpts]
        self.s.ehlo_or_helo_if_needed()
        code, resp = self.s.mail(mail_from, list(mail_options))
        assert code == 250, (code, resp)
        for r in rcpts:
            code, resp = self.s.rcpt(r)
            assert code == 250, (r, code, resp)
        code, resp = self.s.data(data)
        assert code == 250, (code, resp)
        m = _ACCEPTED.search(resp)
        assert m, resp
        return int(m.group(1))

    def close(self):
        try:
            self.s.quit()
        except (smtplib.SMTPException, OSError):
            self.s.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def submit(moat, mail_from, rcpts, data=None, **kw):
    """Send one message in its own session; returns its MID."""
    with Submitter(moat) as s:
        return s.send(mail_from, rcpts, data if data is not None else message(), **kw)


# --------------------------------------------------------------------------
# the mail log

class LogLine:
    def __init__(self, when, level, text, index):
        self.when = when      # datetime (second resolution)
        self.level = level
        self.text = text
        self.index = index

    def __repr__(self):
        return "<%d %s %s>" % (self.index, self.when.strftime("%H:%M:%S"), self.text)


def log_entries(moat, since=0):
    out = []
    for i, raw in enumerate(moat.log_lines(strip=False)):
        if i < since:
            continue
        m = _STAMP.match(raw)
        if not m:
            continue
        when = datetime.datetime.strptime(m.group(1), "%a %b %d %H:%M:%S %Y")
        out.append(LogLine(when, m.group(2), m.group(3), i))
    return out


def grep(moat, regex, since=0):
    """Stripped log lines matching regex (re.search), in order."""
    rx = re.compile(regex)
    return [ln for ln in moat.log_lines()[since:] if rx.search(ln)]


def grep_entries(moat, regex, since=0):
    rx = re.compile(regex)
    return [e for e in log_entries(moat, since) if rx.search(e.text)]


def wait_until(pred, timeout=10.0, step=0.05):
    """Poll pred() until true (returns its value) or timeout (returns the
    last value)."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v or time.monotonic() > deadline:
            return v
        time.sleep(step)


def queue_empty(moat):
    r = moat.ctl("queue", "list")
    return r.returncode == 0 and re.search(r"^0 message\(s\)", r.stdout, re.M)


def wait_queue_empty(moat, timeout=10.0):
    ok = wait_until(lambda: queue_empty(moat), timeout)
    assert ok, "queue not empty after %.0fs:\n%s\n%s" % (
        timeout, moat.ctl("queue", "list").stdout, moat.report(30))


class CtlResult:
    def __init__(self, ok, text):
        self.returncode = 0 if ok else 1
        self.stdout = text

    def __repr__(self):
        return "<CtlResult rc=%d %r>" % (self.returncode, self.stdout[:200])


def ctl(moat, *args, timeout=30):
    """moatctl -c CONF ARGS...: returncode, and stdout holding everything it
    printed (moatctl writes an error answer to stderr)."""
    r = moat.ctl(*args, timeout=timeout)
    return CtlResult(r.returncode == 0, r.stdout + r.stderr)


def ctl_socket(moat, *args, timeout=10):
    """The same request made on the control socket directly ("COMMAND
    ARGS\n"; the answer is "OK\n" or "ERR\n" then text)."""
    import socket as _socket
    req = " ".join(str(a) for a in args) + "\n"
    with _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(moat.socket))
        s.sendall(req.encode())
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, text = data.decode("utf-8", "replace").partition("\n")
    assert head in ("OK", "ERR"), data[:200]
    return CtlResult(head == "OK", text)


def status_counters(moat):
    """moatctl status as {label: int} for the numeric lines."""
    r = moat.ctl("status")
    assert r.returncode == 0, r.stdout + r.stderr
    out = {}
    for line in r.stdout.splitlines():
        m = re.match(r"^\s+(\S.*?\S)\s{2,}(\d+)", line)
        if m:
            out[m.group(1)] = int(m.group(2))
    return out


def parse_dsn(data):
    """(message, {"report": ..., "statuses": [per-recipient dicts],
    "original": part}) of a DSN as the sink received it."""
    msg = message_from_bytes(data, policy=policy.default)
    info = {"report": None, "statuses": [], "original": None, "text": None}
    assert msg.get_content_type() == "multipart/report", msg.get_content_type()
    assert msg.get_param("report-type") == "delivery-status"
    parts = list(msg.iter_parts())
    info["text"] = parts[0]
    for p in parts[1:]:
        ct = p.get_content_type()
        if ct in ("message/delivery-status", "message/global-delivery-status"):
            payload = p.get_payload()
            # email's policy gives a list of Message objects, one per block.
            blocks = payload if isinstance(payload, list) else [payload]
            info["report"] = dict(blocks[0].items())
            info["statuses"] = [dict(b.items()) for b in blocks[1:]]
        elif ct in ("message/rfc822", "text/rfc822-headers", "message/global",
                    "message/global-headers"):
            info["original"] = p
    return msg, info


# --------------------------------------------------------------------------
# fixtures

@pytest.fixture
def sinks():
    """sinks(**kw) -> a started FaultSink; all are stopped at teardown and
    must have no internal errors."""
    made = []

    def make(**kw):
        s = FaultSink(**kw)
        made.append(s)
        return s

    yield make
    for s in made:
        s.stop()
    for s in made:
        assert s.internal_errors == [], s.internal_errors


@pytest.fixture
def dns_server(tmp_path):
    if not knot_available():
        pytest.skip("needs Knot DNS (knotd, knotc, kdig)")
    made = []

    def make(zones=None, **kw):
        d = DnsServer(tmp_path / ("dns%d" % len(made)), zones, **kw)
        made.append(d)
        return d

    yield make
    for d in made:
        d.cleanup()
