"""Outbound STARTTLS per destination: the six TLS settings of the
destination controls table (seed 003) against real TLS next hops.

The next hops:

- a private Postfix (bench/postfix-peer.sh, "hold" mode: it accepts and
  keeps every message) with one smtpd service per kind of certificate:
  ``notls``    STARTTLS not offered (smtpd_tls_security_level = none)
  ``selfsigned``  a self-signed certificate for ``*.selfsigned.test``
  ``expired``  signed by the test CA, for ``*.expired.test``, expired in 2020
  ``wrongname``   signed by the test CA, for ``other.example`` only
  ``good``     signed by the test CA, for ``*.good.test`` and ``localhost``
- FaultSinks (smtpsink.py) for the two failures Postfix will not stage:
  ``refuses``  offers STARTTLS and answers it ``454 4.7.0``
  ``breaks``   offers STARTTLS, answers ``220`` and closes the connection
  (the handshake fails after the 220).

Every recipient domain is ``MODE.SERVER.test``: an SMTP route
``.SERVER.test`` leads to the server and a destination row sets the TLS
mode, so one moatd delivers the whole matrix (one message per cell) in one
run. The test CA is trusted through ``delivery { tls_ca_file }``. What
each cell must come to (delivered encrypted, delivered in plaintext, or
deferred with the message kept) is the table in docs/delivery.md.
"""

import re
import shutil
import subprocess
import types

import pytest

from conftest import PostfixPeer, free_port, postfix_available
from delivery_fixtures import (  # noqa: F401  (fixtures)
    delivery_conf, grep, message, sinks, submit, wait_until)
from smtpsink import FaultSink
from tlspki import ca_sign, openssl

MODES = {
    "no": "no",
    "pref": "preferred",
    "req": "required",
    "prefv": "preferred_verify",
    "reqv": "required_verify",
    "reqvh": "required_verify_hosted",
}
SERVERS = ["notls", "refuses", "breaks", "selfsigned", "expired", "wrongname",
           "good"]

# What each cell comes to: "tls" (delivered encrypted, certificate
# verified where the mode checks it), "tls-unverified" (delivered
# encrypted, check failed), "plain" (delivered without TLS), "defer".
D, P, T, U = "defer", "plain", "tls", "tls-unverified"
EXPECTED = {
    #              no  pref req  prefv reqv reqvh
    "notls":      [P,  P,   D,   P,    D,   D],
    "refuses":    [P,  P,   D,   P,    D,   D],
    "breaks":     [P,  D,   D,   D,    D,   D],
    "selfsigned": [P,  T,   T,   U,    D,   D],
    "expired":    [P,  T,   T,   U,    D,   D],
    "wrongname":  [P,  T,   T,   U,    D,   D],
    "good":       [P,  T,   T,   T,    T,   T],
}


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is not installed")
    d = tmp_path_factory.mktemp("outpki")
    p = types.SimpleNamespace(dir=d)
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha256",
             "-days", "3", "-keyout", "ca.key", "-out", "ca.pem",
             "-subj", "/CN=moat outbound test CA",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)
    p.ca = d / "ca.pem"
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha256",
             "-days", "3", "-keyout", "selfsigned.key", "-out", "selfsigned.pem",
             "-subj", "/CN=mx.selfsigned.test",
             "-addext", "subjectAltName=DNS:*.selfsigned.test", cwd=d)
    p.selfsigned = (d / "selfsigned.pem", d / "selfsigned.key")
    p.expired = ca_sign(d, "expired", "mx.expired.test", "DNS:*.expired.test",
                         ("20200101000000Z", "20200201000000Z"))
    p.wrongname = ca_sign(d, "wrongname", "other.example", "DNS:other.example")
    p.good = ca_sign(d, "good", "mx.good.test",
                      "DNS:*.good.test, DNS:localhost")
    return p


