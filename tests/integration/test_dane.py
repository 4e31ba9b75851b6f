"""DANE on delivery (RFC 7672) against a DNSSEC-signed zone served by knotd
on loopback (dnsserver.py, ``dnssec=True``: the root and every zone signed,
DS records in the parents, the root's DS as moat's only trust anchor) and
Postfix as the next hop on 127.x.y.z:25 (MX delivery: DANE is not used
for SMTP routes).

The signed zone ``dane.example`` holds one recipient domain per case, each
with its own MX host and address:

  ee.dane.example        TLSA 3 1 1 (DANE-EE) of the server's key: match
  ta.dane.example        TLSA 2 0 1 (DANE-TA) of the test CA; the server
                         sends its chain and its certificate names the MX
  mismatch.dane.example  TLSA 3 1 1 of another key: no match
  notlsa.dane.example    no TLSA record (a signed denial)
  pkix.dane.example      only a PKIX-EE (usage 1) record: unusable for SMTP

and the unsigned zone ``plain.example`` (an insecure delegation) has
``insecure.plain.example``. Each case is sent with ``dane = opportunistic``
and ``dane = mandatory`` (domains ``o.CASE`` and ``m.CASE``), the
destination's tls being ``no`` so that any TLS seen comes from DANE.
"""

import hashlib
import re
import shutil
import socket
import subprocess
import types

import pytest

from conftest import PostfixPeer, postfix_available
from delivery_fixtures import (delivery_conf, grep, loopback_addr, message,
                               submit, wait_until)
from dnsserver import knot_available
from tlspki import ca_sign, openssl

CASES = ["ee", "ta", "mismatch", "notlsa", "pkix", "insecure"]

# (opportunistic, mandatory) outcome per case: "dane" (delivered over TLS
# authenticated by TLSA), "plain" (delivered as tls = no says), "tls"
# (delivered over unauthenticated TLS), "defer".
EXPECTED = {
    "ee": ("dane", "dane"),
    "ta": ("dane", "dane"),
    "mismatch": ("defer", "defer"),
    "notlsa": ("plain", "defer"),
    "pkix": ("tls", "tls"),
    "insecure": ("plain", "defer"),
}


def _domain(case, mode):
    zone = "plain.example" if case == "insecure" else "dane.example"
    return "%s.%s.%s" % (mode, case, zone)


def _spki_sha256(pem):
    der = subprocess.run(
        "openssl x509 -in %s -pubkey -noout | openssl pkey -pubin -outform DER"
        % pem, shell=True, capture_output=True, check=True).stdout
    return hashlib.sha256(der).hexdigest()


def _cert_sha256(pem):
    der = subprocess.run(["openssl", "x509", "-in", str(pem), "-outform", "DER"],
                         capture_output=True, check=True).stdout
    return hashlib.sha256(der).hexdigest()


