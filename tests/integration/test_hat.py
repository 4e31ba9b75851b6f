"""The Host Access Table, mail flow policies, rate limits and envelope
sender DNS verification (docs/access.md), seen from the wire and the mail
log.

Every test runs a real moatd whose resolver asks one knotd on loopback
(module fixture ``dns``: the root and 127.in-addr.arpa are stubbed to it,
nothing else is ever asked). Clients come from different loopback
addresses (the client socket is bound to 127.0.0.x before connect), so
that each is a different host for the HAT:

    127.0.0.2   PTR mail-db8eur05.outbound.protection.outlook.com, whose A
                is 127.0.0.2: verified (FCrDNS), the Microsoft 365 relay of
                the seed set-up
    127.0.0.3   PTR liar.protection.outlook.com, whose A is 127.0.0.99:
                the name does not lead back (ptr_mismatch), not verified
    127.0.0.4   PTR mx.partner.example, A 127.0.0.4: verified
    127.0.0.5   no PTR (NXDOMAIN): no_ptr
    127.0.0.6   the PTR lookup fails (its reverse zone answers SERVFAIL)
    127.0.0.7   PTR host.broken.example, whose zone answers SERVFAIL: the
                forward lookup fails (ptr_tempfail)
    127.0.0.8   listed in the DNS list bl.example.org (no PTR)
    127.0.0.9-  no PTR; used by the address forms
    ::1         a listener on [::1]

Each test checks the SMTP replies and the exact mail log lines:
    New SMTP ICID 5 interface IncomingMail (127.0.0.1) address 127.0.0.2 reverse dns host mail-db8eur05.outbound.protection.outlook.com verified yes
    ICID 5 ACCEPT SG UNKNOWNLIST match sbrs[none] SBRS not enabled country not enabled

``test_dns_fixture_data`` and ``test_loopback_sources_are_usable`` check
the harness itself (the DNS data with kdig, binding 127.0.0.x and ::1), so
that a failure elsewhere is moatd's, not the fixture's.
"""

import re
import socket
import subprocess
import time

import pytest

from conftest import Bare
from dnsserver import DnsServer, knot_available
from smtp_client import RawSMTP, connect_from

HOSTNAME = "gw.test.example"
DATA_GO = "354 Start mail input; end with <CRLF>.<CRLF>"
T = 15.0  # bound for a banner: DNS lookups are bounded by the resolver's timeout

O365_NAME = "mail-db8eur05.outbound.protection.outlook.com"
LIAR_NAME = "liar.protection.outlook.com"
PARTNER_NAME = "mx.partner.example"

ZONES = {
    "127.in-addr.arpa": [
        ("2.0.0", "PTR", O365_NAME + "."),
        ("3.0.0", "PTR", LIAR_NAME + "."),
        ("4.0.0", "PTR", PARTNER_NAME + "."),
        ("7.0.0", "PTR", "host.broken.example."),
    ],
    "outlook.com": [
        ("mail-db8eur05.outbound.protection", "A", "127.0.0.2"),
        ("liar.protection", "A", "127.0.0.99"),
    ],
    "partner.example": [("mx", "A", "127.0.0.4")],
    # DNS list: 127.0.0.8 is listed
    "bl.example.org": [("8.0.0.127", "A", "127.0.0.2"),
                       ("8.0.0.127", "TXT", "listed for the test"),
                       # the list's error code, not a listing
                       ("60.0.0.127", "A", "127.255.255.254")],
    # envelope sender domains
    "sender-ok.example": [("@", "MX", "10 mx.sender-ok.example."),
                          ("mx", "A", "127.0.0.50")],
    "a-only.example": [("@", "A", "127.0.0.51")],
    "nomx.example": [("@", "TXT", "v=spf1 -all")],  # exists, no MX/A/AAAA
}
SERVFAIL = ["6.0.0.127.in-addr.arpa", "broken.example", "sfail.example"]


# ---------------------------------------------------------------------------
# fixtures and configuration helpers

@pytest.fixture(scope="module")
def dns(tmp_path_factory):
    """One knotd for the whole module (its data never changes)."""
    if not knot_available():
        pytest.skip("needs Knot DNS (knotd, knotc, kdig: scripts/install-deps.sh test)")
    d = DnsServer(tmp_path_factory.mktemp("hatdns"), ZONES, servfail=SERVFAIL)
    yield d
    d.cleanup()


@pytest.fixture
def blackhole():
    """'127.0.0.1@PORT' of a UDP socket that never answers: a DNS server
    that times out."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    yield "127.0.0.1@%d" % s.getsockname()[1]
    s.close()


def resolver(dns, timeout=5, **stubs):
    """moat's resolver: the root and 127.in-addr.arpa stubbed to knot (the
    latter so that libunbound's built-in local zone does not answer)."""
    zones = {".": [dns.address], "127.in-addr.arpa": [dns.address]}
    zones.update(stubs)
    return {"resolv_conf": "", "stub_zones": zones, "timeout": timeout}


def conf(dns, hats=None, inc=None, out=None, rat=None, extra=None, res=None, **top):
    """Public IncomingMail (RAT: example.com), private OutgoingMail
    (relay_senders 127.0.0.1), the knot resolver; ``hats``:
    {listener: hat block}; ``inc``/``out``: more listener keys; ``extra``:
    more top-level blocks; ``top``: top-level keys."""
    c = {
        ("listener", "IncomingMail"): dict(
            {"type": "public", "address": "127.0.0.1:{port}"}, **(inc or {})),
        ("listener", "OutgoingMail"): dict(
            {"type": "private", "address": "127.0.0.1:{port}",
             "relay_senders": ["127.0.0.1"]}, **(out or {})),
        ("rat", "IncomingMail"): rat or {"example.com": "accept", "ALL": "reject"},
        "resolver": res or resolver(dns),
    }
    c.update(extra or {})
    for name, block in (hats or {}).items():
        c[("hat", name)] = block
    c.update(top)
    return c


def second(name="Second", address="127.0.0.1:{port}", rat=None):
    """extra= blocks for another public listener and its RAT."""
    return {("listener", name): {"type": "public", "address": address},
            ("rat", name): rat or {"example.com": "accept", "ALL": "reject"}}


def sg(policy=None, senders=None, dns_verification=None, comment=None):
    """A sender_group block (None values are not written)."""
    return {"policy": policy, "senders": senders,
            "dns_verification": dns_verification, "comment": comment}


def group(name, policy=None, senders=None, **kw):
    return {("sender_group", name): sg(policy, senders, **kw)}


def policy(name, **params):
    return {("mail_flow_policy", name): params}


def hat(*parts, **keys):
    """A hat block from group()/policy() parts, in order."""
    block = {}
    for p in parts:
        block.update(p)
    block.update(keys)
    return block


# ---------------------------------------------------------------------------
# sessions and log lines

def new_line(icid, source, rdns="unknown", verified="no",
             listener="IncomingMail", iface="127.0.0.1"):
    return ("New SMTP ICID %d interface %s (%s) address %s reverse dns host %s "
            "verified %s" % (icid, listener, iface, source, rdns, verified))


def hat_line(icid, rule, grp, match):
    return ("ICID %d %s SG %s match %s SBRS not enabled country not enabled"
            % (icid, rule, grp, match))


def connect(moat, source, listener="IncomingMail", host="127.0.0.1"):
    """Connect from ``source``; returns (client, banner Reply, icid, mark)."""
    mark = moat.log_mark()
    c = RawSMTP(moat.ports[listener], timeout=T, source=source, host=host)
    banner = c.reply()
    m = moat.wait_log(r"^New SMTP ICID (\d+) interface %s \(.*\) address %s "
                      % (re.escape(listener), re.escape(source)), since=mark)
    return c, banner, int(m.group(1)), mark


def expect_log(moat, line, since):
    """Wait for this exact (prefix-stripped) log line."""
    return moat.wait_log("^" + re.escape(line) + "$", since=since)


def expect_hat(moat, icid, rule, grp, match, since):
    """The HAT decision of the session: exactly this line, and only one."""
    want = hat_line(icid, rule, grp, match)
    expect_log(moat, want, since)
    got = [ln for ln in moat.log_lines()[since:]
           if re.match(r"^ICID %d (ACCEPT|RELAY|REJECT|TCPREFUSE) SG " % icid, ln)]
    assert got == [want], got


