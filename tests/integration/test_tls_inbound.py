"""Inbound STARTTLS (RFC 3207) on moatd's listeners, seen from the wire.

What is checked, with the exact SMTP replies and mail log lines:

- offering: EHLO says ``250-STARTTLS`` to hosts whose mail flow policy has
  ``tls = preferred`` or ``required`` (set in a HAT policy or on the
  listener as a default), and not once the session is encrypted;
  ``STARTTLS`` answers ``220 2.0.0 Ready to start TLS``, ``501`` with
  arguments, ``502 5.5.1 STARTTLS not available`` where it is not offered,
  ``503 5.5.1 Bad sequence of commands`` inside TLS or a transaction;
- the reset after the handshake (EHLO again; MAIL first gets ``503 5.5.1
  Send EHLO or HELO first``), ``with ESMTPS`` in the Received: header;
- the log lines::

      ICID 5 TLS success protocol TLSv1.3 cipher TLS_AES_256_GCM_SHA384
      ICID 5 TLS failed: error:0A00009C:SSL routines::http request
      ICID 5 TLS was required but remote host did not initiate it
      ICID 5 STARTTLS: 6 byte(s) sent before the TLS handshake discarded

- STARTTLS command injection (CVE-2011-0411): plaintext pipelined after
  STARTTLS is dropped, never run inside TLS;
- ``tls = required`` (``530 5.7.0 Must issue a STARTTLS command first``)
  and ``tls_mandatory_senders``;
- certificates: the self-signed demo certificate (warning in the log and in
  ``moatctl status``), a configured certificate and key (verified by the
  client against a test CA), start-up and ``moatctl commit`` refusing
  certificates that do not load;
- ``tls_min_protocol``, ``tls_ciphers``, client certificates
  (``tls_verify_client`` + ``tls_client_ca``), ``auth_requires_tls``;
- independent clients: ``openssl s_client -starttls smtp`` and
  ``swaks --tls``.

The test PKI (a server CA, a server certificate for gw.test.example, a
second key, a client CA and client certificates) is made once per test run
with the ``openssl`` command. Every client talks to 127.0.0.x only; every
wait is bounded.
"""

import base64
import re
import shutil
import socket
import ssl
import subprocess
import time
import types
import warnings

import pytest

from conftest import LOG_PREFIX, Bare, port_listening
from smtp_client import RawSMTP

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    try:
        import crypt
    except ImportError:  # Python >= 3.13
        crypt = None

HOSTNAME = "gw.test.example"
CLIENT = "client.test.example"
READY = "220 2.0.0 Ready to start TLS"
NOT_AVAILABLE = "502 5.5.1 STARTTLS not available"
BAD_SEQUENCE = "503 5.5.1 Bad sequence of commands"
NO_ARGS = "501 5.5.4 No parameters allowed"
NEED_HELO = "503 5.5.1 Send EHLO or HELO first"
MUST_TLS = "530 5.7.0 Must issue a STARTTLS command first"
SENDER_OK = "250 2.1.0 Sender ok"
RCPT_OK = "250 2.1.5 Recipient ok"
DATA_GO = "354 Start mail input; end with <CRLF>.<CRLF>"
BYE = "221 2.0.0 Bye"
DEMO_WARNING = (
    "Listener %s: no tls_certificate configured: STARTTLS uses a "
    "self-signed DEMO certificate for %s; clients that verify will refuse "
    "it. Configure tls_certificate and tls_key before production use.")

# Errors a TLS client may see when the server refuses its handshake: an
# alert (ssl.SSLError), or the connection closed or reset under it.
HANDSHAKE_REFUSED = (ssl.SSLError, ConnectionError, OSError)


# ---------------------------------------------------------------------------
# the test PKI

def _openssl(*args, cwd):
    r = subprocess.run(["openssl", *map(str, args)], cwd=cwd, stdin=subprocess.DEVNULL,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, "openssl %s failed:\n%s%s" % (
        " ".join(map(str, args)), r.stdout, r.stderr)
    return r.stdout


def _make_ca(d, name, cn):
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha256", "-days", "3",
             "-keyout", name + ".key", "-out", name + ".pem", "-subj", "/CN=" + cn,
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)
    return d / (name + ".pem")


def _make_leaf(d, name, cn, ca, ext):
    """An RSA key and a certificate for CN=cn signed by CA ``ca`` (name of
    its .pem/.key), with the extensions in ``ext`` (config lines)."""
    (d / (name + ".ext")).write_text(
        "basicConstraints = critical,CA:FALSE\n"
        "subjectKeyIdentifier = hash\n"
        "authorityKeyIdentifier = keyid\n" + ext)
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-sha256", "-keyout", name + ".key",
             "-out", name + ".csr", "-subj", "/CN=" + cn, cwd=d)
    _openssl("x509", "-req", "-sha256", "-days", "3", "-in", name + ".csr",
             "-CA", ca + ".pem", "-CAkey", ca + ".key", "-CAcreateserial",
             "-extfile", name + ".ext", "-out", name + ".pem", cwd=d)
    return d / (name + ".pem"), d / (name + ".key")


@pytest.fixture(scope="session")
def pki(tmp_path_factory):
    """Paths of the test PKI (made once):

    ca            the server CA (CN moat test CA)
    cert, key     server certificate for gw.test.example (SAN too) and key
    combined      cert and key in one PEM file
    other_key     a key that belongs to no certificate
    client_ca     the CA of client certificates
    client_cert, client_key    a client certificate signed by client_ca
    rogue_cert, rogue_key      a client certificate signed by ``ca`` (not
                  client_ca)
    """
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is not installed")
    d = tmp_path_factory.mktemp("pki")
    p = types.SimpleNamespace()
    p.dir = d
    p.ca = _make_ca(d, "ca", "moat test CA")
    p.cert, p.key = _make_leaf(
        d, "server", HOSTNAME, "ca",
        "keyUsage = critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage = serverAuth\n"
        "subjectAltName = DNS:%s\n" % HOSTNAME)
    p.combined = d / "combined.pem"
    p.combined.write_text(p.cert.read_text() + p.key.read_text())
    _openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048",
             "-out", "other.key", cwd=d)
    p.other_key = d / "other.key"
    p.client_ca = _make_ca(d, "clientca", "moat test client CA")
    client_ext = ("keyUsage = critical,digitalSignature\n"
                  "extendedKeyUsage = clientAuth\n")
    p.client_cert, p.client_key = _make_leaf(d, "client", CLIENT, "clientca", client_ext)
    p.rogue_cert, p.rogue_key = _make_leaf(d, "rogue", "rogue.test.example", "ca",
                                           client_ext)
    return p


# ---------------------------------------------------------------------------
# configuration

def tls_conf(tls="preferred", listener=None, accepted=None, hat_extra=None):
    """Public listener IncomingMail (RAT: example.com) whose ACCEPTED policy
    (every unknown host, UNKNOWNLIST, loopback included) has ``tls``
    (None: not set); ``listener`` adds listener keys, ``accepted`` keys of
    the ACCEPTED policy, ``hat_extra`` blocks of the HAT."""
    lis = {"type": "public", "address": "127.0.0.1:{port}"}
    lis.update(listener or {})
    acc = {"tls": Bare(tls)} if tls else {}
    acc.update(accepted or {})
    hat = {("mail_flow_policy", "ACCEPTED"): acc} if acc else {}
    hat.update(hat_extra or {})
    c = {
        ("listener", "IncomingMail"): lis,
        ("rat", "IncomingMail"): {"example.com": "accept", "ALL": "reject"},
    }
    if hat:
        c[("hat", "IncomingMail")] = hat
    return c


def cert_keys(pki, combined=False):
    """Listener keys for the test certificate."""
    if combined:
        return {"tls_certificate": str(pki.combined)}
    return {"tls_certificate": str(pki.cert), "tls_key": str(pki.key)}


# A policy with TLS off for 127.0.0.11 (sender group NOTLS).
NOTLS = {
    ("mail_flow_policy", "NOTLS"): {"access": "accept", "tls": Bare("off")},
    ("sender_group", "NOTLS"): {"policy": "NOTLS", "senders": ["127.0.0.11"]},
}


# ---------------------------------------------------------------------------
# clients