class TlsPostfix:
    """One private Postfix with an smtpd service per certificate kind."""

    KINDS = ["selfsigned", "expired", "wrongname", "good"]

    def __init__(self, pki):
        self.pf = PostfixPeer("hold")
        self.ports = {"notls": self.pf.port}
        certs = self.pf.dir / "certs"
        certs.mkdir()
        lines = []
        for kind in self.KINDS:
            crt, key = getattr(pki, kind)
            shutil.copy(crt, certs / (kind + ".pem"))
            shutil.copy(key, certs / (kind + ".key"))
            (certs / (kind + ".key")).chmod(0o600)
            port = free_port()
            self.ports[kind] = port
            lines.append(
                "127.0.0.1:%d inet n - n - - smtpd\n"
                "  -o smtpd_tls_security_level=may\n"
                "  -o smtpd_tls_cert_file=%s/%s.pem\n"
                "  -o smtpd_tls_key_file=%s/%s.key\n"
                "  -o smtpd_tls_loglevel=1\n"
                % (port, certs, kind, certs, kind))
        with open(self.pf.dir / "etc" / "master.cf", "a") as f:
            f.write("".join(lines))
        self.pf.start()
        for kind in self.KINDS:
            ok = wait_until(lambda: _listening(self.ports[kind]), timeout=10)
            assert ok, "Postfix service %s not listening" % kind

    def maillog(self):
        return self.pf.maillog()

    def cleanup(self):
        self.pf.cleanup()


def _listening(port):
    import socket
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def _route_for(servers, name):
    return "127.0.0.1:%d" % servers[name]


def matrix_conf(ports, ca, extra_dests=None):
    routes = {".%s.test" % s: _route_for(ports, s) for s in SERVERS}
    dests = {"%s.%s.test" % (m, s): {"tls": mode}
             for s in SERVERS for m, mode in MODES.items()}
    dests.update(extra_dests or {})
    return delivery_conf(
        routes, destinations=dests,
        delivery={"tls_ca_file": str(ca)},
        # A deferred message waits an hour: one attempt per cell.
        profiles={"Default": {"initial_retry": 3600,
                              "max_retry_timeout": 3600}})


@pytest.fixture(scope="module")
def tls_postfix(pki):
    if not postfix_available():
        pytest.skip("needs root and Postfix")
    pf = TlsPostfix(pki)
    yield pf
    pf.cleanup()


@pytest.fixture(scope="module")
def matrix(request, pki, tls_postfix, module_moat_factory):
    """Send one message per (server, mode) cell and wait for every one to
    be delivered or deferred. Returns per-cell outcomes and log lines."""
    pf = tls_postfix
    refuses = FaultSink(capabilities=("PIPELINING", "8BITMIME", "STARTTLS"))
    breaks = FaultSink(capabilities=("PIPELINING", "8BITMIME", "STARTTLS"))
    breaks.on("STARTTLS", "220 2.0.0 Ready to start TLS", action="reply_close")
    ports = dict(pf.ports, refuses=refuses.port, breaks=breaks.port)
    try:
        moat = module_moat_factory(matrix_conf(ports, pki.ca))
        mids = {}
        for s in SERVERS:
            for m in MODES:
                dom = "%s.%s.test" % (m, s)
                mids[(s, m)] = submit(moat, "sender@src.example",
                                      "user@" + dom,
                                      message(subject=dom, to="user@" + dom))

        def settled():
            text = "\n".join(moat.log_lines())
            return all(re.search(r"Message done DCID \d+ MID %d |"
                                 r"Delayed: DCID \d+ MID %d " % (mid, mid), text)
                       for mid in mids.values())
        ok = wait_until(settled, timeout=60, step=0.2)
        assert ok, moat.report(60)
        yield types.SimpleNamespace(moat=moat, mids=mids, pf=pf,
                                    refuses=refuses, breaks=breaks,
                                    lines=moat.log_lines())
    finally:
        refuses.stop()
        breaks.stop()