def greeted(moat, source, rule, grp, match, listener="IncomingMail",
            banner="220 %s ESMTP" % HOSTNAME, host="127.0.0.1"):
    """Connect from source; assert the banner and the HAT line; EHLO.
    Returns (client, icid, EHLO reply)."""
    c, b, icid, mark = connect(moat, source, listener, host)
    assert b.line == banner, (source, b.raw)
    expect_hat(moat, icid, rule, grp, match, mark)
    r = c.cmd("EHLO client.test.example")
    assert r.code == 250, r.raw
    return c, icid, r


def rejected(moat, source, grp, match, listener="IncomingMail",
             banner="554 5.7.1 %s Access denied" % HOSTNAME):
    """Connect from source; assert the reject banner, the close and the
    REJECT line. Returns the icid."""
    c, b, icid, mark = connect(moat, source, listener)
    with c:
        assert b.line == banner, (source, b.raw)
        assert c.closed()
    expect_hat(moat, icid, "REJECT", grp, match, mark)
    return icid


def send_message(c, sender="s@test.example", rcpts=("u@example.com",)):
    """A whole transaction, every reply the usual one; returns the MID."""
    c.expect("MAIL FROM:<%s>" % sender, "250 2.1.0 Sender ok")
    for r in rcpts:
        c.expect("RCPT TO:<%s>" % r, "250 2.1.5 Recipient ok")
    c.expect("DATA", DATA_GO)
    c.send(b"Subject: hat test\r\n\r\nbody\r\n.\r\n")
    r = c.reply()
    m = re.fullmatch(r"250 2\.0\.0 Ok: Message (\d+) accepted", r.line)
    assert m, r.raw
    return int(m.group(1))


def queued_rcpts(moat, mid):
    r = moat.ctl("queue", "show", mid)
    assert r.returncode == 0, r.stdout + r.stderr
    return re.findall(r"^\s+RID \d+ <(.*)> ", r.stdout, re.M)


def size_of(ehlo):
    for line in ehlo.lines:
        if line.startswith("SIZE"):
            return int(line.split()[1])
    return None


# ---------------------------------------------------------------------------
# the harness itself (these pass without the HAT)

def test_loopback_sources_are_usable():
    """The kernel lets a client bind 127.0.0.2 (any 127/8 address) and ::1
    before connecting, and the server sees that address."""
    for host, source, family in (("127.0.0.1", "127.0.0.2", socket.AF_INET),
                                 ("127.0.0.1", "127.0.1.77", socket.AF_INET),
                                 ("::1", "::1", socket.AF_INET6)):
        with socket.socket(family, socket.SOCK_STREAM) as srv:
            srv.bind((host, 0))
            srv.listen(1)
            with connect_from(srv.getsockname()[1], source, host, timeout=5):
                conn, peer = srv.accept()
                conn.close()
            assert peer[0] == source


def test_dns_fixture_data(dns):
    """The DNS data the HAT tests rely on, asked directly from knot."""
    def ptr(ip):
        return ".".join(reversed(ip.split("."))) + ".in-addr.arpa"

    r = dns.query(ptr("127.0.0.2"), "PTR")
    assert (r.rcode, r.rdata("PTR")) == ("NOERROR", [O365_NAME + "."])
    assert dns.query(O365_NAME, "A").rdata("A") == ["127.0.0.2"]
    assert dns.query(O365_NAME, "AAAA").rcode == "NOERROR"
    assert dns.query(ptr("127.0.0.3"), "PTR").rdata("PTR") == [LIAR_NAME + "."]
    assert dns.query(LIAR_NAME, "A").rdata("A") == ["127.0.0.99"]
    assert dns.query(ptr("127.0.0.4"), "PTR").rdata("PTR") == [PARTNER_NAME + "."]
    assert dns.query(PARTNER_NAME, "A").rdata("A") == ["127.0.0.4"]
    for ip in ("127.0.0.5", "127.0.0.8", "127.0.0.9", "127.0.0.10", "127.0.1.77"):
        assert dns.query(ptr(ip), "PTR").rcode == "NXDOMAIN", ip
    assert dns.query(ptr("127.0.0.6"), "PTR").rcode == "SERVFAIL"
    assert dns.query(ptr("127.0.0.7"), "PTR").rdata("PTR") == ["host.broken.example."]
    assert dns.query("host.broken.example", "A").rcode == "SERVFAIL"
    assert dns.query("8.0.0.127.bl.example.org", "A").rdata("A") == ["127.0.0.2"]
    assert dns.query("9.0.0.127.bl.example.org", "A").rcode == "NXDOMAIN"
    assert dns.query("sender-ok.example", "MX").rdata("MX") == ["10 mx.sender-ok.example."]
    assert dns.query("a-only.example", "A").rdata("A") == ["127.0.0.51"]
    for t in ("MX", "A", "AAAA"):
        r = dns.query("nomx.example", t)
        assert (r.rcode, r.answer) == ("NOERROR", []), (t, r)
    assert dns.query("nxd.example", "MX").rcode == "NXDOMAIN"
    assert dns.query("sfail.example", "MX").rcode == "SERVFAIL"


# ---------------------------------------------------------------------------
# the predefined tables

@pytest.mark.parametrize("source,rdns,verified", [
    ("127.0.0.5", "unknown", "no"),          # no PTR
    ("127.0.0.2", O365_NAME, "yes"),         # FCrDNS
    ("127.0.0.4", PARTNER_NAME, "yes"),
    ("127.0.0.3", LIAR_NAME, "no"),          # PTR does not lead back
    ("127.0.0.6", "unknown", "no"),          # PTR lookup failed
])
def test_public_unknown_host_accepted_via_unknownlist(moat_factory, dns, source,
                                                      rdns, verified):
    """Public listener, no hat block: every host falls into UNKNOWNLIST
    (sbrs[none]: moat has no reputation scores) and is ACCEPTED; the New
    SMTP ICID line carries the reverse DNS result; the RAT still decides
    recipients."""
    moat = moat_factory(conf(dns))
    c, b, icid, mark = connect(moat, source)
    with c:
        assert b.line == "220 %s ESMTP" % HOSTNAME
        expect_log(moat, new_line(icid, source, rdns, verified), mark)
        expect_hat(moat, icid, "ACCEPT", "UNKNOWNLIST", "sbrs[none]", mark)
        assert c.cmd("EHLO client.test.example").code == 250
        c.expect("MAIL FROM:<s@test.example>", "250 2.1.0 Sender ok")
        c.expect("RCPT TO:<u@example.com>", "250 2.1.5 Recipient ok")
        c.expect("RCPT TO:<u@elsewhere.example>", "550 5.1.0 Address rejected")
        c.expect("QUIT", "221 2.0.0 Bye")
    expect_log(moat, "ICID %d close" % icid, mark)


def test_private_relaylist_and_all(moat_factory, dns):
    """Private listener, no hat block: relay_senders form RELAYLIST
    (RELAYED: any recipient; the log names the entry as written); everyone
    else falls to ALL (BLOCKED): the 554 reject banner instead of a
    greeting, then the connection is closed; logged as SG None match ALL."""
    moat = moat_factory(conf(dns, out={"relay_senders": ["127.0.0.9", "127.0.0.10/31"]}))
    c, icid, _ = greeted(moat, "127.0.0.9", "RELAY", "RELAYLIST", "127.0.0.9",
                         listener="OutgoingMail")
    with c:
        mid = send_message(c, rcpts=("someone@far-away.example",))
        c.expect("QUIT", "221 2.0.0 Bye")
    moat.wait_log(r"^MID %d queued for delivery$" % mid)
    c, icid, _ = greeted(moat, "127.0.0.11", "RELAY", "RELAYLIST", "127.0.0.10/31",
                         listener="OutgoingMail")
    c.close()
    rejected(moat, "127.0.0.12", "None", "ALL", listener="OutgoingMail")


# ---------------------------------------------------------------------------
# sender forms

