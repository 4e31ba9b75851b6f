"""moat is not an open relay: nmap's smtp-open-relay script and the
classic address tricks, against a public listener whose Recipient Access
Table accepts only example.com (docs/access.md, "The Recipient Access
Table": the domain is the part after the last '@' of the parsed RFC 5321
path; percent hacks, bang paths and quoted local parts are local parts of
*our* domain; source routes are stripped; address literals match no domain
row).

Every refused recipient must get a 5xx reply (550 from the RAT, 501/553 for
syntax) and never 250; every accepted one must really be for example.com,
which the queue shows (``moatctl queue show`` lists the stored recipients,
``moatctl tophosts active`` the destination domains): accepted mail goes to
our own server, never elsewhere. Delivery is suspended by the harness, so
what was accepted stays in the queue to be looked at.

Loopback only: nmap scans 127.0.0.1 alone (-Pn -n: no ping, no DNS) and
the tests' clients connect to 127.0.0.1.
"""

import os
import re
import shutil
import subprocess

import pytest

from smtp_client import RawSMTP

HOSTNAME = "gw.test.example"
OURS = "example.com"
NMAP = shutil.which("nmap") or "/usr/bin/nmap"
NMAP_SCRIPT = "/usr/share/nmap/scripts/smtp-open-relay.nse"


def public_conf(**listener):
    """A public listener IncomingMail whose RAT accepts only example.com,
    and a private OutgoingMail that relays for 127.0.0.1 only."""
    inc = {"type": "public", "address": "127.0.0.1:{port}"}
    inc.update(listener)
    return {
        ("listener", "IncomingMail"): inc,
        ("listener", "OutgoingMail"): {
            "type": "private", "address": "127.0.0.1:{port}",
            "relay_senders": ["127.0.0.1"]},
        ("rat", "IncomingMail"): {OURS: "accept", "ALL": "reject"},
    }


def session(moat, listener="IncomingMail", source=None):
    """(client, icid) after the greeting and EHLO."""
    mark = moat.log_mark()
    c = RawSMTP(moat.ports[listener], timeout=10, source=source)
    r = c.reply()
    assert r.line == "220 %s ESMTP" % HOSTNAME, r.raw
    icid = int(moat.wait_log(r"^New SMTP ICID (\d+) interface %s " % listener,
                             since=mark).group(1))
    assert c.cmd("EHLO client.test.example").code == 250
    return c, icid


def queue_show(moat, mid):
    """The recipients ``moatctl queue show MID`` lists, as written."""
    r = moat.ctl("queue", "show", mid)
    assert r.returncode == 0, r.stdout + r.stderr
    return re.findall(r"^\s+RID \d+ <(.*)> ", r.stdout, re.M)


def active_domains(moat):
    """Recipient host names of ``moatctl tophosts active``."""
    r = moat.ctl("tophosts", "active")
    assert r.returncode == 0, r.stdout + r.stderr
    return re.findall(r"^\s+\d+ (\S+)\s+\d+", r.stdout, re.M)


def without_route(addr):
    """The mailbox of a path: a source route "@a,@b:" removed."""
    return addr.split(":", 1)[1] if addr.startswith("@") else addr


def domain_of(addr):
    """The domain a recipient is delivered to: after the last '@' outside
    quotes, source route removed (what docs/access.md says moat uses)."""
    addr = without_route(addr)
    at, quoted = -1, False
    for i, ch in enumerate(addr):
        if ch == '"':
            quoted = not quoted
        elif ch == "@" and not quoted:
            at = i
    return addr[at + 1:].lower().rstrip(".") if at >= 0 else ""


# ---------------------------------------------------------------------------
# nmap smtp-open-relay

def nmap_relay(port, domain, ip="127.0.0.1"):
    """Run nmap's smtp-open-relay script against 127.0.0.1:port (connect
    scan, no ping, no DNS, verbose so that every working combination is
    listed; '+' runs the script whatever the port's service guess)."""
    if not (os.access(NMAP, os.X_OK) and os.path.exists(NMAP_SCRIPT)):
        pytest.skip("nmap or its smtp-open-relay script is not installed "
                    "(scripts/install-deps.sh test)")
    argv = [NMAP, "-Pn", "-n", "-sT", "-vv", "-p", str(port),
            "--script", "+smtp-open-relay", "--script-timeout", "60s",
            "--script-args",
            "smtp-open-relay.domain=%s,smtp-open-relay.ip=%s" % (domain, ip),
            "127.0.0.1"]
    r = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, "%s\n%s%s" % (" ".join(argv), r.stdout, r.stderr)
    out = r.stdout
    assert "smtp-open-relay:" in out, "the script did not run:\n" + out
    return out


def nmap_relayed(out):
    """The (from, to) combinations nmap reports as relayed."""
    return re.findall(r"MAIL FROM:<([^>]*)> -> RCPT TO:<(.*)>\s*$", out, re.M)