def cell_outcome(mx, server, mode):
    """(outcome, dcid lines) of one cell, from moat's log."""
    mid = mx.mids[(server, mode)]
    dom = "%s.%s.test" % (mode, server)
    lines = mx.lines
    done = [ln for ln in lines if re.search(r"Message done DCID (\d+) MID %d " % mid, ln)]
    delayed = [ln for ln in lines if re.search(r"Delayed: DCID (\d+) MID %d " % mid, ln)]
    if delayed and not done:
        dcid = re.search(r"DCID (\d+)", delayed[0]).group(1)
        return "defer", [ln for ln in lines if re.search(r"\bDCID %s\b" % dcid, ln)], delayed
    assert done, "MID %d neither delivered nor deferred" % mid
    dcid = re.search(r"DCID (\d+)", done[0]).group(1)
    dl = [ln for ln in lines if re.search(r"\bDCID %s\b" % dcid, ln)]
    ok = [ln for ln in dl if re.fullmatch(
        r"DCID %s TLS success protocol TLSv1\.[23] cipher \S+ for %s"
        % (dcid, re.escape(dom)), ln)]
    unverified = [ln for ln in dl if "TLS certificate not verified for %s" % dom in ln]
    if not ok:
        return "plain", dl, done
    return ("tls-unverified" if unverified else "tls"), dl, done


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("server", SERVERS)
def test_tls_matrix(matrix, server, mode):
    want = EXPECTED[server][list(MODES).index(mode)]
    got, dl, _ = cell_outcome(matrix, server, mode)
    assert got == want, "%s / %s: %s, wanted %s\n%s" % (
        server, mode, got, want, "\n".join(dl))
    required = mode in ("req", "reqv", "reqvh")
    if want == "defer":
        dom = "%s.%s.test" % (mode, server)
        mid = matrix.mids[(server, mode)]
        # The message is kept (not bounced) and says why.
        delayed = [ln for ln in matrix.lines
                   if re.match(r"Delayed: DCID \d+ MID %d to RID 0 - 4\.7\.[45] - "
                               r"(Cryptographic failure|Security features not "
                               r"supported) \('000', \['.*TLS" % mid, ln)]
        assert delayed, "\n".join(dl)
        assert not any(re.search(r"Bounced: .*MID %d " % mid, ln) for ln in matrix.lines)
        assert any(re.search(r"DCID \d+ TLS failed: ", ln) for ln in dl), dl
        if required:
            assert any(re.fullmatch(r"DCID \d+ IP 127\.0\.0\.1 TLS was required but "
                                    r"could not be successfully negotiated", ln)
                       for ln in dl), dl
        assert dom
    if want.startswith("tls"):
        assert any(re.fullmatch(r"TLS processing time client side: \d+\.\d{9}", ln)
                   for ln in matrix.lines)


def test_tls_failure_reasons(matrix):
    """The TLS failed lines say what went wrong, per kind of failure."""
    def failed(server, mode):
        _, dl, _ = cell_outcome(matrix, server, mode)
        return [ln for ln in dl if " TLS failed: " in ln]
    assert any("STARTTLS not offered" in ln for ln in failed("notls", "req"))
    assert any(re.search(r"STARTTLS unexpected response: 454 4\.7\.0 TLS not available", ln)
               for ln in failed("refuses", "req"))
    # Preferred: the refusal is logged, the message goes in plaintext.
    assert any("STARTTLS unexpected response" in ln for ln in failed("refuses", "pref"))
    assert any("connection closed during the TLS handshake" in ln
               or "TLS handshake failed" in ln for ln in failed("breaks", "pref"))
    assert any("verify error: 18:self-signed certificate" in ln
               or "verify error: 18:self signed certificate" in ln
               for ln in failed("selfsigned", "reqv")), failed("selfsigned", "reqv")
    assert any("verify error: 10:certificate has expired" in ln
               for ln in failed("expired", "reqv")), failed("expired", "reqv")
    assert any("verify error: 62:hostname mismatch" in ln
               for ln in failed("wrongname", "reqvh")), failed("wrongname", "reqvh")