# (entry as written, a source it matches or None, a source it does not)
FORMS = [
    ("127.0.0.10", "127.0.0.10", "127.0.0.11"),
    ("127.0.0.16/30", "127.0.0.19", "127.0.0.20"),
    ("127.0.0.20-21", "127.0.0.21", "127.0.0.22"),
    ("127.0.1-2.", "127.0.2.9", "127.0.3.9"),
    ("127.0.1.", "127.0.1.77", "127.0.2.77"),
    ("127.0.1", "127.0.1.78", "127.1.0.1"),
    (PARTNER_NAME, "127.0.0.4", "127.0.0.2"),
    ("MX.Partner.EXAMPLE", "127.0.0.4", "127.0.0.2"),         # case ignored
    (".protection.outlook.com", "127.0.0.2", "127.0.0.3"),     # .3 not verified
    (".outlook.com", "127.0.0.2", "127.0.0.4"),
    (".PROTECTION.Outlook.com", "127.0.0.2", "127.0.0.5"),
    ("outbound.protection.outlook.com", None, "127.0.0.2"),    # a name, not a domain
    ("." + O365_NAME, None, "127.0.0.2"),                      # strictly inside
    (LIAR_NAME, None, "127.0.0.3"),                            # unverified name
    ("dnslist[bl.example.org]", "127.0.0.8", "127.0.0.9"),
    ("dnslist[bl.example.org] error code", "127.0.0.8", "127.0.0.60"),
    ("ALL", "127.0.0.10", None),
    ("sbrs[none]", "127.0.0.10", None),
]


@pytest.mark.parametrize("entry,hit,miss", FORMS, ids=[f[0] for f in FORMS])
def test_sender_form(moat_factory, dns, entry, hit, miss):
    """One sender group FORM (policy TRUSTED) holding one entry: the host it
    should match is logged as SG FORM match <entry as written>; a host it
    should not match goes on to UNKNOWNLIST."""
    entry = entry.split(" ")[0]
    moat = moat_factory(conf(dns, hats={"IncomingMail": hat(group("FORM", "TRUSTED", [entry]))}))
    if hit:
        c, _, _ = greeted(moat, hit, "ACCEPT", "FORM", entry)
        c.close()
    if miss:
        c, _, _ = greeted(moat, miss, "ACCEPT", "UNKNOWNLIST", "sbrs[none]")
        c.close()


@pytest.mark.parametrize("entry,matches", [
    ("::1", True), ("::1/128", True), ("::/127", True), ("::1-::ff", True),
    ("::2-::ff", False), ("127.0.0.1", False), ("2001:db8::/32", False),
])
def test_ipv6_sender_forms(moat_factory, dns, entry, matches):
    """A public listener on [::1]: IPv6 address, CIDR and range entries
    match the client ::1; IPv4 entries and other ranges do not."""
    moat = moat_factory(conf(dns, extra=second("V6", "[::1]:{port}"),
                             hats={"V6": hat(group("V6SG", "TRUSTED", [entry]))}))
    cl, b, icid, mark = connect(moat, "::1", "V6", host="::1")
    with cl:
        assert b.line == "220 %s ESMTP" % HOSTNAME
        moat.wait_log(r"^New SMTP ICID %d interface V6 \(\[?::1\]?\) address ::1 "
                      r"reverse dns host \S+ verified (yes|no)$" % icid, since=mark)
        if matches:
            expect_hat(moat, icid, "ACCEPT", "V6SG", entry, mark)
        else:
            expect_hat(moat, icid, "ACCEPT", "UNKNOWNLIST", "sbrs[none]", mark)
        assert cl.cmd("EHLO client.test.example").code == 250
        cl.expect("MAIL FROM:<s@test.example>", "250 2.1.0 Sender ok")
        cl.expect("RCPT TO:<u@example.com>", "250 2.1.5 Recipient ok")
        cl.expect("QUIT", "221 2.0.0 Bye")


# ---------------------------------------------------------------------------
# order, CONTINUE, default policy

def test_first_match_wins_in_written_order(moat_factory, dns):
    """Groups are tried in the order written, not by how specific they are:
    on IncomingMail the /24 comes first and wins for 127.0.0.10; on a
    second listener with the order reversed the single address wins."""
    moat = moat_factory(conf(dns, extra=second(), hats={
        "IncomingMail": hat(group("FIRST", "TRUSTED", ["127.0.0.0/24"]),
                            group("SECOND", "BLOCKED", ["127.0.0.10"])),
        "Second": hat(group("SECOND", "BLOCKED", ["127.0.0.10"]),
                      group("FIRST", "TRUSTED", ["127.0.0.0/24"])),
    }))
    cl, _, _ = greeted(moat, "127.0.0.10", "ACCEPT", "FIRST", "127.0.0.0/24")
    cl.close()
    rejected(moat, "127.0.0.10", "SECOND", "127.0.0.10", listener="Second")
    cl, _, _ = greeted(moat, "127.0.0.11", "ACCEPT", "FIRST", "127.0.0.0/24",
                       listener="Second")
    cl.close()


def test_written_groups_come_before_predefined(moat_factory, dns):
    """A group written in the hat block is tried before the predefined
    ones: MINE (BLOCKED) catches 127.0.0.10 although UNKNOWNLIST
    (sbrs[none]) matches everyone; others still reach UNKNOWNLIST."""
    moat = moat_factory(conf(dns, hats={
        "IncomingMail": hat(group("MINE", "BLOCKED", ["127.0.0.10"]))}))
    rejected(moat, "127.0.0.10", "MINE", "127.0.0.10")
    cl, _, _ = greeted(moat, "127.0.0.11", "ACCEPT", "UNKNOWNLIST", "sbrs[none]")
    cl.close()


def test_predefined_group_changed(moat_factory, dns):
    """Writing a predefined group changes it: UNKNOWNLIST bound to
    THROTTLED gives unknown hosts THROTTLED's 1 MiB size limit in EHLO,
    and BLOCKED_LIST given senders refuses them."""
    moat = moat_factory(conf(dns, hats={"IncomingMail": hat(
        group("BLOCKED_LIST", senders=["127.0.0.12"]),
        group("UNKNOWNLIST", "THROTTLED"))}))
    cl, _, ehlo = greeted(moat, "127.0.0.10", "ACCEPT", "UNKNOWNLIST", "sbrs[none]")
    cl.close()
    assert size_of(ehlo) == 1048576, ehlo.raw
    rejected(moat, "127.0.0.12", "BLOCKED_LIST", "127.0.0.12")


def test_default_policy_of_all(moat_factory, dns):
    """default_policy names the policy of the final ALL group: with
    UNKNOWNLIST emptied (a group without senders matches nothing) and
    default_policy BLOCKED, an unknown host gets the reject banner and the
    log says SG None match ALL."""
    moat = moat_factory(conf(dns, hats={"IncomingMail": hat(
        group("UNKNOWNLIST", senders=[]), default_policy="BLOCKED")}))
    rejected(moat, "127.0.0.10", "None", "ALL")


def test_continue_goes_on_to_the_next_group(moat_factory, dns):
    """A group whose policy's access is CONTINUE sends the search on: SKIP
    matches 127.0.0.10 and .12 but is never the decision (no log line
    names it); .10 is caught by CATCH, .12 by UNKNOWNLIST."""
    moat = moat_factory(conf(dns, hats={"IncomingMail": hat(
        policy("GOON", access=Bare("continue")),
        group("SKIP", "GOON", ["127.0.0.10", "127.0.0.12"]),
        group("CATCH", "BLOCKED", ["127.0.0.10", "127.0.0.11"]))}))
    mark = moat.log_mark()
    rejected(moat, "127.0.0.10", "CATCH", "127.0.0.10")
    cl, _, _ = greeted(moat, "127.0.0.12", "ACCEPT", "UNKNOWNLIST", "sbrs[none]")
    cl.close()
    assert not [ln for ln in moat.log_lines()[mark:] if " SG SKIP " in ln]


# ---------------------------------------------------------------------------
# TCPREFUSE and REJECT