@pytest.mark.moat_conf(public_conf())
def test_nmap_reports_no_open_relay(moat):
    """nmap's 16 relay combinations (null sender, our name, address
    literals, percent hack, quoted local parts, '@@', source routes, bang
    paths) aimed at evil.example, a domain the RAT does not accept: every
    one is refused, and nmap says the server is not an open relay."""
    mark = moat.log_mark()
    out = nmap_relay(moat.ports["IncomingMail"], "evil.example")
    relayed = nmap_relayed(out)
    assert not re.search(r"Server is an open relay", out) and not relayed, (
        "OPEN RELAY: nmap relayed through moat:\n" + out)
    assert "Server doesn't seem to be an open relay, all tests failed" in out, out
    lines = moat.log_lines()[mark:]
    # nmap really tried its 16 transactions, each refused at RCPT
    assert len([ln for ln in lines if re.match(r"^MID \d+ ICID \d+ From: ", ln)]) == 16, \
        "\n".join(lines)
    assert not [ln for ln in lines if re.match(r"^MID \d+ ICID \d+ RID \d+ To: ", ln)], \
        "\n".join(lines)
    assert active_domains(moat) == []


@pytest.mark.moat_conf(public_conf())
def test_nmap_control_with_our_own_domain(moat):
    """Positive control of the nmap check above: aimed at example.com (our
    domain) nmap does get recipients accepted, so the parsing above would
    see a relay; and each accepted recipient is really at example.com
    (plain, or after a stripped source route), never a percent/bang/quoted
    trick reaching another domain."""
    out = nmap_relay(moat.ports["IncomingMail"], OURS)
    relayed = nmap_relayed(out)
    assert re.search(r"Server is an open relay \(%d/16 tests\)" % len(relayed), out), out
    assert relayed, out
    for frm, to in relayed:
        assert domain_of(to) == OURS, (frm, to, out)
        local = to.rsplit("@", 1)[0].split(":")[-1]
        assert not set(local) & set('%!@"'), (frm, to)


@pytest.mark.moat_conf(public_conf())
def test_nmap_private_listener_refuses_other_hosts(moat):
    """A private listener relays only for its relay_senders: seen from a
    host it does not list (127.0.0.1 is listed, so the listener is
    reconfigured to list 127.0.0.2 only), nmap gets no relay at all."""
    conf = public_conf()
    conf[("listener", "OutgoingMail")]["relay_senders"] = ["127.0.0.2"]
    moat.configure(conf)
    r = moat.ctl("commit")
    assert r.returncode == 0, r.stdout + r.stderr
    moat.wait_log(r"^Configuration .* committed")
    out = nmap_relay(moat.ports["OutgoingMail"], "evil.example")
    assert not re.search(r"Server is an open relay", out) and not nmap_relayed(out), (
        "OPEN RELAY: nmap relayed through the private listener:\n" + out)
    assert active_domains(moat) == []


# ---------------------------------------------------------------------------
# address tricks, one RCPT each

# (recipient path as sent, what must happen)
#   "refused":  a 5xx reply (550 by the RAT, 501/553 for syntax), never 250
#   "ours":     accepted (250) and stored for a recipient at example.com
TRICKS = [
    ("user%evil.example@other.example", "refused"),     # percent hack, other domain
    ("user%evil.example@example.com", "ours"),          # percent hack on our domain
    ("@example.com:user@evil.example", "refused"),      # source route to evil
    ("@example.com,@gw.test.example:user@evil.example", "refused"),
    ("@evil.example:user@example.com", "ours"),         # route stripped: ours
    ("evil.example!user", "refused"),                   # bang path, no domain
    ("evil.example!user@other.example", "refused"),     # bang path, other domain
    ("evil.example!user@example.com", "ours"),          # bang path on our domain
    ('"user@evil.example"@other.example', "refused"),   # quoted '@'
    ('"user@evil.example"@example.com', "ours"),        # quoted '@' on our domain
    ('"user@evil.example"', "refused"),                 # quoted, no domain
    ("user@evil.example@example.com", "refused"),       # two '@'
    ("user@example.com@evil.example", "refused"),
    ("user@[127.0.0.1]", "refused"),                    # address literal
    ("user@[IPv6:::1]", "refused"),
    ("user@EVIL.example", "refused"),
    ("user@evil.example.", "refused"),                  # trailing dot
    ("user@example.com.evil.example", "refused"),       # ours as a prefix
    ("user@evilexample.com", "refused"),                # ours as a suffix
    ("user@sub.example.com", "refused"),                # subdomain: no row
    ("user@evil.example", "refused"),                   # plain, the reference
    ("USER@EXAMPLE.COM", "ours"),                       # case of our domain
    ("user@Example.Com", "ours"),
]