def test_server_side_saw_tls(matrix):
    """Postfix logged the encrypted sessions; the FaultSinks were sent
    STARTTLS by every mode but No."""
    log = matrix.pf.maillog()
    assert re.search(r"TLS connection established from \S+\[127\.0\.0\.1\]", log), \
        log[-3000:]
    for sink, name in ((matrix.refuses, "refuses"), (matrix.breaks, "breaks")):
        conns = sink.connections
        plain = [c for c in conns
                 if any(("no.%s.test" % name) in cmd.lower() for cmd in c.commands)]
        assert plain and all("STARTTLS" not in c.verbs for c in plain), plain
        assert sum("STARTTLS" in c.verbs for c in conns) == 5, [c.verbs for c in conns]


def test_status_counts_outbound_tls(matrix):
    r = matrix.moat.ctl("status")
    m = re.search(r"Outbound TLS Handshakes\s+(\d+)", r.stdout)
    assert m and int(m.group(1)) == 14, r.stdout
    m = re.search(r"Outbound TLS Failures\s+(\d+)", r.stdout)
    assert m and int(m.group(1)) == 17, r.stdout


def test_verify_accepts_route_host_name(pki, tls_postfix, moat_factory):
    """Required - Verify accepts a certificate naming the next hop (here
    the SMTP route's host name, localhost); Required - Verify Hosted
    Domains accepts only the recipient domain, so the same server fails
    it."""
    port = tls_postfix.ports["good"]
    conf = delivery_conf({".hostname.test": "localhost:%d" % port},
                         destinations={"reqv.hostname.test": {"tls": "required_verify"},
                                       "reqvh.hostname.test":
                                           {"tls": "required_verify_hosted"}},
                         delivery={"tls_ca_file": str(pki.ca)},
                         profiles={"Default": {"initial_retry": 3600,
                                               "max_retry_timeout": 3600}})
    moat = moat_factory(conf)
    ok_mid = submit(moat, "s@src.example", "u@reqv.hostname.test")
    bad_mid = submit(moat, "s@src.example", "u@reqvh.hostname.test")
    assert wait_until(lambda: grep(moat, r"Message done DCID \d+ MID %d " % ok_mid)
                      and grep(moat, r"Delayed: DCID \d+ MID %d " % bad_mid),
                      timeout=20), moat.report(40)
    assert grep(moat, r"TLS success protocol \S+ cipher \S+ for reqv\.hostname\.test$")
    assert grep(moat, r"TLS failed: verify error: 62:hostname mismatch$")
    assert grep(moat, r"Delayed: DCID \d+ MID %d to RID 0 - 4\.7\.5 - Cryptographic "
                      r"failure \('000', \['localhost\[127\.0\.0\.1\]:%d: TLS was "
                      r"required but could not be successfully negotiated: verify "
                      r"error: 62:hostname mismatch'\]\)" % (bad_mid, port))


def test_untrusted_without_ca_file(pki, tls_postfix, moat_factory):
    """Without tls_ca_file the test CA is not trusted (only the system
    store is): Required - Verify to the good server is deferred, with the
    chain error; tls = required still delivers."""
    port = tls_postfix.ports["good"]
    conf = delivery_conf({".good.test": "127.0.0.1:%d" % port},
                         destinations={"a.good.test": {"tls": "required_verify"},
                                       "b.good.test": {"tls": "required"}},
                         profiles={"Default": {"initial_retry": 3600,
                                               "max_retry_timeout": 3600}})
    moat = moat_factory(conf)
    a = submit(moat, "s@src.example", "u@a.good.test")
    b = submit(moat, "s@src.example", "u@b.good.test")
    assert wait_until(lambda: grep(moat, r"Delayed: DCID \d+ MID %d " % a)
                      and grep(moat, r"Message done DCID \d+ MID %d " % b),
                      timeout=20), moat.report(40)
    assert grep(moat, r"TLS failed: verify error: 20:unable to get local issuer "
                      r"certificate$")


