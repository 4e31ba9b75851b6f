"""Self-test of the loopback DNS server harness (dnsserver.DnsServer, a
knotd): the records, the root's NXDOMAIN, the SERVFAIL trick, live reloads
and DNSSEC signing, checked with kdig before any moatd relies on them."""

import pytest

from dnsserver import DnsServer, knot_available, udp_query

pytestmark = pytest.mark.skipif(
    not knot_available(),
    reason="needs Knot DNS (knotd, knotc, kdig: scripts/install-deps.sh test)")

ZONES = {
    "example.net": [
        ("@", "MX", "10 mx1.example.net."),
        ("@", "MX", "20 mx2.example.net."),
        ("mx1", "A", "127.0.0.2"),
        ("mx1", "AAAA", "::2"),
        ("mx2", 300, "A", "127.0.0.3"),
        ("@", "TXT", "v=spf1 ip4:127.0.0.0/8 -all"),
        ("sel._domainkey", "TXT", "v=DKIM1; k=rsa; p=" + "A" * 400),
        ("a.b.c", "A", "127.0.0.4"),
    ],
}


@pytest.fixture
def dns_server(tmp_path):
    """dns_server(zones=None, **kw) -> a started DnsServer under tmp_path;
    all are stopped at teardown (their log is printed: shown on failure)."""
    made = []

    def make(zones=None, **kw):
        d = DnsServer(tmp_path / ("dns%d" % len(made)), zones, **kw)
        made.append(d)
        return d

    yield make
    for d in made:
        print(d.report())
        d.cleanup()


def test_serves_zone_records(dns_server):
    dns = dns_server(ZONES)
    assert dns.host == "127.0.0.1" and dns.address == "127.0.0.1@%d" % dns.port

    mx = dns.query("example.net", "MX")
    assert mx.rcode == "NOERROR" and mx.aa
    assert sorted(mx.rdata("MX")) == ["10 mx1.example.net.", "20 mx2.example.net."]
    assert dns.query("mx1.example.net", "A").rdata() == ["127.0.0.2"]
    assert dns.query("mx1.example.net", "AAAA").rdata() == ["::2"]
    # Default TTL, and a record's own TTL.
    assert dns.query("mx1.example.net", "A").answer[0][2] == dns.ttl
    assert dns.query("mx2.example.net", "A").answer[0][2] == 300
    assert dns.query("example.net", "TXT").rdata() == ['"v=spf1 ip4:127.0.0.0/8 -all"']
    # A long TXT is split into 255-byte strings.
    dkim = dns.query("sel._domainkey.example.net", "TXT").rdata()[0]
    assert dkim.count('" "') == 1 and dkim.replace('" "', "").strip('"') \
        == "v=DKIM1; k=rsa; p=" + "A" * 400
    # TCP too.
    assert dns.query("mx1.example.net", "A", tcp=True).rdata() == ["127.0.0.2"]


def test_negative_answers_are_authoritative(dns_server):
    dns = dns_server(ZONES)
    # Under no configured zone: NXDOMAIN from the root, not REFUSED.
    r = dns.query("nothere.invalid-tld", "A")
    assert r.rcode == "NXDOMAIN" and r.aa
    assert r.authority[0][:2] == (".", "SOA")
    # Inside the zone.
    r = dns.query("nothere.example.net", "MX")
    assert r.rcode == "NXDOMAIN" and r.aa
    assert r.authority[0][:2] == ("example.net.", "SOA")
    # NODATA, and an empty non-terminal.
    for name, rtype in (("mx1.example.net", "MX"), ("b.c.example.net", "A")):
        r = dns.query(name, rtype)
        assert (r.rcode, r.aa, r.answer) == ("NOERROR", True, []), (name, r)
    # "net." is an empty non-terminal of the root (the delegation of
    # example.net), so qname-minimising resolvers go on down.
    r = dns.query("net", "A")
    assert (r.rcode, r.aa) == ("NOERROR", True)
    # The delegation is in the root; knot still answers from the child zone.
    assert dns.query("example.net", "NS").rdata() == ["ns.dns-fixture.invalid."]
    r = dns.query("example.net", "DS")  # DS is asked of the parent
    assert (r.rcode, r.answer) == ("NOERROR", [])
    assert r.authority[0][:2] == (".", "SOA")