def test_tcprefuse_closes_without_a_byte_and_without_icid(moat_factory, dns):
    """TCPREFUSE: the connection is closed at once, not one byte is sent;
    the log has 'ICID 0 TCPREFUSE SG SPAMMERS match ...' and no New SMTP
    ICID line for that host, and no ICID is used up (the next session
    gets the ICID after the previous one)."""
    moat = moat_factory(conf(dns, hats={"IncomingMail": hat(
        group("SPAMMERS", "SPAMMERS", ["127.0.0.13"]),
        policy("SPAMMERS", access=Bare("tcprefuse")))}))
    cl, before, _ = greeted(moat, "127.0.0.14", "ACCEPT", "UNKNOWNLIST", "sbrs[none]")
    cl.close()
    mark = moat.log_mark()
    s = connect_from(moat.ports["IncomingMail"], "127.0.0.13", timeout=T)
    try:
        data = s.recv(4096)
    except ConnectionResetError:
        data = b""
    finally:
        s.close()
    assert data == b"", "TCPREFUSE sent %r" % data
    expect_log(moat, "ICID 0 TCPREFUSE SG SPAMMERS match 127.0.0.13 "
               "SBRS not enabled country not enabled", mark)
    cl, after, _ = greeted(moat, "127.0.0.14", "ACCEPT", "UNKNOWNLIST", "sbrs[none]")
    cl.close()
    assert not [ln for ln in moat.log_lines()[mark:]
                if re.match(r"^New SMTP ICID \d+ .* address 127\.0\.0\.13 ", ln)]
    assert after == before + 1, (before, after)


def test_reject_banner_with_variables(moat_factory, dns):
    """The reject banner is the policy's reject_code/reject_text, with
    $RemoteIP, $Group, $HATEntry and $Hostname expanded per connection
    ($Hostname: the verified name, None without PTR, Unknown when the
    lookup failed; $Group None and $HATEntry ALL for the ALL group);
    variable names are case-insensitive; the enhanced code 5.7.1 is
    kept."""
    text = "Refused $RemoteIP group $Group entry $hatentry host $HOSTNAME"
    moat = moat_factory(conf(dns, hats={"IncomingMail": hat(
        group("BAD", "BLOCKED", [".protection.outlook.com", "127.0.0.5", "127.0.0.6"]),
        group("UNKNOWNLIST", senders=[]),
        policy("BLOCKED", reject_code=550, reject_text=text),
        default_policy="BLOCKED")}))

    def banner_re(ip, grp, entry, host):
        return (r"^550 5\.7\.1 %s$" % re.escape(
            "Refused %s group %s entry %s host %s" % (ip, grp, entry, host)))

    for source, grp, entry, host in (
            ("127.0.0.2", "BAD", ".protection.outlook.com", O365_NAME),
            ("127.0.0.5", "BAD", "127.0.0.5", "None"),
            ("127.0.0.6", "BAD", "127.0.0.6", "Unknown"),
            ("127.0.0.9", "None", "ALL", "None")):
        c, b, icid, mark = connect(moat, source)
        with c:
            assert re.match(banner_re(source, grp, entry, host), b.line), (source, b.raw)
            assert c.closed()
        expect_hat(moat, icid, "REJECT", grp, entry, mark)


def test_hat_reject_at_rcpt(moat_factory, dns):
    """hat_reject_at_rcpt = true: a rejected host gets a normal greeting
    and every recipient is refused with the reject banner; the log says
    'Delayed HAT REJECT continuing session for recipient logging'. Both
    on the private listener (ALL) and on the public one (BLOCKED_LIST)."""
    moat = moat_factory(conf(dns, hat_reject_at_rcpt=True, hats={
        "IncomingMail": hat(group("BLOCKED_LIST", senders=["127.0.0.13"]))}))
    refusal = "554 5.7.1 %s Access denied" % HOSTNAME
    for listener, source, grp, match in (("OutgoingMail", "127.0.0.12", "None", "ALL"),
                                         ("IncomingMail", "127.0.0.13", "BLOCKED_LIST",
                                          "127.0.0.13")):
        c, b, icid, mark = connect(moat, source, listener)
        with c:
            assert b.line == "220 %s ESMTP" % HOSTNAME, b.raw
            expect_hat(moat, icid, "REJECT", grp, match, mark)
            expect_log(moat, "ICID %d Delayed HAT REJECT continuing session for "
                       "recipient logging (%s)" % (icid, source), mark)
            assert c.cmd("EHLO client.test.example").code == 250
            c.expect("MAIL FROM:<s@test.example>", "250 2.1.0 Sender ok")
            c.expect("RCPT TO:<u@example.com>", refusal)
            c.expect("RCPT TO:<v@far-away.example>", refusal)
            c.expect("DATA", "503 5.5.1 Need RCPT command")
            c.expect("QUIT", "221 2.0.0 Bye")
        assert not [ln for ln in moat.log_lines()[mark:] if " RID " in ln]
    assert moat.spool_files()["queue"] == []


# ---------------------------------------------------------------------------
# connecting host DNS verification

def test_dns_verification_groups(moat_factory, dns, blackhole):
    """dns_verification checks: no_ptr (127.0.0.5), ptr_tempfail (PTR
    SERVFAIL 127.0.0.6, forward SERVFAIL 127.0.0.7, PTR timeout 127.0.0.11),
    ptr_mismatch (127.0.0.3); the log's match names the check. Verified
    hosts (.2, .4) match none and reach UNKNOWNLIST. A group with the three
    checks together (as in the appliance's example) catches each case on a
    second listener."""
    c = conf(dns, res=resolver(dns, timeout=2, **{"11.0.0.127.in-addr.arpa": [blackhole]}),
             extra=second(), hats={
                 "IncomingMail": hat(
                     group("NOPTR", "BLOCKED", dns_verification=["no_ptr"]),
                     group("TEMPF", "BLOCKED", dns_verification=["ptr_tempfail"]),
                     group("MISM", "BLOCKED", dns_verification=["ptr_mismatch"])),
                 "Second": hat(group("SUSPECT", "BLOCKED", dns_verification=[
                     "no_ptr", "ptr_tempfail", "ptr_mismatch"])),
             })
    moat = moat_factory(c)
    rejected(moat, "127.0.0.5", "NOPTR", "no_ptr")
    rejected(moat, "127.0.0.6", "TEMPF", "ptr_tempfail")
    rejected(moat, "127.0.0.7", "TEMPF", "ptr_tempfail")
    t0 = time.monotonic()
    icid = rejected(moat, "127.0.0.11", "TEMPF", "ptr_tempfail")
    # all lookups together are bounded by the resolver's timeout (2 s)
    assert time.monotonic() - t0 < 2 + 8
    rejected(moat, "127.0.0.3", "MISM", "ptr_mismatch")
    for source in ("127.0.0.2", "127.0.0.4"):
        cl, _, _ = greeted(moat, source, "ACCEPT", "UNKNOWNLIST", "sbrs[none]")
        cl.close()
    for source, check in (("127.0.0.5", "no_ptr"), ("127.0.0.6", "ptr_tempfail"),
                          ("127.0.0.3", "ptr_mismatch")):
        rejected(moat, source, "SUSPECT", check, listener="Second")
    cl, _, _ = greeted(moat, "127.0.0.2", "ACCEPT", "UNKNOWNLIST", "sbrs[none]",
                       listener="Second")
    cl.close()
    assert icid  # the timed-out session did get an ICID


# ---------------------------------------------------------------------------
# the seed set-up: Microsoft 365 relaying through a private listener

def seed_conf(dns):
    return conf(dns, out={"relay_senders": ["127.0.0.1", "127.0.0.2"]}, hats={
        "OutgoingMail": hat(
            group("RELAY_O365", "RELAYED", [".protection.outlook.com"],
                  comment="From Microsoft 365 mail to moat"),
            policy("RELAYED", tls=Bare("preferred")))})