@pytest.fixture(scope="module")
def dane_env(tmp_path_factory):
    if not postfix_available() or not knot_available():
        pytest.skip("needs root, Postfix and Knot DNS")
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command")
    d = tmp_path_factory.mktemp("danepki")
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha256",
             "-days", "3", "-keyout", "ca.key", "-out", "ca.pem",
             "-subj", "/CN=moat DANE test CA",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)
    hosts = ["mx-%s.dane.example" % c for c in CASES[:-1]] + ["mx.plain.example"]
    crt, key = ca_sign(d, "server", "mx-ee.dane.example",
                        ", ".join("DNS:" + h for h in hosts))
    chain = d / "chain.pem"
    chain.write_text(crt.read_text() + (d / "ca.pem").read_text())
    openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048",
             "-out", "other.key", cwd=d)
    openssl("req", "-x509", "-key", "other.key", "-out", "other.pem",
             "-subj", "/CN=other", "-days", "3", cwd=d)
    ips = {c: loopback_addr() for c in CASES}

    pf = PostfixPeer("hold")
    certs = pf.dir / "certs"
    certs.mkdir()
    shutil.copy(chain, certs / "chain.pem")
    shutil.copy(key, certs / "server.key")
    (certs / "server.key").chmod(0o600)
    with open(pf.dir / "etc" / "master.cf", "a") as f:
        for c in CASES:
            f.write("%s:25 inet n - n - - smtpd\n"
                    "  -o smtpd_tls_security_level=may\n"
                    "  -o smtpd_tls_cert_file=%s/chain.pem\n"
                    "  -o smtpd_tls_key_file=%s/server.key\n"
                    % (ips[c], certs, certs))
    pf.start()
    for c in CASES:
        ok = wait_until(lambda: _listening(ips[c]), timeout=10)
        assert ok, "Postfix not listening on %s:25" % ips[c]

    ee = _spki_sha256(crt)
    zone = []
    for c in CASES[:-1]:
        mx = "mx-%s" % c
        for mode in ("o", "m"):
            zone.append(("%s.%s" % (mode, c), "MX", "10 %s.dane.example." % mx))
        zone.append((mx, "A", ips[c]))
    zone += [("_25._tcp.mx-ee", "TLSA", "3 1 1 " + ee),
             ("_25._tcp.mx-ta", "TLSA", "2 0 1 " + _cert_sha256(d / "ca.pem")),
             ("_25._tcp.mx-mismatch", "TLSA", "3 1 1 " + _spki_sha256(d / "other.pem")),
             ("_25._tcp.mx-pkix", "TLSA", "1 1 1 " + ee)]
    plain = [("o.insecure", "MX", "10 mx.plain.example."),
             ("m.insecure", "MX", "10 mx.plain.example."),
             ("mx", "A", ips["insecure"]),
             ("_25._tcp.mx", "TLSA", "3 1 1 " + ee)]
    from dnsserver import DnsServer
    dns = DnsServer(d / "dns", {"dane.example": zone, "plain.example": plain},
                    dnssec=True, unsigned=["plain.example"])
    try:
        yield types.SimpleNamespace(dns=dns, pf=pf, ips=ips, dir=d)
    finally:
        dns.cleanup()
        pf.cleanup()


def _listening(ip):
    try:
        socket.create_connection((ip, 25), timeout=1).close()
        return True
    except OSError:
        return False


def dane_conf(env, dests, **kw):
    resolver = {"resolv_conf": "", "stub_zones": {".": [env.dns.address]},
                "timeout": 5, "trust_anchor_file": "",
                "trust_anchors": [env.dns.trust_anchor]}
    return delivery_conf({}, resolver=resolver, destinations=dests,
                         profiles={"Default": {"initial_retry": 3600,
                                               "max_retry_timeout": 3600}},
                         **kw)


@pytest.fixture(scope="module")
def dane_run(dane_env, module_moat_factory):
    dests = {}
    for c in CASES:
        dests[_domain(c, "o")] = {"dane": "opportunistic", "tls": "no"}
        dests[_domain(c, "m")] = {"dane": "mandatory", "tls": "no"}
    moat = module_moat_factory(dane_conf(dane_env, dests))
    mids = {}
    for c in CASES:
        for mode in ("o", "m"):
            dom = _domain(c, mode)
            mids[(c, mode)] = submit(moat, "s@src.example", "u@" + dom,
                                     message(subject=dom, to="u@" + dom))

    def settled():
        text = "\n".join(moat.log_lines())
        return all(re.search(r"Message done DCID \d+ MID %d |Delayed: DCID \d+ MID %d "
                             % (m, m), text) for m in mids.values())
    assert wait_until(settled, timeout=60, step=0.2), moat.report(80)
    return types.SimpleNamespace(moat=moat, mids=mids, lines=moat.log_lines())