def test_bad_ca_file_refused(moat_factory, tmp_path):
    """A tls_ca_file that does not load stops moatd -t and a commit."""
    bad = tmp_path / "ca.pem"
    bad.write_text("not a certificate\n")
    moat = moat_factory(delivery_conf({}))
    text = moat.conf_text
    moat.configure(delivery_conf({}, delivery={"tls_ca_file": str(bad)}))
    r = moat.ctl("commit")
    assert r.returncode != 0
    assert "Configuration refused" in r.stdout + r.stderr
    assert re.search(r"delivery: tls_ca_file \"%s\": " % re.escape(str(bad)),
                     r.stdout + r.stderr), r.stdout + r.stderr
    r = subprocess.run([moat.moatd_bin, "-t", "-c", str(moat.conf_path)],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode != 0 and "tls_ca_file" in r.stderr, r.stderr
    assert text


def test_server_injection_after_220(moat_factory, sinks):
    """A server that sends more behind its 220 to STARTTLS (the server
    side of STARTTLS injection): those bytes are not taken as TLS, nor as
    replies; the connection fails and the message waits (tls = required),
    or, with tls = preferred, too: a failure after the 220 never falls back
    to plaintext."""
    sink = sinks(capabilities=("PIPELINING", "STARTTLS"))
    sink.on("STARTTLS", b"220 2.0.0 Ready\r\n250 2.0.0 injected\r\n")
    conf = delivery_conf({".inj.example": sink.hostport},
                         destinations={"req.inj.example": {"tls": "required"},
                                       "pref.inj.example": {"tls": "preferred"}},
                         profiles={"Default": {"initial_retry": 3600,
                                               "max_retry_timeout": 3600}})
    moat = moat_factory(conf)
    a = submit(moat, "s@src.example", "u@req.inj.example")
    b = submit(moat, "s@src.example", "u@pref.inj.example")
    assert wait_until(lambda: grep(moat, r"Delayed: DCID \d+ MID %d " % a)
                      and grep(moat, r"Delayed: DCID \d+ MID %d " % b),
                      timeout=20), moat.report(40)
    assert len(grep(moat, r"TLS failed: the server sent data after its 220 reply "
                          r"to STARTTLS$")) == 2
    assert sink.messages == []


def test_commit_while_connecting_keeps_tls_context(moat_factory, sinks):
    """A commit replaces the TLS client context while a connection is
    still waiting for its greeting: that connection keeps its own
    reference and starts its handshake with it after the commit (an ASan
    build would catch a freed context)."""
    slow = sinks(capabilities=("PIPELINING", "STARTTLS"))
    slow.on("CONNECT", delay=1.5)
    slow.on("STARTTLS", "220 2.0.0 Ready", action="reply_close")
    conf = delivery_conf({"slow.example": slow.hostport},
                         destinations={"slow.example": {"tls": "preferred"}},
                         profiles={"Default": {"initial_retry": 3600,
                                               "max_retry_timeout": 3600}})
    moat = moat_factory(conf)
    mid = submit(moat, "s@src.example", "u@slow.example")
    assert wait_until(lambda: slow.connection_count == 1, timeout=10)
    conf["delivery"]["tls_ciphers"] = "HIGH:!aNULL"
    moat.configure(conf)
    r = moat.ctl("commit")
    assert r.returncode == 0, r.stdout + r.stderr
    assert wait_until(lambda: grep(moat, r"Delayed: DCID \d+ MID %d " % mid),
                      timeout=20), moat.report(40)
    # The handshake began after the commit, with the old context.
    lines = moat.log_lines()
    commit = max(i for i, ln in enumerate(lines) if "committed" in ln)
    failed = [i for i, ln in enumerate(lines)
              if ln.endswith("TLS failed: connection closed during the TLS handshake")]
    assert failed and failed[0] > commit, lines[-20:]