def client_ctx(cafile=None, maximum=None, minimum=None, ciphers=None, cert=None,
               key=None):
    """A TLS client context: verifying against ``cafile`` (with host name
    check) or not verifying at all; optional version bounds (ssl.TLSVersion),
    cipher string (TLS <= 1.2) and client certificate."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if cafile:
        ctx.load_verify_locations(str(cafile))
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if minimum is not None:
        ctx.minimum_version = minimum
    if maximum is not None:
        ctx.maximum_version = maximum
    if ciphers:
        ctx.set_ciphers(ciphers)
    if cert:
        ctx.load_cert_chain(str(cert), str(key))
    return ctx


def session(moat, source="127.0.0.1", listener="IncomingMail", ehlo=True):
    """(client, icid, EHLO reply or None) after the greeting (and EHLO)."""
    mark = moat.log_mark()
    c = RawSMTP(moat.ports[listener], timeout=15, source=source)
    r = c.reply()
    assert r.line == "220 %s ESMTP" % HOSTNAME, r.raw
    icid = int(moat.wait_log(r"^New SMTP ICID (\d+) interface %s \(.*\) address %s "
                             % (listener, re.escape(source)), since=mark).group(1))
    e = None
    if ehlo:
        e = c.cmd("EHLO " + CLIENT)
        assert e.code == 250, e.raw
    return c, icid, e


def handshake(c, ctx=None, hostname=HOSTNAME):
    """TLS handshake on the connection (the 220 already read); the client
    then speaks through the TLS socket. Returns the TLS socket."""
    assert c.buf == b"", "plaintext left over before the handshake: %r" % c.buf
    c.sock = (ctx or client_ctx()).wrap_socket(c.sock, server_hostname=hostname)
    return c.sock


def starttls(c, ctx=None, hostname=HOSTNAME):
    """STARTTLS, 220, handshake."""
    c.expect("STARTTLS", READY)
    return handshake(c, ctx, hostname)


def tls_session(moat, ctx=None, source="127.0.0.1", hostname=HOSTNAME):
    """(client, icid, EHLO reply inside TLS): greeting, EHLO, STARTTLS,
    handshake, EHLO again."""
    c, icid, ehlo = session(moat, source)
    assert "STARTTLS" in ehlo.lines, ehlo.raw
    starttls(c, ctx, hostname)
    e = c.cmd("EHLO " + CLIENT)
    assert e.code == 250, e.raw
    return c, icid, e


def refused_handshake(c, ctx):
    """The handshake (or, with TLS 1.3, where the server refuses after the
    client's Finished, the first exchange inside it) fails: returns the
    client's error, after checking that no reply came through."""
    try:
        handshake(c, ctx)
        r = c.cmd("EHLO " + CLIENT)
    except (TimeoutError, socket.timeout):
        raise AssertionError("the server neither refused nor completed the handshake")
    except HANDSHAKE_REFUSED as e:
        return e
    raise AssertionError("the server accepted the TLS session: %r" % (r.raw,))


def success_line(icid, sock):
    """The log line for the TLS session the client sees on sock."""
    return "ICID %d TLS success protocol %s cipher %s" % (
        icid, sock.version(), sock.cipher()[0])


# ---------------------------------------------------------------------------
# mail log

def expect_log(moat, line, since=0, timeout=5.0):
    return moat.wait_log("^" + re.escape(line) + "$", since=since, timeout=timeout)


def icid_lines(moat, icid, since=0, timeout=10.0):
    """This session's log lines (those naming ICID icid) from line since
    on, once its close/lost line is there."""
    moat.wait_log(r"^ICID %d (close|lost)$" % icid, since=since, timeout=timeout)
    rx = re.compile(r"\bICID %d\b" % icid)
    return [ln for ln in moat.log_lines()[since:] if rx.search(ln)]


def tls_lines(lines):
    """The TLS and STARTTLS lines among a session's lines."""
    return [ln for ln in lines if re.match(r"^ICID \d+ (TLS|STARTTLS)\b", ln)]


def failed_re(icid, reason=r".+"):
    return r"ICID %d TLS failed: %s" % (icid, reason)


def openssl_error_re(reason):
    """OpenSSL's error text: error:CODE:SSL routines::REASON (a function
    name may stand between the colons in other OpenSSL versions)."""
    return r"error:[0-9A-F]{8}:SSL routines:[^:]*:%s" % reason


def status(moat):
    r = moat.ctl("status")
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def counter(text, name):
    m = re.search(r"^  %s +(\d+)$" % re.escape(name), text, re.M)
    assert m, text
    return int(m.group(1))


# ---------------------------------------------------------------------------
# spool

def spooled_content(moat, mid):
    """The message content of queued message mid (the spool file's C
    records, docs/spool.md)."""
    data = (moat.spool / "queue" / str(mid)).read_bytes()
    assert data[:8] == b"MOATSPL\x01"
    pos, content = 8, b""
    while pos < len(data):
        typ = data[pos:pos + 1]
        n = int.from_bytes(data[pos + 1:pos + 5], "big")
        if typ == b"C":
            content += data[pos + 5:pos + 5 + n]
        pos += 5 + n
    return content


def received_header(content):
    m = re.match(rb"Received: from [^\r\n]*\r\n(\t[^\r\n]*\r\n)+", content)
    assert m, content[:300]
    return m.group(0).decode()


def send_message(c, sender="sender@other.test", rcpt="user@example.com",
                 body=b"Subject: tls\r\n\r\nhello\r\n"):
    """MAIL/RCPT/DATA/content on an open session; returns the MID."""
    c.expect("MAIL FROM:<%s>" % sender, SENDER_OK)
    c.expect("RCPT TO:<%s>" % rcpt, RCPT_OK)
    c.expect("DATA", DATA_GO)
    c.send(body + b".\r\n")
    r = c.reply()
    m = re.fullmatch(r"250 2\.0\.0 Ok: Message (\d+) accepted", r.line)
    assert m, r.raw
    return int(m.group(1))


# ===========================================================================
# offering STARTTLS

@pytest.mark.moat_conf(tls_conf(tls=None))
def test_starttls_off_by_default(moat):
    """Without tls in any policy: no STARTTLS in EHLO, STARTTLS gets 502,
    no demo certificate is made (no warning, no WARNING in status)."""
    c, icid, ehlo = session(moat)
    with c:
        assert "STARTTLS" not in ehlo.lines, ehlo.raw
        c.expect("STARTTLS", NOT_AVAILABLE)
        c.expect("QUIT", BYE)
    lines = icid_lines(moat, icid)
    assert tls_lines(lines) == [], lines
    assert not [ln for ln in moat.log_lines() if "DEMO" in ln]
    assert "WARNING" not in status(moat)


def test_ehlo_offers_starttls_per_policy(moat_factory):
    """tls = preferred (ACCEPTED) offers STARTTLS after PIPELINING and the
    other extensions; a host whose policy has tls = off (NOTLS, 127.0.0.11)
    is not offered it and its STARTTLS gets 502 5.5.1."""
    moat = moat_factory(tls_conf(hat_extra=NOTLS))
    c, icid, ehlo = session(moat)
    with c:
        assert ehlo.raw[0] == "250-%s" % HOSTNAME, ehlo.raw
        assert ehlo.lines.count("STARTTLS") == 1, ehlo.raw
        assert ehlo.raw[-1] == "250 SMTPUTF8", ehlo.raw
        assert "250-STARTTLS" in ehlo.raw, ehlo.raw
        c.expect("QUIT", BYE)
    c, icid, ehlo = session(moat, "127.0.0.11")
    with c:
        assert "STARTTLS" not in ehlo.lines, ehlo.raw
        c.expect("STARTTLS", NOT_AVAILABLE)
        c.expect("QUIT", BYE)
    assert tls_lines(icid_lines(moat, icid)) == []


def test_tls_set_as_listener_default(moat_factory):
    """tls on the listener itself is the default of every policy: with
    tls = preferred there and no HAT, EHLO offers STARTTLS and it works."""
    moat = moat_factory(tls_conf(tls=None, listener={"tls": Bare("preferred")}))
    mark = moat.log_mark()
    c, icid, ehlo = tls_session(moat)
    with c:
        c.expect("QUIT", BYE)
        expect_log(moat, success_line(icid, c.sock), mark)


# ===========================================================================
# the STARTTLS command

@pytest.mark.moat_conf(tls_conf())
def test_starttls_handshake_and_session_reset(moat):
    """STARTTLS: 220 2.0.0 Ready to start TLS, the handshake, then a fresh
    session (RFC 3207 4.2): MAIL before a new EHLO gets 503 5.5.1 Send
    EHLO or HELO first; the new EHLO no longer offers STARTTLS but the
    other extensions; a message goes through. Logged: the TLS success line
    with the protocol and cipher the client negotiated, once, between the
    ACCEPT line and the transaction; status counts the handshake."""
    mark = moat.log_mark()
    c, icid, ehlo = session(moat)
    with c:
        before = [ln for ln in ehlo.lines if ln != "STARTTLS"]
        starttls(c)
        assert c.sock.version() == "TLSv1.3"
        c.expect("MAIL FROM:<sender@other.test>", NEED_HELO)
        e = c.cmd("EHLO " + CLIENT)
        assert e.code == 250 and "STARTTLS" not in e.lines, e.raw
        assert e.lines == before, (e.raw, ehlo.raw)
        mid = send_message(c)
        c.expect("QUIT", BYE)
        c.closed()
        tls = success_line(icid, c.sock)
    assert tls == "ICID %d TLS success protocol TLSv1.3 cipher TLS_AES_256_GCM_SHA384" % icid
    lines = icid_lines(moat, icid, mark)
    assert lines[0].startswith("New SMTP ICID %d " % icid), lines
    assert re.fullmatch(r"ICID %d ACCEPT SG UNKNOWNLIST .*" % icid, lines[1]), lines
    assert lines[2] == tls, lines
    assert lines[3] == "Start MID %d ICID %d" % (mid, icid), lines
    assert lines[-1] == "ICID %d close" % icid, lines
    assert tls_lines(lines) == [tls], lines
    st = status(moat)
    assert counter(st, "Inbound TLS Handshakes") == 1
    assert counter(st, "Inbound TLS Failures") == 0


@pytest.mark.moat_conf(tls_conf())
def test_tls12_client(moat):
    """A client limited to TLS 1.2 gets TLS 1.2 (the default lowest
    version) with a cipher from the default cipher string (an ECDHE-RSA
    one: the demo key is RSA), and the log says so."""
    mark = moat.log_mark()
    ctx = client_ctx(maximum=ssl.TLSVersion.TLSv1_2)
    c, icid, ehlo = tls_session(moat, ctx)
    with c:
        assert c.sock.version() == "TLSv1.2"
        assert c.sock.cipher()[0].startswith("ECDHE-RSA-"), c.sock.cipher()
        c.expect("QUIT", BYE)
        expect_log(moat, success_line(icid, c.sock), mark)


@pytest.mark.moat_conf(tls_conf())
def test_starttls_with_argument(moat):
    """STARTTLS with an argument: 501 5.5.4 No parameters allowed; the
    session stays in plaintext and a correct STARTTLS then works."""
    c, icid, ehlo = session(moat)
    with c:
        c.expect("STARTTLS now", NO_ARGS)
        assert c.cmd("NOOP").code == 250
        starttls(c)
        c.expect("EHLO " + CLIENT, "250 SMTPUTF8")
        c.expect("QUIT", BYE)


@pytest.mark.moat_conf(tls_conf())
def test_starttls_inside_tls(moat):
    """A second STARTTLS inside TLS: 503 5.5.1 Bad sequence of commands
    (before and after the new EHLO); the TLS session goes on."""
    c, icid, _ = session(moat)
    with c:
        starttls(c)
        c.expect("STARTTLS", BAD_SEQUENCE)
        c.expect("EHLO " + CLIENT, "250 SMTPUTF8")
        c.expect("STARTTLS", BAD_SEQUENCE)
        send_message(c)
        c.expect("QUIT", BYE)
    assert len(tls_lines(icid_lines(moat, icid))) == 1


@pytest.mark.moat_conf(tls_conf())
def test_starttls_inside_transaction(moat):
    """STARTTLS after MAIL: 503 5.5.1 Bad sequence of commands, the
    transaction stays; after RSET, STARTTLS works."""
    c, icid, _ = session(moat)
    with c:
        c.expect("MAIL FROM:<sender@other.test>", SENDER_OK)
        c.expect("STARTTLS", BAD_SEQUENCE)
        c.expect("RCPT TO:<user@example.com>", RCPT_OK)
        c.expect("RSET", "250 2.0.0 Reset state")
        starttls(c)
        c.expect("EHLO " + CLIENT, "250 SMTPUTF8")
        c.expect("QUIT", BYE)


@pytest.mark.moat_conf(tls_conf())
def test_received_header_says_esmtps(moat):
    """The Received: header of a message received inside TLS says
    "with ESMTPS" (RFC 3848); a plaintext one, on the same listener, "with
    ESMTP"."""
    c, icid, _ = tls_session(moat)
    with c:
        mid = send_message(c)
        c.expect("QUIT", BYE)
    rcv = received_header(spooled_content(moat, mid))
    assert re.fullmatch(
        r"Received: from %s \(localhost \[127\.0\.0\.1\]\)\r\n"
        r"\tby %s with ESMTPS id %d \(ICID %d\)\r\n"
        r"\tfor <user@example\.com>;\r\n"
        r"\t[A-Z][a-z]{2}, \d\d [A-Z][a-z]{2} \d{4} \d\d:\d\d:\d\d [+-]\d{4}\r\n"
        % (re.escape(CLIENT), re.escape(HOSTNAME), mid, icid), rcv), rcv
    c, icid, _ = session(moat)
    with c:
        mid = send_message(c)
        c.expect("QUIT", BYE)
    rcv = received_header(spooled_content(moat, mid))
    assert "\tby %s with ESMTP id %d (ICID %d)\r\n" % (HOSTNAME, mid, icid) in rcv, rcv


# ===========================================================================
# STARTTLS command injection (CVE-2011-0411)

@pytest.mark.moat_conf(tls_conf())
@pytest.mark.parametrize("injected", [
    b"RSET\r\n",
    b"MAIL FROM:<evil@other.test>\r\nRCPT TO:<user@example.com>\r\n",
], ids=["rset", "mail-rcpt"])
def test_pipelined_after_starttls_is_discarded(moat, injected):
    """Commands sent in the same write as STARTTLS, in plaintext, are
    dropped: inside TLS the first reply is the one to the client's EHLO
    (not to the injected command), no other reply follows, and an injected
    MAIL did not start a transaction (RCPT: 503 Need MAIL). Logged: how
    many bytes were discarded, before the TLS success line."""
    mark = moat.log_mark()
    c, icid, _ = session(moat)
    with c:
        c.send(b"STARTTLS\r\n" + injected)
        r = c.reply()
        assert r.line == READY, r.raw
        handshake(c)
        e = c.cmd("EHLO " + CLIENT)
        assert e.raw[0] == "250-%s" % HOSTNAME and e.line == "250 SMTPUTF8", e.raw
        c.nothing_more(0.5)
        c.expect("RCPT TO:<user@example.com>", "503 5.5.1 Need MAIL command")
        c.expect("QUIT", BYE)
        tls = success_line(icid, c.sock)
    lines = icid_lines(moat, icid, mark)
    assert tls_lines(lines) == [
        "ICID %d STARTTLS: %d byte(s) sent before the TLS handshake discarded"
        % (icid, len(injected)),
        tls,
    ], lines
    assert not [ln for ln in lines if "Start MID" in ln], lines


@pytest.mark.moat_conf(tls_conf())
def test_pipelined_ehlo_and_starttls(moat):
    """EHLO and STARTTLS in one write (STARTTLS last, as RFC 2920 allows):
    both are answered, nothing is discarded, the handshake follows."""
    mark = moat.log_mark()
    c, icid, _ = session(moat, ehlo=False)
    with c:
        c.send(b"EHLO " + CLIENT.encode() + b"\r\nSTARTTLS\r\n")
        e = c.reply()
        assert e.code == 250 and "STARTTLS" in e.lines, e.raw
        assert c.reply().line == READY
        handshake(c)
        c.expect("EHLO " + CLIENT, "250 SMTPUTF8")
        c.expect("QUIT", BYE)
        tls = success_line(icid, c.sock)
    assert tls_lines(icid_lines(moat, icid, mark)) == [tls]


# ===========================================================================
# handshake failures

@pytest.mark.moat_conf(tls_conf())
def test_handshake_garbage(moat):
    """A client that answers 220 with "GET / HTTP/1.0": the handshake fails,
    the connection is closed, the log has "TLS failed:" with OpenSSL's
    reason, then the close line, and status counts the failure."""
    mark = moat.log_mark()
    c, icid, _ = session(moat)
    with c:
        c.expect("STARTTLS", READY)
        c.send(b"GET / HTTP/1.0\r\n\r\n")
        # Whatever comes back is a TLS alert, never an SMTP reply; then EOF.
        c.sock.settimeout(10)
        data = b""
        while True:
            try:
                chunk = c.sock.recv(4096)
            except ConnectionResetError:
                break
            if not chunk:
                break
            data += chunk
        assert not re.search(rb"^\d{3}[ -]", data), data
    lines = icid_lines(moat, icid, mark)
    assert re.fullmatch(failed_re(icid, openssl_error_re("http request")), lines[-2]), lines
    assert lines[-1] == "ICID %d close" % icid, lines
    assert len(tls_lines(lines)) == 1, lines
    st = status(moat)
    assert counter(st, "Inbound TLS Failures") == 1
    assert counter(st, "Inbound TLS Handshakes") == 0


@pytest.mark.moat_conf(tls_conf())
def test_client_leaves_during_handshake(moat):
    """A client that closes the connection after the 220: "TLS failed:
    connection closed during the handshake", then the close line; moatd
    goes on serving."""
    mark = moat.log_mark()
    c, icid, _ = session(moat)
    c.expect("STARTTLS", READY)
    c.close()
    lines = icid_lines(moat, icid, mark)
    assert lines[-2:] == ["ICID %d TLS failed: connection closed during the handshake" % icid,
                          "ICID %d close" % icid], lines
    c, icid, _ = tls_session(moat)
    with c:
        c.expect("QUIT", BYE)


@pytest.mark.moat_conf(tls_conf(listener={"command_timeout": 2}))
def test_handshake_timeout(moat):
    """A client that sends STARTTLS and then nothing: after command_timeout
    (2 s) the connection is closed (bounded wait: 15 s) and the failure is
    logged ("TLS failed: ..." then close) saying that it timed out: the
    client did not close anything, so "connection closed during the
    handshake" would send an admin looking for the wrong problem."""
    mark = moat.log_mark()
    c, icid, _ = session(moat)
    with c:
        c.expect("STARTTLS", READY)
        t0 = time.monotonic()
        c.sock.settimeout(15)
        try:
            data = c.sock.recv(4096)
        except ConnectionResetError:
            data = b""
        assert data == b"", data
        assert time.monotonic() - t0 >= 1.5
    lines = icid_lines(moat, icid, mark)
    assert re.fullmatch(failed_re(icid), lines[-2]), lines
    assert lines[-1] == "ICID %d close" % icid, lines
    assert [ln for ln in lines if re.search(r"time ?out|timed out", ln, re.I)], lines


# ===========================================================================
# inside TLS: the rest of the session

@pytest.mark.moat_conf(tls_conf())
def test_large_message_and_bdat_inside_tls(moat):
    """Inside TLS a 3 MB message (DATA, sent in one go) and a BDAT
    message in three chunks are stored byte for byte."""
    c, icid, _ = tls_session(moat)
    with c:
        line = b"x" * 78 + b"\r\n"
        body = b"Subject: big\r\n\r\n" + line * (3 * 1024 * 1024 // len(line))
        mid = send_message(c, body=body)
        assert spooled_content(moat, mid).endswith(body)
        c.expect("MAIL FROM:<sender@other.test>", SENDER_OK)
        c.expect("RCPT TO:<user@example.com>", RCPT_OK)
        chunks = [b"Subject: bdat\r\n", b"\r\nfirst ", b"second\r\n"]
        for i, ch in enumerate(chunks):
            last = " LAST" if i == len(chunks) - 1 else ""
            c.send(b"BDAT %d%s\r\n" % (len(ch), last.encode()) + ch)
            r = c.reply()
            if last:
                m = re.fullmatch(r"250 2\.0\.0 Ok: Message (\d+) accepted", r.line)
                assert m, r.raw
            else:
                assert r.code == 250, r.raw
        assert spooled_content(moat, int(m.group(1))).endswith(b"".join(chunks))
        c.expect("QUIT", BYE)


@pytest.mark.moat_conf(tls_conf(listener={"max_errors": 3}))
def test_too_many_errors_inside_tls(moat):
    """Inside TLS the 421 for too many errors reaches the client (it is
    encrypted and sent before the connection closes), then EOF."""
    c, icid, _ = tls_session(moat)
    with c:
        c.expect("FOO", "500 5.5.1 Command unrecognized")
        c.expect("BAR", "500 5.5.1 Command unrecognized")
        c.send(b"BAZ\r\n")
        assert c.reply().line == "500 5.5.1 Command unrecognized"
        assert c.reply().line == "421 4.7.0 Too many errors, closing connection"
        c.closed(10)
    lines = icid_lines(moat, icid)
    assert lines[-2:] == ["ICID %d disconnected address 127.0.0.1, too many errors" % icid,
                          "ICID %d close" % icid], lines


@pytest.mark.moat_conf(tls_conf(listener={"command_timeout": 2}))
def test_command_timeout_inside_tls(moat):
    """An idle TLS session gets 421 4.4.2 Timeout exceeded (encrypted)
    after command_timeout, then EOF (bounded wait: 15 s)."""
    c, icid, _ = tls_session(moat)
    with c:
        r = c.reply(timeout=15)
        assert r.line == "421 4.4.2 Timeout exceeded, closing connection", r.raw
        c.closed(10)
    assert icid_lines(moat, icid)[-1] == "ICID %d close" % icid


@pytest.mark.moat_conf(tls_conf())
def test_shutdown_with_tls_session_open(moat):
    """SIGTERM while a session is in TLS: it gets 421 4.3.2 Service
    shutting down (encrypted), EOF, and moatd exits 0."""
    c, icid, _ = tls_session(moat)
    with c:
        assert moat.stop() == 0
        assert c.reply(timeout=10).line == "421 4.3.2 Service shutting down, try again later"
        c.closed(10)
    assert "ICID %d close" % icid in moat.log_lines()


# ===========================================================================
# protocol versions and ciphers

@pytest.mark.moat_conf(tls_conf(listener={"tls_min_protocol": Bare("TLSv1.3")}))
def test_min_protocol_tls13_refuses_tls12(moat):
    """tls_min_protocol = TLSv1.3: a client limited to TLS 1.2 fails the
    handshake ("TLS failed: ... unsupported protocol", then close); a TLS
    1.3 client succeeds."""
    mark = moat.log_mark()
    c, icid, _ = session(moat)
    with c:
        c.expect("STARTTLS", READY)
        refused_handshake(c, client_ctx(maximum=ssl.TLSVersion.TLSv1_2))
    lines = icid_lines(moat, icid, mark)
    assert re.fullmatch(failed_re(icid, openssl_error_re("unsupported protocol")),
                        lines[-2]), lines
    assert lines[-1] == "ICID %d close" % icid, lines
    mark = moat.log_mark()
    c, icid, _ = tls_session(moat)
    with c:
        assert c.sock.version() == "TLSv1.3"
        c.expect("QUIT", BYE)
        expect_log(moat, success_line(icid, c.sock), mark)


def _legacy_client(version):
    """A client context that offers only ``version`` (below TLS 1.2), or
    None if this Python/OpenSSL cannot."""
    try:
        with warnings.catch_warnings():  # ssl.TLSVersion.TLSv1* are deprecated
            warnings.simplefilter("ignore", DeprecationWarning)
            ctx = client_ctx(minimum=version, maximum=version,
                             ciphers="DEFAULT:@SECLEVEL=0")
    except (ssl.SSLError, ValueError):
        return None
    return ctx


@pytest.mark.moat_conf(tls_conf())
def test_default_min_protocol_refuses_tls11(moat):
    """The default tls_min_protocol is TLSv1.2: a TLS 1.1 client fails
    ("unsupported protocol" logged)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx = _legacy_client(ssl.TLSVersion.TLSv1_1)
    if ctx is None:
        pytest.skip("this OpenSSL cannot make a TLS 1.1 client")
    mark = moat.log_mark()
    c, icid, _ = session(moat)
    with c:
        c.expect("STARTTLS", READY)
        refused_handshake(c, ctx)
    lines = icid_lines(moat, icid, mark)
    assert re.fullmatch(failed_re(icid, openssl_error_re("unsupported protocol")),
                        lines[-2]), lines


@pytest.mark.moat_conf(tls_conf(listener={"tls_min_protocol": Bare("TLSv1")}))
def test_min_protocol_tls1_allows_tls10(moat):
    """tls_min_protocol = TLSv1 lets a TLS 1.0 client in (moat lowers
    OpenSSL's security level for it); the log names TLSv1."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx = _legacy_client(ssl.TLSVersion.TLSv1)
    if ctx is None:
        pytest.skip("this OpenSSL cannot make a TLS 1.0 client")
    mark = moat.log_mark()
    c, icid, _ = session(moat)
    with c:
        c.expect("STARTTLS", READY)
        try:
            handshake(c, ctx)
        except ssl.SSLError as e:
            if "no protocols available" in str(e) or "NO_PROTOCOLS" in str(e):
                pytest.skip("this OpenSSL cannot offer TLS 1.0: %s" % e)
            raise
        assert c.sock.version() == "TLSv1"
        c.expect("EHLO " + CLIENT, "250 SMTPUTF8")
        c.expect("QUIT", BYE)
        line = success_line(icid, c.sock)
    assert line.startswith("ICID %d TLS success protocol TLSv1 cipher " % icid), line
    expect_log(moat, line, mark)


@pytest.mark.moat_conf(tls_conf(listener={"tls_ciphers": "ECDHE-RSA-AES128-GCM-SHA256"}))
def test_tls_ciphers_applied(moat):
    """tls_ciphers = "ECDHE-RSA-AES128-GCM-SHA256": a TLS 1.2 client gets
    that cipher; one that offers only ECDHE-RSA-AES256-GCM-SHA384 fails
    ("no shared cipher" logged). TLS 1.3 suites are not governed by
    tls_ciphers: a TLS 1.3 client still succeeds."""
    mark = moat.log_mark()
    c, icid, _ = tls_session(moat, client_ctx(maximum=ssl.TLSVersion.TLSv1_2))
    with c:
        assert c.sock.cipher()[0] == "ECDHE-RSA-AES128-GCM-SHA256", c.sock.cipher()
        c.expect("QUIT", BYE)
    expect_log(moat, "ICID %d TLS success protocol TLSv1.2 cipher "
               "ECDHE-RSA-AES128-GCM-SHA256" % icid, mark)
    mark = moat.log_mark()
    c, icid, _ = session(moat)
    with c:
        c.expect("STARTTLS", READY)
        refused_handshake(c, client_ctx(maximum=ssl.TLSVersion.TLSv1_2,
                                        ciphers="ECDHE-RSA-AES256-GCM-SHA384"))
    lines = icid_lines(moat, icid, mark)
    assert re.fullmatch(failed_re(icid, openssl_error_re("no shared cipher")),
                        lines[-2]), lines
    c, icid, _ = tls_session(moat)
    with c:
        assert c.sock.version() == "TLSv1.3"
        c.expect("QUIT", BYE)


ANON = "AECDH-AES256-SHA"  # anonymous ECDH: excluded by !aNULL


def test_default_ciphers_exclude_anonymous(moat_factory):
    """The default cipher string excludes anonymous (aNULL) ciphers: a TLS
    1.2 client offering only AECDH-AES256-SHA fails ("no shared cipher");
    with tls_ciphers = "AECDH-AES256-SHA:@SECLEVEL=0" the same client gets
    in, so it is the cipher string that decides."""
    ctx = client_ctx(maximum=ssl.TLSVersion.TLSv1_2, ciphers=ANON + ":@SECLEVEL=0")
    if ANON not in [x["name"] for x in ctx.get_ciphers()]:
        pytest.skip("this OpenSSL cannot offer %s" % ANON)
    moat = moat_factory(tls_conf())
    mark = moat.log_mark()
    c, icid, _ = session(moat)
    with c:
        c.expect("STARTTLS", READY)
        refused_handshake(c, ctx)
    lines = icid_lines(moat, icid, mark)
    assert re.fullmatch(failed_re(icid, openssl_error_re("no shared cipher")),
                        lines[-2]), lines
    moat = moat_factory(tls_conf(listener={"tls_ciphers": ANON + ":@SECLEVEL=0"}))
    mark = moat.log_mark()
    c, icid, _ = tls_session(moat, ctx)
    with c:
        c.expect("QUIT", BYE)
    expect_log(moat, "ICID %d TLS success protocol TLSv1.2 cipher %s" % (icid, ANON), mark)


# ===========================================================================
# certificates

def demo_subject(port):
    """(subject, DER) of the certificate the listener shows, without
    verifying it."""
    c = RawSMTP(port, timeout=15)
    with c:
        assert c.reply().code == 220
        c.expect("EHLO " + CLIENT, "250 SMTPUTF8")
        starttls(c)
        der = c.sock.getpeercert(binary_form=True)
        c.expect("QUIT", BYE)
    r = subprocess.run(["openssl", "x509", "-inform", "DER", "-noout", "-subject",
                        "-ext", "subjectAltName"],
                       input=der, capture_output=True, timeout=30)
    assert r.returncode == 0, r.stderr
    return r.stdout.decode(), der


@pytest.mark.moat_conf(tls_conf())
def test_demo_certificate(moat):
    """tls = preferred without tls_certificate: at start a Warning line in
    the mail log, a WARNING: line in moatctl status; STARTTLS works with a
    self-signed certificate whose subject is "O = moat demo certificate, CN
    = gw.test.example" (SAN DNS:gw.test.example); a client that verifies
    refuses it."""
    raw = moat.wait_log(r"DEMO certificate", strip=False).string
    assert LOG_PREFIX.sub("", raw) == DEMO_WARNING % ("IncomingMail", HOSTNAME), raw
    assert LOG_PREFIX.match(raw).group(0).endswith(" Warning: "), raw
    st = status(moat)
    warn = [ln for ln in st.splitlines() if ln.startswith("WARNING:")]
    assert len(warn) == 1 and "DEMO certificate" in warn[0], st
    assert re.fullmatch(r"WARNING: +STARTTLS on IncomingMail uses a self-signed DEMO "
                        r"certificate \(set tls_certificate\)", warn[0]), warn
    text, _ = demo_subject(moat.ports["IncomingMail"])
    assert "subject=O = moat demo certificate, CN = %s\n" % HOSTNAME in text, text
    assert "DNS:%s" % HOSTNAME in text, text
    # A verifying client (trusting only the system's CAs) refuses it.
    mark = moat.log_mark()
    c, icid, _ = session(moat)
    with c:
        c.expect("STARTTLS", READY)
        with pytest.raises(ssl.SSLCertVerificationError):
            handshake(c, ssl.create_default_context())
    lines = icid_lines(moat, icid, mark)
    assert re.fullmatch(failed_re(icid), lines[-2]), lines


@pytest.mark.moat_conf(tls_conf())
def test_openssl_s_client(moat):
    """openssl s_client -starttls smtp (an independent client) connects:
    TLS 1.3 and the demo certificate's subject; its QUIT inside TLS gets
    221. (s_client waits for the server to close, -ign_eof: a TLS 1.3
    client that hangs up right after its Finished may be gone before the
    server's handshake is over, which moat logs as a failure.)"""
    mark = moat.log_mark()
    r = subprocess.run(["openssl", "s_client", "-starttls", "smtp", "-brief", "-crlf",
                        "-ign_eof", "-connect", "127.0.0.1:%d" % moat.ports["IncomingMail"]],
                       input="QUIT\n", capture_output=True, text=True, timeout=30)
    out = r.stdout + r.stderr
    assert "CONNECTION ESTABLISHED" in out, out
    assert re.search(r"^221 2\.0\.0 Bye\r?$", r.stdout, re.M), out
    assert re.search(r"^Protocol version: TLSv1\.3$", out, re.M), out
    assert re.search(r"^Peer certificate: O = moat demo certificate, CN = %s$"
                     % re.escape(HOSTNAME), out, re.M), out
    moat.wait_log(r"^ICID \d+ TLS success protocol TLSv1\.3 cipher "
                  r"TLS_AES_256_GCM_SHA384$", since=mark)


def test_demo_certificate_per_listener_hostname(moat_factory):
    """Two listeners with their own hostname: each one's demo certificate
    is for its hostname (the warning names it, and so must the
    certificate)."""
    conf = tls_conf()
    conf[("listener", "Second")] = {"type": "public", "address": "127.0.0.1:{port}",
                                    "hostname": "mx2.test.example",
                                    "tls": Bare("preferred")}
    conf[("rat", "Second")] = {"example.com": "accept"}
    moat = moat_factory(conf)
    expect_log(moat, DEMO_WARNING % ("IncomingMail", HOSTNAME))
    expect_log(moat, DEMO_WARNING % ("Second", "mx2.test.example"))
    text, _ = demo_subject(moat.ports["IncomingMail"])
    assert "CN = %s\n" % HOSTNAME in text, text
    c = RawSMTP(moat.ports["Second"], timeout=15)
    with c:
        assert c.reply().line == "220 mx2.test.example ESMTP"
        c.expect("EHLO " + CLIENT, "250 SMTPUTF8")
        starttls(c, hostname="mx2.test.example")
        der = c.sock.getpeercert(binary_form=True)
    r = subprocess.run(["openssl", "x509", "-inform", "DER", "-noout", "-subject"],
                       input=der, capture_output=True, timeout=30)
    assert r.stdout.decode() == ("subject=O = moat demo certificate, "
                                 "CN = mx2.test.example\n"), r.stdout


@pytest.mark.parametrize("combined", [False, True], ids=["cert+key", "combined-pem"])
def test_configured_certificate(moat_factory, pki, combined):
    """tls_certificate and tls_key (or one PEM holding both): no demo
    warning, no WARNING in status; a client verifying against the test CA
    with server_hostname gw.test.example succeeds and sees CN
    gw.test.example."""
    moat = moat_factory(tls_conf(listener=cert_keys(pki, combined)))
    mark = moat.log_mark()
    ctx = client_ctx(cafile=pki.ca)
    c, icid, _ = tls_session(moat, ctx)
    with c:
        cert = c.sock.getpeercert()
        assert dict(x[0] for x in cert["subject"]) == {"commonName": HOSTNAME}, cert
        assert ("DNS", HOSTNAME) in cert["subjectAltName"], cert
        send_message(c)
        c.expect("QUIT", BYE)
        expect_log(moat, success_line(icid, c.sock), mark)
    assert not [ln for ln in moat.log_lines() if "DEMO" in ln], moat.log_lines()
    assert "WARNING" not in status(moat)
    # The wrong name fails the client's check.
    c, icid, _ = session(moat)
    with c:
        c.expect("STARTTLS", READY)
        with pytest.raises(ssl.SSLCertVerificationError):
            handshake(c, ctx, hostname="other.test.example")


def _start_fails(moat):
    """Start moatd -f on moat's configuration and expect it to exit on its
    own (bounded); returns (exit status, stderr)."""
    proc = subprocess.Popen([moat.moatd_bin, "-f", "-c", str(moat.conf_path)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=moat.dir,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate(timeout=10)
        raise AssertionError("moatd started with this configuration:\n%s\n%s"
                             % (moat.conf_text, out + err))
    return proc.returncode, err


@pytest.mark.parametrize("case", ["key-mismatch", "missing-certificate", "missing-key",
                                  "missing-client-ca", "bad-ciphers"])
def test_start_refused_when_tls_does_not_load(moat_factory, pki, case):
    """moatd refuses to start, exit status 1, when the listener's TLS
    context cannot be made, and says which key: a tls_key that does not
    match tls_certificate, a missing certificate, key or tls_client_ca
    file, a cipher string that selects nothing. No port is left
    listening."""
    keys = cert_keys(pki)
    if case == "key-mismatch":
        keys["tls_key"] = str(pki.other_key)
        # OpenSSL already refuses the key when it is loaded.
        what = (r'listener "IncomingMail": tls_key( \(does not match tls_certificate\))?: '
                r'.*key values mismatch')
    elif case == "missing-certificate":
        keys["tls_certificate"] = str(pki.dir / "no-such-cert.pem")
        what = re.escape('listener "IncomingMail": tls_certificate: ') + '.+'
    elif case == "missing-key":
        keys["tls_key"] = str(pki.dir / "no-such-key.pem")
        what = re.escape('listener "IncomingMail": tls_key: ') + '.+'
    elif case == "missing-client-ca":
        keys["tls_client_ca"] = str(pki.dir / "no-such-ca.pem")
        what = re.escape('listener "IncomingMail": tls_client_ca: ') + '.+'
    else:
        keys["tls_ciphers"] = "NO-SUCH-CIPHER"
        what = re.escape('listener "IncomingMail": tls_ciphers: ') + '.+'
    moat = moat_factory(tls_conf(listener=keys), start=False)
    rc, err = _start_fails(moat)
    assert rc == 1, (rc, err)
    assert re.search(r"^moatd: %s.*$" % what, err, re.M), err
    assert not port_listening(moat.ports["IncomingMail"])


def test_commit_refuses_broken_certificate(moat_factory, pki):
    """A moatctl commit whose tls_certificate does not load (missing file)
    is refused naming tls_certificate; the running configuration stays:
    STARTTLS still works with the old certificate, and a TLS session that
    was open goes on."""
    conf = tls_conf(listener=cert_keys(pki))
    moat = moat_factory(conf)
    ctx = client_ctx(cafile=pki.ca)
    old, old_icid, _ = tls_session(moat, ctx)
    with old:
        good = moat.conf_path.read_text()
        broken = tls_conf(listener={"tls_certificate": str(pki.dir / "gone.pem"),
                                    "tls_key": str(pki.key)})
        moat.configure(broken)
        mark = moat.log_mark()
        r = moat.ctl("commit")
        out = r.stdout + r.stderr
        assert r.returncode == 1, out
        assert "Configuration refused; the running configuration stays." in out, out
        assert re.search(r'^listener "IncomingMail": tls_certificate: .+$', out, re.M), out
        assert not [ln for ln in moat.log_lines()[mark:] if "committed" in ln]
        assert moat.running()
        c, icid, _ = tls_session(moat, ctx)
        with c:
            assert dict(x[0] for x in c.sock.getpeercert()["subject"]) == {
                "commonName": HOSTNAME}
            c.expect("QUIT", BYE)
        send_message(old)
        old.expect("QUIT", BYE)
    moat.conf_path.write_text(good)


def test_commit_switches_demo_to_certificate(moat_factory, pki):
    """A commit from the demo certificate to a configured one: new sessions
    get the configured certificate (verified against the test CA), status
    loses its WARNING line, no new demo warning is logged; a session that
    was in TLS with the demo certificate goes on. Committing back to no
    certificate logs the demo warning again."""
    moat = moat_factory(tls_conf())
    assert "DEMO certificate" in status(moat)
    old, old_icid, _ = tls_session(moat)
    with old:
        moat.configure(tls_conf(listener=cert_keys(pki)))
        mark = moat.log_mark()
        r = moat.ctl("commit")
        assert r.returncode == 0, r.stdout + r.stderr
        expect_log(moat, "Configuration %s committed" % moat.conf_path, mark)
        assert not [ln for ln in moat.log_lines()[mark:] if "DEMO" in ln]
        assert "WARNING" not in status(moat)
        c, icid, _ = tls_session(moat, client_ctx(cafile=pki.ca))
        with c:
            c.expect("QUIT", BYE)
        send_message(old)
        old.expect("QUIT", BYE)
    moat.configure(tls_conf())
    mark = moat.log_mark()
    r = moat.ctl("commit")
    assert r.returncode == 0, r.stdout + r.stderr
    expect_log(moat, DEMO_WARNING % ("IncomingMail", HOSTNAME), mark)
    assert "DEMO certificate" in status(moat)


# ===========================================================================
# tls = required and tls_mandatory_senders

@pytest.mark.moat_conf(tls_conf(tls="required"))
def test_tls_required(moat):
    """tls = required: EHLO offers STARTTLS; MAIL, RCPT, DATA, VRFY, HELP,
    BDAT before STARTTLS get 530 5.7.0 Must issue a STARTTLS command first
    (logged once: "TLS was required but remote host did not initiate it");
    EHLO, HELO, NOOP, RSET work; after STARTTLS a message goes through."""
    mark = moat.log_mark()
    c, icid, ehlo = session(moat)
    with c:
        assert "STARTTLS" in ehlo.lines, ehlo.raw
        c.expect("MAIL FROM:<sender@other.test>", MUST_TLS)
        c.expect("RCPT TO:<user@example.com>", MUST_TLS)
        c.expect("DATA", MUST_TLS)
        c.expect("VRFY user", MUST_TLS)
        c.expect("HELP", MUST_TLS)
        c.expect("BDAT 3 LAST", MUST_TLS)
        assert c.cmd("NOOP").code == 250
        c.expect("RSET", "250 2.0.0 Reset state")
        assert c.cmd("HELO " + CLIENT).code == 250
        c.expect("EHLO " + CLIENT, "250 SMTPUTF8")
        c.expect("MAIL FROM:<sender@other.test>", MUST_TLS)
        starttls(c)
        c.expect("EHLO " + CLIENT, "250 SMTPUTF8")
        mid = send_message(c)
        c.expect("QUIT", BYE)
        tls = success_line(icid, c.sock)
    lines = icid_lines(moat, icid, mark)
    assert tls_lines(lines) == [
        "ICID %d TLS was required but remote host did not initiate it" % icid, tls], lines
    assert "Start MID %d ICID %d" % (mid, icid) in lines


@pytest.mark.moat_conf(tls_conf(tls="required"))
def test_tls_required_quit_without_tls(moat):
    """tls = required: a client that gives up (QUIT) gets 221; the
    session logged "was required" only because it tried MAIL."""
    c, icid, _ = session(moat)
    with c:
        c.expect("MAIL FROM:<a@other.test>", MUST_TLS)
        c.expect("MAIL FROM:<b@other.test>", MUST_TLS)
        c.expect("QUIT", BYE)
        c.closed()
    lines = icid_lines(moat, icid)
    assert tls_lines(lines) == [
        "ICID %d TLS was required but remote host did not initiate it" % icid], lines
    c, icid, _ = session(moat)
    with c:
        c.expect("QUIT", BYE)
    assert tls_lines(icid_lines(moat, icid)) == []


@pytest.mark.moat_conf(tls_conf(tls=None, listener={"tls": Bare("required")},
                                hat_extra=NOTLS))
def test_tls_required_as_listener_default(moat):
    """tls = required on the listener applies to the policies that do not
    set tls (ACCEPTED: 530); NOTLS (tls = off, 127.0.0.11) is not asked
    for TLS and may send."""
    c, icid, ehlo = session(moat)
    with c:
        assert "STARTTLS" in ehlo.lines
        c.expect("MAIL FROM:<sender@other.test>", MUST_TLS)
    c, icid, ehlo = session(moat, "127.0.0.11")
    with c:
        assert "STARTTLS" not in ehlo.lines
        send_message(c)
        c.expect("QUIT", BYE)


MANDATORY = ["example.net", ".corp.example", "ceo@", "boss@example.org"]


@pytest.mark.moat_conf(tls_conf(accepted={"tls_mandatory_senders": MANDATORY}))
@pytest.mark.parametrize("sender,listed", [
    ("anyone@example.net", True),
    ("Someone@EXAMPLE.NET", True),
    ("x@mail.corp.example", True),
    ("ceo@anywhere.test", True),
    ("boss@example.org", True),
    ("x@sub.example.net", False),
    ("x@corp.example", False),
    ("other@example.org", False),
    ("", False),
])
def test_tls_mandatory_senders(moat, sender, listed):
    """tls = preferred with tls_mandatory_senders (example.net,
    .corp.example, ceo@, boss@example.org, matched like RAT entries): MAIL
    FROM a listed sender without TLS gets 530 5.7.0 (and the "was required"
    line); after STARTTLS the same sender is accepted. An unlisted sender
    (and the null sender) is accepted without TLS."""
    c, icid, _ = session(moat)
    with c:
        if listed:
            c.expect("MAIL FROM:<%s>" % sender, MUST_TLS)
            c.expect("MAIL FROM:<%s>" % sender, MUST_TLS)
            starttls(c)
            c.expect("EHLO " + CLIENT, "250 SMTPUTF8")
            c.expect("MAIL FROM:<%s>" % sender, SENDER_OK)
        else:
            c.expect("MAIL FROM:<%s>" % sender, SENDER_OK)
        c.expect("RCPT TO:<user@example.com>", RCPT_OK)
        c.expect("QUIT", BYE)
    required = ["ICID %d TLS was required but remote host did not initiate it" % icid]
    lines = [ln for ln in tls_lines(icid_lines(moat, icid)) if "required" in ln]
    assert lines == (required if listed else []), lines


@pytest.mark.moat_conf(tls_conf(listener={"tls_mandatory_senders": ["example.net"]},
                                hat_extra=NOTLS))
def test_mandatory_sender_never_told_to_starttls_where_not_offered(moat):
    """tls_mandatory_senders set on the listener (a default of every
    policy) while the NOTLS policy (127.0.0.11) has tls = off: that host is
    not offered STARTTLS, so its listed sender must not be told "Must issue
    a STARTTLS command first" (it could never comply). On the ACCEPTED
    host the list applies as usual."""
    c, icid, _ = session(moat)
    with c:
        c.expect("MAIL FROM:<x@example.net>", MUST_TLS)
    c, icid, ehlo = session(moat, "127.0.0.11")
    with c:
        assert "STARTTLS" not in ehlo.lines, ehlo.raw
        r = c.cmd("MAIL FROM:<x@example.net>")
        if r.line == MUST_TLS:
            c.expect("STARTTLS", READY)


# ===========================================================================
# client certificates

def test_verify_client_certificate(moat_factory, pki):
    """tls_verify_client = true with tls_client_ca: a client without a
    certificate fails ("TLS failed: ..." then close), so does one whose
    certificate another CA signed; one signed by tls_client_ca succeeds.
    Both with TLS 1.3 and TLS 1.2 clients."""
    conf = tls_conf(listener=dict(cert_keys(pki), tls_client_ca=str(pki.client_ca)),
                    accepted={"tls_verify_client": True})
    moat = moat_factory(conf)
    for maximum in (None, ssl.TLSVersion.TLSv1_2):
        for who in ("none", "rogue"):
            kw = {} if who == "none" else dict(cert=pki.rogue_cert, key=pki.rogue_key)
            mark = moat.log_mark()
            c, icid, _ = session(moat)
            with c:
                c.expect("STARTTLS", READY)
                refused_handshake(c, client_ctx(cafile=pki.ca, maximum=maximum, **kw))
            lines = icid_lines(moat, icid, mark)
            reason = ("peer did not return a certificate" if who == "none"
                      else "certificate verify failed")
            assert re.fullmatch(failed_re(icid, openssl_error_re(reason)),
                                lines[-2]), (maximum, who, lines)
            assert lines[-1] == "ICID %d close" % icid
        mark = moat.log_mark()
        ctx = client_ctx(cafile=pki.ca, maximum=maximum, cert=pki.client_cert,
                         key=pki.client_key)
        c, icid, _ = tls_session(moat, ctx)
        with c:
            send_message(c)
            c.expect("QUIT", BYE)
            expect_log(moat, success_line(icid, c.sock), mark)


def test_client_certificate_not_asked_by_default(moat_factory, pki):
    """With tls_client_ca but tls_verify_client left false, a client
    without a certificate succeeds."""
    conf = tls_conf(listener=dict(cert_keys(pki), tls_client_ca=str(pki.client_ca)))
    moat = moat_factory(conf)
    c, icid, _ = tls_session(moat, client_ctx(cafile=pki.ca))
    with c:
        c.expect("QUIT", BYE)


# ===========================================================================
# SMTP AUTH and TLS

PASSWORD = "Wonder land 1"


@pytest.fixture
def passwd(tmp_path):
    """A password file with alice (sha512-crypt)."""
    if crypt is None:
        pytest.skip("Python's crypt module is missing (Python >= 3.13)")
    h = crypt.crypt(PASSWORD, crypt.mksalt(crypt.METHOD_SHA512))
    assert h and h.startswith("$6$")
    f = tmp_path / "passwd"
    f.write_text("alice:%s\n" % h)
    return f


def auth_tls_conf(passwd, requires_tls):
    c = tls_conf(listener={"smtp_auth_profile": "staff"},
                 accepted={"smtp_auth": Bare("preferred"),
                           "auth_requires_tls": requires_tls})
    c[("smtp_auth_profile", "staff")] = {"password_file": str(passwd)}
    return c


def plain(user, password):
    return base64.b64encode(("\0%s\0%s" % (user, password)).encode()).decode()


def test_auth_requires_tls(moat_factory, passwd):
    """auth_requires_tls = true: before TLS, EHLO has no AUTH and AUTH gets
    502 5.5.1 AUTH not available; after STARTTLS the EHLO has "250-AUTH
    PLAIN LOGIN" and AUTH PLAIN succeeds (235, logged); no start-up
    warning that AUTH is never offered."""
    moat = moat_factory(auth_tls_conf(passwd, True))
    assert not [ln for ln in moat.log_lines() if "AUTH is never offered" in ln]
    c, icid, ehlo = session(moat)
    mark = moat.log_mark()
    with c:
        assert not [ln for ln in ehlo.lines if ln.startswith("AUTH")], ehlo.raw
        c.expect("AUTH PLAIN " + plain("alice", PASSWORD), "502 5.5.1 AUTH not available")
        starttls(c)
        e = c.cmd("EHLO " + CLIENT)
        assert "250-AUTH PLAIN LOGIN" in e.raw, e.raw
        r = c.cmd("AUTH PLAIN " + plain("alice", PASSWORD))
        assert r.line.startswith("235 2.7.0 "), r.raw
        mid = send_message(c)
        c.expect("QUIT", BYE)
    expect_log(moat, "SMTP Auth: (ICID %d) succeeded for user: alice using AUTH "
               "mechanism: PLAIN with profile: staff" % icid, mark)
    # RFC 3848: encrypted and authenticated.
    rcv = received_header(spooled_content(moat, mid))
    assert "\tby %s with ESMTPSA id %d (ICID %d)\r\n" % (HOSTNAME, mid, icid) in rcv, rcv


def test_received_header_says_esmtpa_after_plaintext_auth(moat_factory, passwd):
    """RFC 3848: a message submitted after AUTH without TLS is received
    "with ESMTPA"."""
    moat = moat_factory(auth_tls_conf(passwd, False))
    c, icid, ehlo = session(moat)
    with c:
        assert "250-AUTH PLAIN LOGIN" in ehlo.raw, ehlo.raw
        r = c.cmd("AUTH PLAIN " + plain("alice", PASSWORD))
        assert r.line.startswith("235 2.7.0 "), r.raw
        mid = send_message(c)
        c.expect("QUIT", BYE)
    rcv = received_header(spooled_content(moat, mid))
    assert "\tby %s with ESMTPA id %d (ICID %d)\r\n" % (HOSTNAME, mid, icid) in rcv, rcv


def test_auth_before_starttls_is_forgotten(moat_factory, passwd):
    """RFC 3207 4.2: after the handshake the server MUST discard what it
    learnt from the client before it. A client that authenticated in
    plaintext and then did STARTTLS is either refused the STARTTLS (503)
    or, inside TLS, no longer authenticated: AUTH is offered again and a
    recipient outside the RAT is refused (no relaying on the strength of
    the plaintext AUTH)."""
    moat = moat_factory(auth_tls_conf(passwd, False))
    c, icid, ehlo = session(moat)
    with c:
        assert "AUTH PLAIN LOGIN" in ehlo.lines, ehlo.raw
        r = c.cmd("AUTH PLAIN " + plain("alice", PASSWORD))
        assert r.line.startswith("235 2.7.0 "), r.raw
        r = c.cmd("STARTTLS")
        if r.line == BAD_SEQUENCE:
            return
        assert r.line == READY, r.raw
        handshake(c)
        e = c.cmd("EHLO " + CLIENT)
        assert "AUTH PLAIN LOGIN" in e.lines, e.raw
        c.expect("MAIL FROM:<alice@example.com>", SENDER_OK)
        c.expect("RCPT TO:<user@elsewhere.test>", "550 5.1.0 Address rejected")


# ===========================================================================
# swaks

@pytest.fixture
def swaks_tls(swaks):
    r = subprocess.run(["/usr/bin/swaks", "--support"], capture_output=True, text=True,
                       timeout=30)
    if "=== TLS supported" not in r.stdout + r.stderr:
        pytest.skip("swaks has no TLS (needs Net::SSLeay: libnet-ssleay-perl)")
    return swaks


def test_swaks_tls(moat_factory, swaks_tls):
    """swaks --tls (STARTTLS, then the message) against tls = required: the
    message is accepted, swaks reports the TLS session, moat logs TLS
    success; plain swaks is refused with 530."""
    moat = moat_factory(tls_conf(tls="required"))
    port = moat.ports["IncomingMail"]
    mark = moat.log_mark()
    r = swaks_tls(port, "--tls", "--from", "sender@other.test", "--to", "user@example.com")
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert re.search(r"^<-  220 2\.0\.0 Ready to start TLS$", out, re.M), out
    assert re.search(r"^=== TLS started with cipher TLSv1\.3:TLS_AES_256_GCM_SHA384", out,
                     re.M), out
    assert re.search(r"^<~  250 2\.0\.0 Ok: Message \d+ accepted$", out, re.M), out
    moat.wait_log(r"^ICID \d+ TLS success protocol TLSv1\.3 cipher "
                  r"TLS_AES_256_GCM_SHA384$", since=mark)
    moat.wait_log(r"^MID \d+ queued for delivery$", since=mark)
    r = swaks_tls(port, "--from", "sender@other.test", "--to", "user@example.com")
    out = r.stdout + r.stderr
    assert r.returncode != 0, out
    assert MUST_TLS in out, out


# ===========================================================================
# configuration checks (moatd -t)

def _check(moatd_bin, path):
    return subprocess.run([str(moatd_bin), "-t", "-c", str(path)], stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=30)


def _conf_text(listener_keys, policy_keys=""):
    return ('hostname = "gw.test.example";\n'                                    # 1
            'listener "In" { type = public; address = "127.0.0.1:2525"; %s }\n'  # 2
            'rat "In" { "example.com" = accept; }\n'                             # 3
            'hat "In" { mail_flow_policy "ACCEPTED" { %s } }\n'                  # 4
            % (listener_keys, policy_keys))


def test_tls_configuration_valid(moatd_bin, tmp_path, pki):
    """Every TLS key together, on the listener and in a policy, is
    accepted by moatd -t."""
    f = tmp_path / "moat.conf"
    f.write_text(_conf_text(
        'tls_certificate = "%s"; tls_key = "%s"; tls_ciphers = "HIGH:!aNULL"; '
        'tls_min_protocol = TLSv1.3; tls_client_ca = "%s"; tls = preferred; '
        'tls_mandatory_senders = ["example.net"];' % (pki.cert, pki.key, pki.client_ca),
        'tls = required; tls_verify_client = true; auth_requires_tls = true; '
        'tls_mandatory_senders = ["example.com", ".example.com", "user@", '
        '"user@example.com"];'))
    r = _check(moatd_bin, f)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "moatd: configuration %s is valid\n" % f


@pytest.mark.parametrize("listener_keys,policy_keys,line,message", [
    ("tls_min_protocol = TLSv1.4;", "", 2,
     'tls_min_protocol in listener "In": expects TLSv1 or TLSv1.1 or TLSv1.2 or TLSv1.3, '
     'not "TLSv1.4"'),
    ("tls = sometimes;", "", 2,
     'tls in listener "In": expects off or preferred or required, not "sometimes"'),
    ('tls_ciphers = "";', "", 2, 'tls_ciphers in listener "In": "" must not be empty'),
    ('tls_mandatory_senders = ["@@bad"];', "", 2,
     'tls_mandatory_senders in listener "In": "@@bad" bad character in local part'),
    ("", "tls_verify_client = maybe;", 4, "tls_verify_client"),
    ("", "tls = sometimes;", 4, "sometimes"),
], ids=["min-protocol", "tls-word", "empty-ciphers", "mandatory-pattern",
        "verify-client-bool", "policy-tls-word"])
def test_tls_configuration_errors(moatd_bin, tmp_path, listener_keys, policy_keys, line,
                                  message):
    """Bad TLS values are refused with file:line:column and the reason."""
    f = tmp_path / "moat.conf"
    f.write_text(_conf_text(listener_keys, policy_keys))
    r = _check(moatd_bin, f)
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert re.search(r"^%s:%d:\d+: .*%s" % (re.escape(str(f)), line, re.escape(message)),
                     r.stderr, re.M), r.stderr


def test_configuration_check_loads_tls_files(moatd_bin, tmp_path, pki):
    """moatd -t loads the TLS files as a start would: a key that does not
    match, or a missing file, fails the check (exit 1, naming the key),
    not only the start; tls_verify_client without tls_client_ca is an
    error at file:line."""
    f = tmp_path / "moat.conf"
    f.write_text(_conf_text('tls_certificate = "%s"; tls_key = "%s"; tls = preferred;'
                            % (pki.cert, pki.other_key)))
    r = _check(moatd_bin, f)
    assert r.returncode == 1, r.stdout
    assert re.search(r'listener "In": tls_key: .*key values mismatch', r.stderr), r.stderr
    f.write_text(_conf_text('tls_certificate = "%s"; tls = preferred;'
                            % (tmp_path / "missing.pem")))
    r = _check(moatd_bin, f)
    assert r.returncode == 1 and 'listener "In": tls_certificate: ' in r.stderr, r.stderr
    f.write_text(_conf_text("tls = preferred;", "tls_verify_client = true;"))
    r = _check(moatd_bin, f)
    assert r.returncode == 1
    assert re.search(r"^%s:2:\d+: .*tls_verify_client but the listener has no "
                     r"tls_client_ca" % re.escape(str(f)), r.stderr, re.M), r.stderr