@pytest.mark.parametrize("rcpt,expect", TRICKS, ids=[t[0] for t in TRICKS])
@pytest.mark.moat_conf(public_conf())
def test_address_trick(moat, rcpt, expect):
    """One recipient trick on the public listener: refused with 5xx unless
    its real domain is example.com; if accepted, the queue holds it for
    example.com only (our own server, never another host)."""
    c, icid = session(moat)
    mark = moat.log_mark()
    with c:
        c.expect("MAIL FROM:<sender@other.example>", "250 2.1.0 Sender ok")
        r = c.cmd("RCPT TO:<%s>" % rcpt)
        if expect == "refused":
            assert r.code in (501, 550, 553), "RELAY HOLE? RCPT TO:<%s> -> %r" % (rcpt, r.raw)
            c.expect("DATA", "503 5.5.1 Need RCPT command")
            c.expect("QUIT", "221 2.0.0 Bye")
            lines = moat.log_lines()[mark:]
            if r.code == 550:
                assert r.line == "550 5.1.0 Address rejected", r.raw
                # the log shows the path as parsed: source route removed
                want = (r"^MID \d+ ICID %d To: <%s> Rejected by RAT$"
                        % (icid, re.escape(without_route(rcpt))))
            else:
                want = r"^ICID %d MID \d+ Invalid recipient address: " % icid
            assert any(re.match(want, ln) for ln in lines), (want, lines)
            assert not [ln for ln in lines if " RID " in ln], lines
            assert active_domains(moat) == []
            return
        assert r.line == "250 2.1.5 Recipient ok", (rcpt, r.raw)
        c.expect("DATA", "354 Start mail input; end with <CRLF>.<CRLF>")
        c.send(b"Subject: relay check\r\n\r\nbody\r\n.\r\n")
        r = c.reply()
        m = re.fullmatch(r"250 2\.0\.0 Ok: Message (\d+) accepted", r.line)
        assert m, r.raw
        c.expect("QUIT", "221 2.0.0 Bye")
    mid = m.group(1)
    moat.wait_log(r"^MID %s queued for delivery$" % mid, since=mark)
    stored = queue_show(moat, mid)
    assert len(stored) == 1, stored
    assert domain_of(stored[0]) == OURS, stored
    assert [d.lower() for d in active_domains(moat)] == [OURS]


@pytest.mark.moat_conf(public_conf())
def test_tricks_in_one_transaction_keep_only_our_recipients(moat):
    """All the tricks in one transaction (no RSET between them): the message
    that is queued holds exactly the recipients at example.com, and the
    queue has no other destination."""
    c, icid = session(moat)
    accepted = []
    with c:
        c.expect("MAIL FROM:<sender@other.example>", "250 2.1.0 Sender ok")
        for rcpt, expect in TRICKS:
            r = c.cmd("RCPT TO:<%s>" % rcpt)
            if expect == "ours":
                assert r.line == "250 2.1.5 Recipient ok", (rcpt, r.raw)
                accepted.append(rcpt)
            else:
                assert r.code in (501, 550, 553), "RELAY HOLE? RCPT TO:<%s> -> %r" % (rcpt, r.raw)
        c.expect("DATA", "354 Start mail input; end with <CRLF>.<CRLF>")
        c.send(b"Subject: relay check\r\n\r\nbody\r\n.\r\n")
        m = re.fullmatch(r"250 2\.0\.0 Ok: Message (\d+) accepted", c.reply().line)
        assert m
        c.expect("QUIT", "221 2.0.0 Bye")
    moat.wait_log(r"^MID %s queued for delivery$" % m.group(1))
    stored = queue_show(moat, m.group(1))
    assert len(stored) == len(accepted), (stored, accepted)
    assert {domain_of(s) for s in stored} == {OURS}, stored
    assert [d.lower() for d in active_domains(moat)] == [OURS]


@pytest.mark.moat_conf(public_conf())
def test_private_listener_refuses_hosts_not_in_relay_senders(moat):
    """The private listener relays for 127.0.0.1 only: 127.0.0.2 gets the
    reject banner (554) instead of a greeting and the connection is closed,
    so no RCPT can even be tried; 127.0.0.1 relays anywhere."""
    with RawSMTP(moat.ports["OutgoingMail"], source="127.0.0.2", timeout=10) as c:
        r = c.reply()
        assert r.code == 554 and r.line.startswith("554 5.7.1 "), r.raw
        assert c.closed()
    c, icid = session(moat, "OutgoingMail", source="127.0.0.1")
    with c:
        c.expect("MAIL FROM:<sender@example.com>", "250 2.1.0 Sender ok")
        c.expect("RCPT TO:<user@evil.example>", "250 2.1.5 Recipient ok")
        c.expect("QUIT", "221 2.0.0 Bye")