def test_seed_o365_relay(moat_factory, dns):
    """The seed-002 set-up: RELAY_O365 (RELAYED, .protection.outlook.com)
    written in the OutgoingMail hat comes before RELAYLIST (which also
    lists 127.0.0.2). Microsoft's host 127.0.0.2, whose PTR
    mail-db8eur05.outbound.protection.outlook.com resolves back to it,
    relays a message to an outside recipient: accepted and queued."""
    moat = moat_factory(seed_conf(dns))
    c, b, icid, mark = connect(moat, "127.0.0.2", "OutgoingMail")
    with c:
        assert b.line == "220 %s ESMTP" % HOSTNAME
        expect_log(moat, new_line(icid, "127.0.0.2", O365_NAME, "yes",
                                  listener="OutgoingMail"), mark)
        expect_hat(moat, icid, "RELAY", "RELAY_O365", ".protection.outlook.com", mark)
        assert c.cmd("EHLO mail-db8eur05.outbound.protection.outlook.com").code == 250
        mid = send_message(c, "alerts@tenant.example", ("someone@far-away.example",))
        c.expect("QUIT", "221 2.0.0 Bye")
    expect_log(moat, "MID %d ICID %d RID 0 To: <someone@far-away.example>" % (mid, icid), mark)
    expect_log(moat, "MID %d queued for delivery" % mid, mark)
    assert queued_rcpts(moat, mid) == ["someone@far-away.example"]
    # 127.0.0.1 is still relayed by RELAYLIST
    c, _, _ = greeted(moat, "127.0.0.1", "RELAY", "RELAYLIST", "127.0.0.1",
                      listener="OutgoingMail")
    c.close()


def test_seed_name_that_does_not_resolve_back_is_not_matched(moat_factory, dns):
    """127.0.0.3 claims liar.protection.outlook.com in its PTR, but that
    name's A record is another address: not verified, so RELAY_O365 does
    not match and the host falls to ALL (BLOCKED): 554 and close."""
    moat = moat_factory(seed_conf(dns))
    mark = moat.log_mark()
    icid = rejected(moat, "127.0.0.3", "None", "ALL", listener="OutgoingMail")
    expect_log(moat, new_line(icid, "127.0.0.3", LIAR_NAME, "no",
                              listener="OutgoingMail"), mark)


# ---------------------------------------------------------------------------
# mail flow policy parameters

def test_banner_text_code_and_hostname(moat_factory, dns):
    """banner_code/banner_text (variables expanded) replace the greeting;
    banner_hostname replaces the host name in the default banner, the
    EHLO reply and the Received: header; hosts of other groups keep the
    listener's."""
    moat = moat_factory(conf(dns, hats={"IncomingMail": hat(
        policy("WELCOME", access="accept", banner_code=220,
               banner_text="Welcome $RemoteIP from $Hostname via $Group",
               banner_hostname="mx.banner.example"),
        policy("NAMED", access="accept", banner_hostname="mx2.banner.example"),
        group("FRIENDS", "WELCOME", ["127.0.0.2"]),
        group("NAMED", "NAMED", ["127.0.0.11"]))}))
    c, _, ehlo = greeted(moat, "127.0.0.2", "ACCEPT", "FRIENDS", "127.0.0.2",
                         banner="220 Welcome 127.0.0.2 from %s via FRIENDS" % O365_NAME)
    with c:
        assert ehlo.lines[0] == "mx.banner.example", ehlo.raw
        mid = send_message(c)
        c.expect("QUIT", "221 2.0.0 Bye")
    data = (moat.spool / "queue" / str(mid)).read_bytes()
    assert re.search(rb"\r\n\tby mx\.banner\.example with ESMTP id %d " % mid, data), data[:400]
    c, _, ehlo = greeted(moat, "127.0.0.11", "ACCEPT", "NAMED", "127.0.0.11",
                         banner="220 mx2.banner.example ESMTP")
    assert ehlo.lines[0] == "mx2.banner.example"
    c.close()
    c, _, ehlo = greeted(moat, "127.0.0.12", "ACCEPT", "UNKNOWNLIST", "sbrs[none]")
    assert ehlo.lines[0] == HOSTNAME
    c.close()


def test_max_messages_and_recipients_per_policy(moat_factory, dns):
    """max_recipients and max_messages_per_connection of the host's policy
    (SMALL: 2 and 2) apply to it; other hosts keep their own policy's."""
    moat = moat_factory(conf(dns, hats={"IncomingMail": hat(
        policy("SMALL", access="accept", max_recipients=2, max_messages_per_connection=2),
        group("SMALL", "SMALL", ["127.0.0.10"]))}))
    c, icid, _ = greeted(moat, "127.0.0.10", "ACCEPT", "SMALL", "127.0.0.10")
    mark = moat.log_mark()
    with c:
        c.expect("MAIL FROM:<s@test.example>", "250 2.1.0 Sender ok")
        c.expect("RCPT TO:<a@example.com>", "250 2.1.5 Recipient ok")
        c.expect("RCPT TO:<b@example.com>", "250 2.1.5 Recipient ok")
        c.expect("RCPT TO:<c@example.com>", "452 4.5.3 Too many recipients")
        c.expect("DATA", DATA_GO)
        c.send(b"Subject: x\r\n\r\nx\r\n.\r\n")
        mid = int(re.fullmatch(r"250 2\.0\.0 Ok: Message (\d+) accepted", c.reply().line).group(1))
        send_message(c)
        c.expect("MAIL FROM:<s@test.example>",
                 "452 4.5.3 Too many messages for this connection")
        c.expect("QUIT", "221 2.0.0 Bye")
    expect_log(moat, "MID %d ICID %d To: <c@example.com> Rejected by Receiving Control "
               "(too many recipients)" % (mid, icid), mark)
    expect_log(moat, "ICID %d Receiving Failed: Too Many Messages" % icid, mark)
    c, _, _ = greeted(moat, "127.0.0.11", "ACCEPT", "UNKNOWNLIST", "sbrs[none]")
    with c:
        for _ in range(3):
            send_message(c, rcpts=("a@example.com", "b@example.com", "c@example.com"))
        c.expect("QUIT", "221 2.0.0 Bye")


def test_max_message_size_per_policy(moat_factory, dns):
    """max_message_size of the host's policy is announced in EHLO SIZE and
    enforced (552); a policy that does not set it takes the listener's
    max_message_size."""
    moat = moat_factory(conf(dns, inc={"max_message_size": 1048576}, hats={"IncomingMail": hat(
        policy("TINY", access="accept", max_message_size=2048),
        policy("BIG", access="accept", max_message_size=2097152),
        policy("PLAIN", access="accept"),
        group("TINY", "TINY", ["127.0.0.10"]),
        group("BIG", "BIG", ["127.0.0.11"]),
        group("PLAIN", "PLAIN", ["127.0.0.12"]))}))
    for source, grp, size in (("127.0.0.10", "TINY", 2048),
                              ("127.0.0.11", "BIG", 2097152),
                              ("127.0.0.12", "PLAIN", 1048576)):
        c, icid, ehlo = greeted(moat, source, "ACCEPT", grp, source)
        with c:
            assert size_of(ehlo) == size, (source, ehlo.raw)
            c.expect("MAIL FROM:<s@test.example> SIZE=%d" % (size + 1),
                     "552 5.3.4 Message size exceeds fixed maximum message size")
            c.expect("MAIL FROM:<s@test.example> SIZE=%d" % size, "250 2.1.0 Sender ok")
            c.expect("QUIT", "221 2.0.0 Bye")
    c, icid, _ = greeted(moat, "127.0.0.10", "ACCEPT", "TINY", "127.0.0.10")
    mark = moat.log_mark()
    with c:
        c.expect("MAIL FROM:<s@test.example>", "250 2.1.0 Sender ok")
        c.expect("RCPT TO:<u@example.com>", "250 2.1.5 Recipient ok")
        c.expect("DATA", DATA_GO)
        c.send(b"Subject: big\r\n\r\n" + b"x" * 78 + b"\r\n" + (b"y" * 78 + b"\r\n") * 40 + b".\r\n")
        assert c.reply().line == "552 5.3.4 Message size exceeds fixed maximum message size"
        c.expect("QUIT", "221 2.0.0 Bye")
    expect_log(moat, "ICID %d Receiving Failed: Message size exceeds limit" % icid, mark)