def outcome(run, case, mode):
    mid = run.mids[(case, mode)]
    lines = run.lines
    done = [ln for ln in lines if re.search(r"Message done DCID (\d+) MID %d " % mid, ln)]
    if not done:
        return "defer", [ln for ln in lines if "MID %d " % mid in ln]
    dcid = re.search(r"DCID (\d+)", done[0]).group(1)
    dl = [ln for ln in lines if re.search(r"\bDCID %s\b" % dcid, ln)]
    tls = any(" TLS success " in ln for ln in dl)
    dane = any(re.fullmatch(r"DCID %s DANE success for mx-%s\.dane\.example: "
                            r"DANE-(EE|TA) record matched" % (dcid, case), ln)
               for ln in dl)
    return ("dane" if dane else "tls" if tls else "plain"), dl


@pytest.mark.parametrize("mode", ["o", "m"])
@pytest.mark.parametrize("case", CASES)
def test_dane_outcome(dane_run, case, mode):
    want = EXPECTED[case][0 if mode == "o" else 1]
    got, lines = outcome(dane_run, case, mode)
    assert got == want, "%s/%s: %s, wanted %s\n%s" % (case, mode, got, want,
                                                      "\n".join(lines))
    if want == "defer":
        mid = dane_run.mids[(case, mode)]
        assert any(re.match(r"Delayed: DCID \d+ MID %d to RID 0 - 4\.7\.5 - "
                            r"Cryptographic failure" % mid, ln)
                   for ln in dane_run.lines), lines


def test_dane_log_reasons(dane_run):
    text = "\n".join(dane_run.lines)
    assert re.search(r"DANE verification failed: 65:no matching DANE TLSA records", text), \
        text[-4000:]
    assert re.search(r"DANE failed for mx-notlsa\.dane\.example \(127\.[\d.]+\): DANE is "
                     r"mandatory: no TLSA record for mx-notlsa\.dane\.example", text)
    assert re.search(r"DANE not used for o\.notlsa\.dane\.example "
                     r"\(mx-notlsa\.dane\.example\): no TLSA record; TLS as configured",
                     text)
    assert re.search(r"DANE failed for mx\.plain\.example \(127\.[\d.]+\): DANE is "
                     r"mandatory: the MX or address records of mx\.plain\.example are "
                     r"not DNSSEC-validated", text)


def test_dane_not_for_smtp_routes(dane_env, moat_factory):
    """A route to the mismatching host: DANE is not looked at (the
    destination's tls = no applies), as on the appliance."""
    ip = dane_env.ips["mismatch"]
    conf = dane_conf(dane_env, {"routed.example": {"dane": "mandatory", "tls": "no"}})
    conf[("smtp_route", "routed.example")] = {"hosts": ["%s:25" % ip]}
    moat = moat_factory(conf)
    mid = submit(moat, "s@src.example", "u@routed.example")
    assert wait_until(lambda: grep(moat, r"Message done DCID \d+ MID %d " % mid),
                      timeout=20), moat.report(40)
    assert not grep(moat, r"DANE")


def test_dane_without_trust_anchor_refused(dane_env, moat_factory):
    """dane set and no trust anchor at all: moatd -t, start-up and commit
    refuse the configuration, naming the destination."""
    conf = dane_conf(dane_env, {_domain("ee", "o"): {"dane": "opportunistic"}})
    conf["resolver"]["trust_anchors"] = []
    moat = moat_factory(conf, start=False)
    r = subprocess.run([moat.moatd_bin, "-t", "-c", str(moat.conf_path)],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode != 0
    assert re.search(r"destination o\.ee\.dane\.example: dane needs a DNSSEC trust "
                     r"anchor", r.stderr), r.stderr
    # A running moatd keeps its configuration when a commit adds it.
    good = dane_conf(dane_env, {})
    moat.configure(good)
    moat.start()
    moat.configure(conf)
    r = moat.ctl("commit")
    assert r.returncode != 0 and "dane needs a DNSSEC trust anchor" in r.stdout + r.stderr
    conf["resolver"]["trust_anchor_file"] = "/nonexistent/root.key"
    moat.configure(conf)
    r = moat.ctl("commit")
    assert r.returncode != 0 and "/nonexistent/root.key: No such file" in r.stdout + r.stderr
