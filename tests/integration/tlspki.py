"""A small test PKI made with the openssl command, for the outbound TLS
and DANE tests: leaf certificates signed by a CA whose key and certificate
are ca.key / ca.pem in the same directory, optionally back-dated (``openssl
ca`` with -startdate/-enddate, for expired certificates)."""

import subprocess


def openssl(*args, cwd):
    r = subprocess.run(["openssl", *map(str, args)], cwd=cwd,
                       stdin=subprocess.DEVNULL, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, "openssl %s failed:\n%s%s" % (
        " ".join(map(str, args)), r.stdout, r.stderr)
    return r.stdout


_LEAF_EXT = ("basicConstraints = critical,CA:FALSE\n"
             "keyUsage = critical,digitalSignature,keyEncipherment\n"
             "extendedKeyUsage = serverAuth\n"
             "subjectAltName = %s\n")


def ca_sign(d, name, cn, san, dates=None):
    """A key and a certificate signed by the test CA. dates: (start, end)
    as YYYYMMDDHHMMSSZ, through ``openssl ca`` (which can back-date)."""
    (d / (name + ".ext")).write_text(_LEAF_EXT % san)
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-sha256",
             "-keyout", name + ".key", "-out", name + ".csr",
             "-subj", "/CN=" + cn, cwd=d)
    if dates is None:
        openssl("x509", "-req", "-sha256", "-days", "3", "-in", name + ".csr",
                 "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                 "-extfile", name + ".ext", "-out", name + ".pem", cwd=d)
    else:
        (d / "index.txt").write_text("")
        (d / "serial").write_text("1000\n")
        (d / "ca.cnf").write_text(
            "[ca]\ndefault_ca = test\n[test]\ndir = .\ndatabase = index.txt\n"
            "serial = serial\nnew_certs_dir = .\ncertificate = ca.pem\n"
            "private_key = ca.key\ndefault_md = sha256\npolicy = any\n"
            "unique_subject = no\n[any]\ncommonName = supplied\n")
        openssl("ca", "-batch", "-config", "ca.cnf", "-notext",
                 "-startdate", dates[0], "-enddate", dates[1],
                 "-extfile", name + ".ext", "-in", name + ".csr",
                 "-out", name + ".pem", cwd=d)
    return d / (name + ".pem"), d / (name + ".key")