def test_max_connections_per_ip(moat_factory, dns):
    """max_connections_per_ip (listener default 10 for a policy that does not
    set it; 2 for TWO): the 11th concurrent session from one address gets
    421 4.3.2 and is closed (logged after the HAT line), while another
    address still gets in, the same address still gets into another
    listener, and a session freed makes room again."""
    moat = moat_factory(conf(dns, out={"relay_senders": ["127.0.0.10"]}, hats={
        "IncomingMail": hat(policy("LIMITED", access="accept"),
                            policy("TWO", access="accept", max_connections_per_ip=2),
                            group("LIMITED", "LIMITED", ["127.0.0.10", "127.0.0.11"]),
                            group("TWO", "TWO", ["127.0.0.12"]))}))
    refusal = "421 4.3.2 Too many connections from your host"
    held = []

    def over_limit(source, grp):
        c, b, icid, mark = connect(moat, source)
        with c:
            assert b.line == refusal, (source, b.raw)
            assert c.closed()
        expect_hat(moat, icid, "ACCEPT", grp, source, mark)
        lines = moat.log_lines()[mark:]
        i = lines.index(hat_line(icid, "ACCEPT", grp, source))
        assert "ICID %d Receiving Failed: Connection limit exceeded" % icid in lines[i + 1:], lines

    try:
        for _ in range(10):
            held.append(greeted(moat, "127.0.0.10", "ACCEPT", "LIMITED", "127.0.0.10")[0])
        over_limit("127.0.0.10", "LIMITED")
        held.append(greeted(moat, "127.0.0.11", "ACCEPT", "LIMITED", "127.0.0.11")[0])
        held.append(greeted(moat, "127.0.0.10", "RELAY", "RELAYLIST", "127.0.0.10",
                            listener="OutgoingMail")[0])
        for _ in range(2):
            held.append(greeted(moat, "127.0.0.12", "ACCEPT", "TWO", "127.0.0.12")[0])
        over_limit("127.0.0.12", "TWO")
        # one of the ten leaves: room for one more (bounded wait for moatd to
        # see the close)
        c = held.pop(0)
        mark = moat.log_mark()
        c.expect("QUIT", "221 2.0.0 Bye")
        c.close()
        moat.wait_log(r"^ICID \d+ close$", since=mark)
        held.append(greeted(moat, "127.0.0.10", "ACCEPT", "LIMITED", "127.0.0.10")[0])
    finally:
        for c in held:
            c.close()


# ---------------------------------------------------------------------------
# rate limiting

def throttled_conf(dns, **top):
    """127.0.0.10 is in SUSPECTLIST (THROTTLED, 3 recipients per period) on
    IncomingMail and on a second public listener; postmaster@ and abuse@
    example.com bypass receiving control."""
    rat = {"postmaster@example.com": {"action": "accept", "bypass_receiving_control": True},
           "abuse@example.com": {"action": "accept", "bypass_receiving_control": True},
           "example.com": "accept", "ALL": "reject"}
    t = hat(group("SUSPECTLIST", senders=["127.0.0.10"]),
            policy("THROTTLED", max_recipients_per_hour=3))
    return conf(dns, rat=rat, extra=second(rat=dict(rat)),
                hats={"IncomingMail": t, "Second": t}, **top)


def test_rate_limit_across_sessions_and_listeners(moat_factory, dns):
    """THROTTLED with max_recipients_per_hour = 3: recipients accepted from
    127.0.0.10 are counted across sessions and listeners; the 4th gets
    452 4.3.2 and 'Rejected by Receiving Control'; RAT rows with
    bypass_receiving_control are neither counted nor refused; another
    address (UNKNOWNLIST, no limit) is not affected."""
    moat = moat_factory(throttled_conf(dns))
    refusal = "452 4.3.2 Too many recipients received this hour"
    c, icid, _ = greeted(moat, "127.0.0.10", "ACCEPT", "SUSPECTLIST", "127.0.0.10")
    with c:
        send_message(c, rcpts=("postmaster@example.com", "abuse@example.com",
                               "a@example.com", "b@example.com"))
        c.expect("QUIT", "221 2.0.0 Bye")
    c, icid, _ = greeted(moat, "127.0.0.10", "ACCEPT", "SUSPECTLIST", "127.0.0.10",
                         listener="Second")
    mark = moat.log_mark()
    with c:
        c.expect("MAIL FROM:<s@test.example>", "250 2.1.0 Sender ok")
        c.expect("RCPT TO:<c@example.com>", "250 2.1.5 Recipient ok")
        c.expect("RCPT TO:<d@example.com>", refusal)
        c.expect("RCPT TO:<postmaster@example.com>", "250 2.1.5 Recipient ok")
        c.expect("RCPT TO:<e@example.com>", refusal)
        c.expect("DATA", DATA_GO)
        c.send(b"Subject: x\r\n\r\nx\r\n.\r\n")
        mid = int(re.fullmatch(r"250 2\.0\.0 Ok: Message (\d+) accepted", c.reply().line).group(1))
        c.expect("QUIT", "221 2.0.0 Bye")
    for rcpt in ("d@example.com", "e@example.com"):
        expect_log(moat, "MID %d ICID %d To: <%s> Rejected by Receiving Control"
                   % (mid, icid, rcpt), mark)
    assert sorted(queued_rcpts(moat, mid)) == ["c@example.com", "postmaster@example.com"]
    # another address: no limit
    c, _, _ = greeted(moat, "127.0.0.11", "ACCEPT", "UNKNOWNLIST", "sbrs[none]")
    with c:
        send_message(c, rcpts=["r%d@example.com" % i for i in range(6)])
        c.expect("QUIT", "221 2.0.0 Bye")
    # still over the limit in a new session on the first listener
    c, _, _ = greeted(moat, "127.0.0.10", "ACCEPT", "SUSPECTLIST", "127.0.0.10")
    with c:
        c.expect("MAIL FROM:<s@test.example>", "250 2.1.0 Sender ok")
        c.expect("RCPT TO:<f@example.com>", refusal)
        c.expect("RCPT TO:<abuse@example.com>", "250 2.1.5 Recipient ok")
        c.expect("QUIT", "221 2.0.0 Bye")


def test_rate_limit_code_and_text(moat_factory, dns):
    """rate_limit_code/rate_limit_text replace the 452 reply (the enhanced
    code 4.3.2 stays, in the custom code's class)."""
    c = throttled_conf(dns)
    c[("hat", "IncomingMail")] = hat(
        group("SUSPECTLIST", senders=["127.0.0.10"]),
        policy("THROTTLED", max_recipients_per_hour=1, rate_limit_code=450,
               rate_limit_text="Slow down please"))
    moat = moat_factory(c)
    cl, _, _ = greeted(moat, "127.0.0.10", "ACCEPT", "SUSPECTLIST", "127.0.0.10")
    with cl:
        cl.expect("MAIL FROM:<s@test.example>", "250 2.1.0 Sender ok")
        cl.expect("RCPT TO:<a@example.com>", "250 2.1.5 Recipient ok")
        cl.expect("RCPT TO:<b@example.com>", "450 4.3.2 Slow down please")
        cl.expect("QUIT", "221 2.0.0 Bye")


def test_rate_limit_period_restarts_the_count(moat_factory, dns):
    """rate_limit_period = 2 s: after the limit is reached, a recipient is
    accepted again once the period since the first recipient has passed
    (polled with new sessions, bounded)."""
    c = throttled_conf(dns, rate_limit_period=2)
    c[("hat", "IncomingMail")] = hat(group("SUSPECTLIST", senders=["127.0.0.10"]),
                                    policy("THROTTLED", max_recipients_per_hour=1))
    moat = moat_factory(c)
    refusal = "452 4.3.2 Too many recipients received this hour"
    cl, _, _ = greeted(moat, "127.0.0.10", "ACCEPT", "SUSPECTLIST", "127.0.0.10")
    with cl:
        cl.expect("MAIL FROM:<s@test.example>", "250 2.1.0 Sender ok")
        cl.expect("RCPT TO:<a@example.com>", "250 2.1.5 Recipient ok")
        cl.expect("RCPT TO:<b@example.com>", refusal)
        cl.expect("QUIT", "221 2.0.0 Bye")
    deadline = time.monotonic() + 20
    replies = []
    while True:
        cl, _, _ = greeted(moat, "127.0.0.10", "ACCEPT", "SUSPECTLIST", "127.0.0.10")
        with cl:
            cl.expect("MAIL FROM:<s@test.example>", "250 2.1.0 Sender ok")
            r = cl.cmd("RCPT TO:<c@example.com>")
            cl.expect("QUIT", "221 2.0.0 Bye")
        replies.append(r.line)
        if r.code == 250:
            break
        assert r.line == refusal, replies
        assert time.monotonic() < deadline, "still refused after 20 s: %r" % replies
        time.sleep(0.3)
    assert replies[-1] == "250 2.1.5 Recipient ok"


