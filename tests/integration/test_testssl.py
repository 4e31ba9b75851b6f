"""testssl.sh (Debian's) against a listener's STARTTLS.

The listener runs moat's default TLS settings (protocols from TLS 1.2,
the default cipher string) with a certificate from a test CA that the
scan trusts (--add-ca), for the name the scan asks for. testssl reports
no HIGH or CRITICAL finding. It talks only to 127.0.0.1 (--ip) and makes
no DNS lookups (--nodns none); it takes a couple of minutes.
"""

import json
import shutil
import subprocess

import pytest

from conftest import Bare

TESTSSL = shutil.which("testssl") or "/usr/bin/testssl"

CA_EXT = """\
[srv]
subjectAltName = DNS:gw.test.example
crlDistributionPoints = URI:http://crl.test.example/ca.crl
authorityInfoAccess = OCSP;URI:http://ocsp.test.example/
extendedKeyUsage = serverAuth
keyUsage = digitalSignature, keyEncipherment
"""


def _run(*args):
    subprocess.run(args, check=True, capture_output=True, timeout=60)


@pytest.fixture
def server_cert(tmp_path):
    """(ca.pem, cert.pem, key.pem): a test CA and a server certificate for
    gw.test.example valid for a year, with revocation URIs (testssl rates
    a certificate without any as HIGH)."""
    d = tmp_path
    (d / "ext.cnf").write_text(CA_EXT)
    _run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
         "-keyout", str(d / "ca.key"), "-out", str(d / "ca.pem"),
         "-days", "400", "-subj", "/CN=moat test CA")
    _run("openssl", "req", "-newkey", "rsa:2048", "-nodes",
         "-keyout", str(d / "key.pem"), "-out", str(d / "srv.csr"),
         "-subj", "/CN=gw.test.example")
    _run("openssl", "x509", "-req", "-in", str(d / "srv.csr"),
         "-CA", str(d / "ca.pem"), "-CAkey", str(d / "ca.key"),
         "-CAcreateserial", "-out", str(d / "cert.pem"), "-days", "365",
         "-extfile", str(d / "ext.cnf"), "-extensions", "srv")
    return d / "ca.pem", d / "cert.pem", d / "key.pem"


@pytest.mark.skipif(not shutil.which(TESTSSL),
                    reason="testssl.sh is not installed (scripts/install-deps.sh test)")
def test_testssl_finds_nothing_high_or_critical(moat_factory, server_cert, tmp_path):
    ca, cert, key = server_cert
    moat = moat_factory({
        ("listener", "IncomingMail"): {
            "type": "public", "address": "127.0.0.1:{port}",
            "tls_certificate": str(cert), "tls_key": str(key)},
        ("rat", "IncomingMail"): {"example.com": "accept", "ALL": "reject"},
        ("hat", "IncomingMail"): {
            ("mail_flow_policy", "ACCEPTED"): {"tls": Bare("preferred")}},
    })
    out = tmp_path / "testssl.json"
    # -p protocols, -s cipher categories, -S server defaults (certificate),
    # -P preferences, -U vulnerabilities, -f forward secrecy.
    r = subprocess.run(
        [TESTSSL, "--quiet", "--color", "0", "--warnings", "batch",
         "--nodns", "none", "--ip", "127.0.0.1", "--add-ca", str(ca),
         "-p", "-s", "-S", "-P", "-U", "-f", "--starttls", "smtp",
         "--jsonfile", str(out),
         "gw.test.example:%d" % moat.ports["IncomingMail"]],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=600)
    assert out.exists(), r.stdout[-3000:] + r.stderr[-2000:]
    findings = json.loads(out.read_text())
    ids = {f["id"] for f in findings}
    # The scan really ran: it saw the protocols and the certificate.
    assert {"TLS1_2", "TLS1_3", "cert_trust"} <= ids, sorted(ids)
    bad = [(f["severity"], f["id"], f["finding"]) for f in findings
           if f.get("severity") in ("HIGH", "CRITICAL")]
    assert bad == [], bad
    # And what it saw is moat's defaults.
    by_id = {f["id"]: f for f in findings}
    assert by_id["TLS1"]["finding"] == "not offered"
    assert by_id["TLS1_1"]["finding"] == "not offered"
    assert by_id["cert_trust"]["severity"] == "OK", by_id["cert_trust"]