def test_servfail(dns_server):
    dns = dns_server(ZONES, servfail=["broken.example", "bad.example.net"])
    for name in ("broken.example", "x.y.broken.example", "bad.example.net",
                 "x.bad.example.net"):
        assert dns.query(name, "MX").rcode == "SERVFAIL", name
    # The parent zone still answers for the rest.
    assert dns.query("example.net", "MX").rcode == "NOERROR"

    # A served zone made to fail, and repaired.
    dns.set_servfail("example.net")
    assert dns.query("example.net", "MX").rcode == "SERVFAIL"
    assert dns.query("mx1.example.net", "A").rcode == "SERVFAIL"
    dns.set_servfail("example.net", False)
    assert dns.query("mx1.example.net", "A").rdata() == ["127.0.0.2"]

    # A failing zone given records and repaired.
    dns.set_zone("broken.example", [("@", "MX", "0 .")])
    assert dns.query("broken.example", "MX").rcode == "SERVFAIL"
    dns.set_servfail("broken.example", False)
    assert dns.query("broken.example", "MX").rdata() == ["0 ."]


def test_reload_changes_what_is_served(dns_server):
    dns = dns_server(ZONES)
    serial = dns.serial

    dns.set_zone("example.net", [("@", "MX", "5 other.example.org.")])
    assert dns.serial > serial
    assert dns.query("example.net", "MX").rdata() == ["5 other.example.org."]
    assert dns.query("mx1.example.net", "A").rcode == "NXDOMAIN"

    dns.set_zone("example.org", [("other", "A", "127.0.0.9")])
    assert dns.query("other.example.org", "A").rdata() == ["127.0.0.9"]

    dns.remove_zone("example.net")
    r = dns.query("example.net", "MX")
    assert (r.rcode, r.authority[0][0]) == ("NXDOMAIN", ".")

    # Replace everything at once, records in the root zone too.
    dns.reload({".": [("example.", "TXT", "in the root")],
                "example.com": [("@", "A", "127.0.0.5")]}, servfail=["example.org"])
    assert set(dns.zones) == {".", "example.com."}
    assert dns.query("example.", "TXT").rdata() == ['"in the root"']
    assert dns.query("example.com", "A").rdata() == ["127.0.0.5"]
    assert dns.query("other.example.org", "A").rcode == "SERVFAIL"
    assert dns.query("example.net", "MX").rcode == "NXDOMAIN"


def test_stop_frees_the_port(dns_server):
    dns = dns_server({})
    assert dns.query("example.net", "MX").rcode == "NXDOMAIN"
    assert dns.stop() == 0
    assert udp_query(dns.host, dns.port, "example.net", 15, timeout=0.3) is None
    dns.start()  # same files, same port
    assert dns.query("example.net", "MX").rcode == "NXDOMAIN"


def test_long_work_directory(tmp_path):
    # The control socket falls back to a short path when needed.
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    dns = DnsServer(deep, ZONES)
    try:
        assert len(str(dns.workdir)) > 108
        dns.set_zone("example.net", [("@", "MX", "1 x.example.net.")])
        assert dns.query("example.net", "MX").rdata() == ["1 x.example.net."]
    finally:
        dns.cleanup()


def test_dnssec_signed_chain(dns_server):
    dns = dns_server(dict(ZONES, **{"plain.example": [("@", "A", "127.0.0.6")]}),
                     dnssec=True, unsigned=["plain.example"])
    ta = dns.trust_anchor
    assert ta.startswith(". DS ") and ta.split()[4] == "2"
    r = dns.query("example.net", "MX", dnssec=True)
    assert r.rcode == "NOERROR" and "RRSIG" in {rr[1] for rr in r.answer}
    # The root holds the child's DS, signed.
    r = dns.query("example.net", "DS", dnssec=True)
    assert {rr[1] for rr in r.answer} == {"DS", "RRSIG"}
    # An unsigned zone: delegation without DS.
    assert dns.query("plain.example", "DS").answer == []
    assert dns.query("plain.example", "A", dnssec=True).rdata() == ["127.0.0.6"]
    assert "RRSIG" not in {rr[1] for rr in
                           dns.query("plain.example", "A", dnssec=True).answer}
    # A zone added later gets its DS in the root too.
    dns.set_zone("example.org", [("@", "MX", "0 .")])
    assert dns.query("example.org", "DS").rdata("DS")