# ---------------------------------------------------------------------------
# envelope sender DNS verification

def test_sender_dns_verification(moat_factory, dns, blackhole):
    """sender_dns_verification = true (policy CHECKED, 127.0.0.10): MAIL
    FROM's domain is looked up; malformed (address literal, bare name) ->
    553 #5.5.4, no such domain (NXDOMAIN, or no MX/A/AAAA) -> 553 #5.1.8,
    lookup failure (SERVFAIL, timeout) -> 451 #4.1.8, each with its log
    line; the null sender is never checked; a host whose policy does not
    check (127.0.0.11) is not checked; custom code/text (127.0.0.12).
    A text starting with '#x.y.z ' gives the reply's enhanced status code
    (the appliance's convention), so the wire shows '553 5.1.8 ...'; a
    custom text without one keeps the default's detail, in the custom
    code's class."""
    moat = moat_factory(conf(
        dns, res=resolver(dns, timeout=2, **{"slow.example": [blackhole]}),
        hats={"IncomingMail": hat(
            policy("CHECKED", access="accept", sender_dns_verification=True),
            policy("CUSTOM", access="accept", sender_dns_verification=True,
                   sender_dns_nxdomain_code=550,
                   sender_dns_nxdomain_text="No such domain <$EnvelopeSender>",
                   sender_dns_tempfail_code=450,
                   sender_dns_tempfail_text="Try later",
                   sender_dns_malformed_code=550,
                   sender_dns_malformed_text="Give a domain"),
            policy("SOFT", access="accept", sender_dns_verification=True,
                   sender_dns_nxdomain_code=451,
                   sender_dns_malformed_code=451),
            group("CHECKED", "CHECKED", ["127.0.0.10"]),
            group("CUSTOM", "CUSTOM", ["127.0.0.12"]),
            group("SOFT", "SOFT", ["127.0.0.61"]))}))
    c, icid, _ = greeted(moat, "127.0.0.10", "ACCEPT", "CHECKED", "127.0.0.10")
    mark = moat.log_mark()
    with c:
        for ok in ("alice@sender-ok.example", "alice@a-only.example", "alice@SENDER-OK.example", ""):
            c.expect("MAIL FROM:<%s>" % ok, "250 2.1.0 Sender ok")
            c.expect("RSET", "250 2.0.0 Reset state")
        cases = [
            ("alice@nxd.example", "553 5.1.8 Domain of sender address <alice@nxd.example> "
             "does not exist", "does not exist"),
            ("alice@nomx.example", "553 5.1.8 Domain of sender address <alice@nomx.example> "
             "does not exist", "does not exist"),
            ("alice@sfail.example", "451 4.1.8 Domain of sender address <alice@sfail.example> "
             "does not resolve", "could not be resolved"),
            ("alice@slow.example", "451 4.1.8 Domain of sender address <alice@slow.example> "
             "does not resolve", "could not be resolved"),
            ("alice@[127.0.0.1]", "553 5.5.4 Domain required for sender address", "missing"),
            ("alice@localhost", "553 5.5.4 Domain required for sender address", "missing"),
        ]
        for sender, reply, why in cases:
            c.expect("MAIL FROM:<%s>" % sender, reply)
            what = {"missing": "envelope sender domain missing",
                    "does not exist": "envelope sender domain does not exist",
                    "could not be resolved": "envelope sender domain could not be resolved"}[why]
            expect_log(moat, "ICID %d Address: <%s> sender rejected, %s"
                       % (icid, sender, what), mark)
        # refused senders start no message
        c.expect("RCPT TO:<u@example.com>", "503 5.5.1 Need MAIL command")
        c.expect("QUIT", "221 2.0.0 Bye")
    assert not [ln for ln in moat.log_lines()[mark:]
                if re.match(r"^MID \d+ ICID %d From: <alice@(nxd|nomx|sfail|slow)" % icid, ln)]
    c, _, _ = greeted(moat, "127.0.0.11", "ACCEPT", "UNKNOWNLIST", "sbrs[none]")
    with c:
        c.expect("MAIL FROM:<alice@nxd.example>", "250 2.1.0 Sender ok")
        c.expect("QUIT", "221 2.0.0 Bye")
    c, _, _ = greeted(moat, "127.0.0.12", "ACCEPT", "CUSTOM", "127.0.0.12")
    with c:
        c.expect("MAIL FROM:<alice@nxd.example>", "550 5.1.8 No such domain <alice@nxd.example>")
        c.expect("MAIL FROM:<alice@sfail.example>", "450 4.1.8 Try later")
        c.expect("MAIL FROM:<alice@[127.0.0.1]>", "550 5.5.4 Give a domain")
        c.expect("MAIL FROM:<alice@sender-ok.example>", "250 2.1.0 Sender ok")
        c.expect("QUIT", "221 2.0.0 Bye")
    # A temporary code with the default (5.x.x) text: the text's '#5.1.8'
    # becomes the enhanced code in the reply's class, never text.
    c, _, _ = greeted(moat, "127.0.0.61", "ACCEPT", "SOFT", "127.0.0.61")
    with c:
        c.expect("MAIL FROM:<alice@nxd.example>", "451 4.1.8 Domain of sender "
                 "address <alice@nxd.example> does not exist")
        c.expect("MAIL FROM:<alice@[127.0.0.1]>",
                 "451 4.5.4 Domain required for sender address")
        c.expect("QUIT", "221 2.0.0 Bye")


def test_per_ip_limit_counts_sessions_still_being_looked_up(moat_factory, dns,
                                                            blackhole):
    """Sessions whose DNS lookups have not answered yet count against the
    per-IP limit: with every policy at max_connections_per_ip = 2 and the
    reverse zone not answering, a third connection from the same address
    is refused at once (421, no lookups), while another address still
    gets in line."""
    limits = {p: policy(p, max_connections_per_ip=2)
              for p in ("TRUSTED", "THROTTLED", "ACCEPTED")}
    moat = moat_factory(conf(
        dns, res=resolver(dns, timeout=5,
                          **{"127.in-addr.arpa": [blackhole]}),
        hats={"IncomingMail": hat(*limits.values())}))
    port = moat.ports["IncomingMail"]
    waiting = [RawSMTP(port, source="127.0.0.62", timeout=10) for _ in range(2)]
    try:
        mark = moat.log_mark()
        with RawSMTP(port, source="127.0.0.62", timeout=10) as c:
            assert c.reply().line == "421 4.3.2 Too many connections, try again later"
        moat.wait_log(r"^New SMTP ICID \d+ interface IncomingMail \(127\.0\.0\.1\) "
                      r"address 127\.0\.0\.62 reverse dns host unknown verified no$",
                      since=mark)
        moat.wait_log(r"^ICID \d+ Receiving Failed: Connection limit exceeded$",
                      since=mark)
        other = RawSMTP(port, source="127.0.0.63", timeout=10)
        waiting.append(other)
        # The two waiting sessions are greeted once their lookups time out.
        for c in waiting:
            assert c.reply().code == 220
    finally:
        for c in waiting:
            c.close()


# ---------------------------------------------------------------------------
# configuration

BASE = (
    'hostname = "gw.test.example";\n'
    'listener "IncomingMail" { type = public; address = "127.0.0.1:2525"; }\n'
    'listener "OutgoingMail" { type = private; address = "127.0.0.1:2526"; '
    'relay_senders = ["127.0.0.1"]; }\n'
    'rat "IncomingMail" { "example.com" = accept; }\n')

# (id, lines appended to BASE; the line marked "#!" is where the error is
# reported, words the message must contain)
BAD = [
    ("unknown-policy",
     ['hat "IncomingMail" {',
      '  sender_group "X" { policy = "NOPE"; senders = ["127.0.0.2"]; }  #!',
      '}'], ["NOPE"]),
    ("duplicate-group",
     ['hat "IncomingMail" {',
      '  sender_group "DUP" { policy = "ACCEPTED"; senders = ["127.0.0.2"]; }',
      '  sender_group "DUP" { policy = "ACCEPTED"; senders = ["127.0.0.3"]; }  #!',
      '}'], ["DUP"]),
    ("duplicate-policy",
     ['hat "IncomingMail" {',
      '  mail_flow_policy "P" { access = accept; }',
      '  mail_flow_policy "P" { access = reject; }  #!',
      '}'], ['"P"']),
    ("unknown-listener",
     ['hat "Nope" {  #!',
      '  sender_group "X" { policy = "ACCEPTED"; senders = ["127.0.0.2"]; }',
      '}'], ["Nope"]),
    ("two-hats",
     ['hat "IncomingMail" { default_policy = "ACCEPTED"; }',
      'hat "IncomingMail" { default_policy = "BLOCKED"; }  #!'], ["IncomingMail"]),
    ("sbrs-range",
     ['hat "IncomingMail" {',
      '  sender_group "X" { policy = "ACCEPTED"; senders = ["sbrs[-1:2]"]; }  #!',
      '}'], ["sbrs"]),
    ("bad-address",
     ['hat "IncomingMail" {',
      '  sender_group "X" { policy = "ACCEPTED"; senders = ["127.0.0.300"]; }  #!',
      '}'], ["127.0.0.300"]),
    ("public-policy-on-private",
     ['hat "OutgoingMail" {',
      '  sender_group "X" { policy = "ACCEPTED"; senders = ["127.0.0.2"]; }  #!',
      '}'], ["ACCEPTED"]),
    ("new-policy-without-access",
     ['hat "IncomingMail" {',
      '  mail_flow_policy "NEW" { max_recipients = 5; }  #!',
      '}'], ["access"]),
    ("bad-access",
     ['hat "IncomingMail" {',
      '  mail_flow_policy "NEW" { access = allow; }  #!',
      '}'], ["allow"]),
    ("bad-dns-verification",
     ['hat "IncomingMail" {',
      '  sender_group "X" { policy = "BLOCKED"; dns_verification = ["no_rdns"]; }  #!',
      '}'], ["no_rdns"]),
    ("unknown-default-policy",
     ['hat "IncomingMail" {',
      '  default_policy = "NOPE2";  #!',
      '}'], ["NOPE2"]),
    ("bad-tls",
     ['hat "IncomingMail" {',
      '  mail_flow_policy "ACCEPTED" { tls = maybe; }  #!',
      '}'], ["maybe"]),
    ("relaylist-senders-twice",
     ['hat "OutgoingMail" {',
      '  sender_group "RELAYLIST" { senders = ["127.0.0.2"]; }  #!',
      '}'], ["RELAYLIST"]),
    ("continue-default-policy",
     ['hat "IncomingMail" {',
      '  mail_flow_policy "GOON" { access = continue; }',
      '  default_policy = "GOON";  #!',
      '}'], ["GOON"]),
    ("banner-code-not-220",
     ['hat "IncomingMail" {',
      '  mail_flow_policy "ACCEPTED" { banner_code = 250; }  #!',
      '}'], ["250"]),
    ("unknown-policy-key",
     ['hat "IncomingMail" {',
      '  mail_flow_policy "ACCEPTED" { max_recipents = 5; }  #!',
      '}'], ["max_recipents"]),
]


def bad_file(tmp_path, lines):
    text = BASE + "".join(ln + "\n" for ln in lines)
    line = next(i for i, ln in enumerate(text.splitlines(), 1) if ln.endswith("#!"))
    f = tmp_path / "moat.conf"
    f.write_text(text)
    return f, line


@pytest.mark.parametrize("lines,words", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_configuration_errors(moatd_bin, tmp_path, lines, words):
    """moatd -t refuses a bad hat block with file:line:column: reason at
    the offending line (the reason names the offending word)."""
    f, line = bad_file(tmp_path, lines)
    r = subprocess.run([str(moatd_bin), "-t", "-c", str(f)],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert r.stdout == ""
    hits = [ln for ln in r.stderr.splitlines()
            if re.match(r"^%s:%d:\d+: " % (re.escape(str(f)), line), ln)]
    assert hits, "no error at line %d:\n%s" % (line, r.stderr)
    assert any(all(w in h for w in words) for h in hits), (words, hits)


def test_configtest_reports_hat_error(moat_factory, dns):
    """moatctl configtest on a running moatd reports a bad hat block with
    file:line and changes nothing; the running configuration still
    serves."""
    moat = moat_factory(conf(dns))
    good = moat.conf_path.read_text()
    bad = good + 'hat "IncomingMail" {\n  sender_group "X" { policy = "NOPE"; }\n}\n'
    line = len(good.splitlines()) + 2
    moat.conf_path.write_text(bad)
    try:
        r = subprocess.run([moat.moatctl_bin, "-s", str(moat.socket), "configtest"],
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 1
        out = r.stdout + r.stderr
        assert re.search(r"^%s:%d:\d+: .*NOPE" % (re.escape(str(moat.conf_path)), line),
                         out, re.M), out
    finally:
        moat.conf_path.write_text(good)
    c, _, _ = greeted(moat, "127.0.0.10", "ACCEPT", "UNKNOWNLIST", "sbrs[none]")
    c.close()


def test_full_configuration_is_valid(moatd_bin, tmp_path):
    """Every HAT, policy and rate-limit key of docs/access.md in one file
    (the SMTP AUTH keys are checked in test_auth.py): moatd -t accepts
    it."""
    f = tmp_path / "moat.conf"
    f.write_text(BASE.replace(
        'listener "IncomingMail" { type = public; address = "127.0.0.1:2525"; }',
        'listener "IncomingMail" { type = public; address = "127.0.0.1:2525";\n'
        '  max_connections_per_ip = 10; max_recipients_per_hour = 0;\n'
        '  banner_text = "$Hostname ready"; }') + """
rate_limit_period = 3600;
hat_reject_at_rcpt = false;
hat "IncomingMail" {
    sender_group "ALLOWED_LIST" { senders = [ "192.0.2.7", "2001:db8::7", "10.0.0.0/8",
        "2001:db8::/32", "10.1.1.10-20", "10.1.1-5.", "10-11", "10.2.3.", "10.2.3",
        "2001:db8::1-2001:db8::ff", "mail.example.com", ".example.net",
        "dnslist[bl.example.org]", "sbrs[none]" ]; comment = "friends"; }
    sender_group "SPAMMERS" { policy = "SPAMMERS"; senders = [ "10.9." ]; }
    sender_group "CHECK" { policy = "BLOCKED";
        dns_verification = [ "no_ptr", "ptr_tempfail", "ptr_mismatch" ]; }
    sender_group "SKIP" { policy = "GOON"; senders = [ "ALL" ]; }
    mail_flow_policy "SPAMMERS" { access = tcprefuse; }
    mail_flow_policy "GOON" { access = continue; }
    mail_flow_policy "ACCEPTED" {
        max_messages_per_connection = 10; max_recipients = 20;
        max_message_size = 1mb; max_connections_per_ip = 5;
        max_recipients_per_hour = 100; rate_limit_code = 452;
        rate_limit_text = "Too many"; banner_code = 220;
        banner_text = "Hello $RemoteIP"; banner_hostname = "mx.example.com";
        reject_code = 554; reject_text = "No $Group";
        sender_dns_verification = true;
        sender_dns_malformed_code = 553; sender_dns_malformed_text = "m";
        sender_dns_nxdomain_code = 553; sender_dns_nxdomain_text = "n";
        sender_dns_tempfail_code = 451; sender_dns_tempfail_text = "t";
        tls = preferred; smtp_auth = off; auth_requires_tls = false;
    }
    default_policy = "BLOCKED";
}
hat "OutgoingMail" {
    sender_group "RELAY_O365" { policy = "RELAYED"; senders = [ ".protection.outlook.com" ];
        comment = "From Microsoft 365 mail to moat"; }
    mail_flow_policy "RELAYED" { tls = preferred; smtp_auth = off; }
}
""")
    r = subprocess.run([str(moatd_bin), "-t", "-c", str(f)],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "moatd: configuration %s is valid\n" % f
