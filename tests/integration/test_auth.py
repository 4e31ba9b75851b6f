"""SMTP AUTH (docs/access.md, "SMTP AUTH"): PLAIN and LOGIN against an
smtp_auth_profile's password file of crypt(3) hashes, offered per mail flow
policy, relaying for authenticated clients, the failure lockout, and the
mail log lines:

    SMTP Auth: (ICID 5) succeeded for user: alice using AUTH mechanism: PLAIN with profile: staff
    SMTP Auth (ICID 5) failed for user: alice using AUTH mechanism: LOGIN with profile: staff
    SMTP Auth (ICID 5) was required but remote host did not initiate it

The password file is made with Python's crypt module (libxcrypt): one user
per scheme moat accepts (sha512-crypt, yescrypt, bcrypt, sha256-crypt),
each hash checked with crypt.crypt before moatd sees it. Costs are kept low
(bcrypt cost 4) so that the tests stay fast.

Configuration: public listener IncomingMail (RAT: example.com) with
smtp_auth_profile "staff"; the predefined ACCEPTED policy (every unknown
host: UNKNOWNLIST) gets smtp_auth = preferred unless a test says
otherwise. Clients come from loopback addresses (127.0.0.1, and 127.0.0.10
or .11 where the per-address lockout matters); without a test resolver the
harness stubs all DNS to a port where nothing answers, and libunbound's
built-in 127.in-addr.arpa zone answers the PTR lookups at once.
"""

import base64
import random
import re
import subprocess
import time
import warnings

import pytest

from conftest import Bare
from smtp_client import RawSMTP

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    try:
        import crypt
    except ImportError:  # Python >= 3.13
        crypt = None

HOSTNAME = "gw.test.example"
DATA_GO = "354 Start mail input; end with <CRLF>.<CRLF>"
PROFILE = "staff"

# user: (scheme, password)
USERS = {
    "alice": ("sha512", "Wonder land 1"),
    "bob": ("yescrypt", "b0b's s3cret:pass"),
    "carol": ("bcrypt", "carol-PW-42"),
    "dave": ("sha256", "dave pw"),
}
SUCCESS = r"^235 2\.7\.0 "
FAILED = "535 5.7.8 Authentication credentials invalid"

B64 = "./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def b64(s):
    return base64.b64encode(s.encode("utf-8") if isinstance(s, str) else s).decode()


def plain(user, password, authzid=""):
    return b64("%s\0%s\0%s" % (authzid, user, password))


def yescrypt_salt():
    """'$y$j9T$' + 22 salt characters. The last one carries only the top
    bits of the 16-byte salt: libxcrypt refuses most characters there, so
    it is one of './01' (checked below with crypt.crypt)."""
    return "$y$j9T$" + "".join(random.choice(B64) for _ in range(21)) + random.choice("./01")


def make_hash(scheme, password):
    if crypt is None:
        pytest.skip("Python's crypt module is missing (Python >= 3.13)")
    salt = {"sha512": lambda: crypt.mksalt(crypt.METHOD_SHA512),
            "sha256": lambda: crypt.mksalt(crypt.METHOD_SHA256),
            "bcrypt": lambda: crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=16),
            "yescrypt": yescrypt_salt}[scheme]()
    h = crypt.crypt(password, salt)
    if not h or h.startswith("*"):
        pytest.skip("this libcrypt cannot make %s hashes (%r)" % (scheme, salt))
    assert crypt.crypt(password, h) == h
    assert crypt.crypt(password + "x", h) != h
    return h


@pytest.fixture
def passwd(tmp_path):
    """The password file: one user per scheme, a comment and a blank line."""
    f = tmp_path / "passwd"
    lines = ["# moat test users", ""]
    for user, (scheme, pw) in USERS.items():
        lines.append("%s:%s" % (user, make_hash(scheme, pw)))
    f.write_text("\n".join(lines) + "\n")
    hashes = dict(ln.split(":", 1) for ln in lines[2:])
    assert [hashes[u][:4] for u in ("alice", "bob", "carol", "dave")] == [
        "$6$" + hashes["alice"][3], "$y$j", "$2b$", "$5$" + hashes["dave"][3]]
    return f


def auth_conf(passwd, smtp_auth="preferred", profile=PROFILE, hat_extra=None,
              accepted=None, **top):
    """IncomingMail with smtp_auth_profile; ACCEPTED policy's smtp_auth."""
    acc = {"smtp_auth": Bare(smtp_auth) if smtp_auth else None}
    acc.update(accepted or {})
    hat = {("mail_flow_policy", "ACCEPTED"): acc}
    hat.update(hat_extra or {})
    c = {
        ("listener", "IncomingMail"): {"type": "public", "address": "127.0.0.1:{port}",
                                       "smtp_auth_profile": profile},
        ("rat", "IncomingMail"): {"example.com": "accept", "ALL": "reject"},
        ("smtp_auth_profile", PROFILE): {"password_file": str(passwd)},
        ("hat", "IncomingMail"): hat,
    }
    c.update(top)
    return c


def session(moat, source="127.0.0.1", listener="IncomingMail"):
    """(client, icid, EHLO reply) after the greeting and EHLO."""
    mark = moat.log_mark()
    c = RawSMTP(moat.ports[listener], timeout=15, source=source)
    r = c.reply()
    assert r.line == "220 %s ESMTP" % HOSTNAME, r.raw
    icid = int(moat.wait_log(r"^New SMTP ICID (\d+) interface %s \(.*\) address %s "
                             % (listener, re.escape(source)), since=mark).group(1))
    ehlo = c.cmd("EHLO client.test.example")
    assert ehlo.code == 250, ehlo.raw
    return c, icid, ehlo


def auth_lines(ehlo):
    return [ln for ln in ehlo.lines if ln.upper().startswith("AUTH")]


def ok_line(icid, user, mech):
    return ("SMTP Auth: (ICID %d) succeeded for user: %s using AUTH mechanism: %s "
            "with profile: %s" % (icid, user, mech, PROFILE))


def failed_line(icid, user, mech):
    return ("SMTP Auth (ICID %d) failed for user: %s using AUTH mechanism: %s "
            "with profile: %s" % (icid, user, mech, PROFILE))


def expect_log(moat, line, since=0):
    return moat.wait_log("^" + re.escape(line) + "$", since=since)


def auth_plain(c, user, password):
    return c.cmd("AUTH PLAIN " + plain(user, password))


def succeeded(r):
    assert re.match(SUCCESS, r.line), r.raw
    return r


# ---------------------------------------------------------------------------
# offering AUTH

def test_ehlo_offers_auth_per_policy(moat_factory, passwd):
    """EHLO says AUTH PLAIN LOGIN to hosts whose policy has smtp_auth
    preferred (ACCEPTED here) on a listener with a profile, and nothing to
    a host whose policy leaves it off (NOAUTH, 127.0.0.11), whose AUTH
    command is then refused as unavailable."""
    moat = moat_factory(auth_conf(passwd, hat_extra={
        ("mail_flow_policy", "NOAUTH"): {"access": "accept"},
        ("sender_group", "NOAUTH"): {"policy": "NOAUTH", "senders": ["127.0.0.11"]}}))
    c, icid, ehlo = session(moat)
    with c:
        assert auth_lines(ehlo) == ["AUTH PLAIN LOGIN"], ehlo.raw
        c.expect("QUIT", "221 2.0.0 Bye")
    c, icid, ehlo = session(moat, "127.0.0.11")
    with c:
        assert auth_lines(ehlo) == [], ehlo.raw
        c.expect("AUTH PLAIN " + plain("alice", USERS["alice"][1]),
                 "502 5.5.1 AUTH not available")
        c.expect("QUIT", "221 2.0.0 Bye")


def test_smtp_auth_off_by_default(moat_factory, passwd):
    """A profile on the listener alone offers nothing: the policies'
    smtp_auth is off unless set."""
    moat = moat_factory(auth_conf(passwd, smtp_auth=None))
    c, icid, ehlo = session(moat)
    with c:
        assert auth_lines(ehlo) == [], ehlo.raw
        c.expect("AUTH LOGIN", "502 5.5.1 AUTH not available")


def test_no_profile_no_auth(moat_factory, moatd_bin, passwd):
    """smtp_auth = preferred on a listener without smtp_auth_profile:
    either the configuration is refused naming smtp_auth_profile, or AUTH
    is simply not offered (there is nothing to check passwords against)."""
    conf = auth_conf(passwd)
    conf[("listener", "IncomingMail")].pop("smtp_auth_profile")
    moat = moat_factory(conf, start=False)
    r = subprocess.run([str(moatd_bin), "-t", "-c", str(moat.conf_path)],
                       capture_output=True, text=True, timeout=30)
    if r.returncode != 0:
        assert "smtp_auth_profile" in r.stderr, r.stderr
        return
    moat.start()
    c, icid, ehlo = session(moat)
    with c:
        assert auth_lines(ehlo) == [], ehlo.raw
        assert not re.match(SUCCESS, auth_plain(c, "alice", USERS["alice"][1]).line)


def test_auth_requires_tls_hides_auth(moat_factory, passwd):
    """auth_requires_tls = true: AUTH is offered only inside TLS; this
    policy has tls = off, so it is never offered and an AUTH is refused
    (test_tls_inbound.py covers AUTH after STARTTLS)."""
    moat = moat_factory(auth_conf(passwd, accepted={"auth_requires_tls": True}))
    c, icid, ehlo = session(moat)
    with c:
        assert auth_lines(ehlo) == [], ehlo.raw
        r = auth_plain(c, "alice", USERS["alice"][1])
        assert r.code in (502, 503, 530, 538), r.raw
    assert not [ln for ln in moat.log_lines() if "succeeded for user" in ln]


# ---------------------------------------------------------------------------
# PLAIN and LOGIN

def test_auth_plain_initial_response(moat_factory, passwd):
    """AUTH PLAIN with the initial response: 235 2.7.0 and the success
    line."""
    moat = moat_factory(auth_conf(passwd))
    c, icid, _ = session(moat)
    mark = moat.log_mark()
    with c:
        succeeded(auth_plain(c, "alice", USERS["alice"][1]))
        c.expect("QUIT", "221 2.0.0 Bye")
    expect_log(moat, ok_line(icid, "alice", "PLAIN"), mark)


def test_auth_plain_empty_challenge(moat_factory, passwd):
    """AUTH PLAIN without a response: the server sends '334 ' (an empty
    challenge) and takes the response on the next line."""
    moat = moat_factory(auth_conf(passwd))
    c, icid, _ = session(moat)
    mark = moat.log_mark()
    with c:
        r = c.cmd("AUTH PLAIN")
        assert r.raw == ["334 "], r.raw
        succeeded(c.cmd(plain("alice", USERS["alice"][1])))
    expect_log(moat, ok_line(icid, "alice", "PLAIN"), mark)


def test_auth_login_prompts(moat_factory, passwd):
    """AUTH LOGIN: '334 VXNlcm5hbWU6' (Username:), '334 UGFzc3dvcmQ6'
    (Password:), then 235; also with the user name as initial response."""
    moat = moat_factory(auth_conf(passwd))
    c, icid, _ = session(moat)
    mark = moat.log_mark()
    with c:
        c.expect("AUTH LOGIN", "334 VXNlcm5hbWU6")
        c.expect(b64("alice"), "334 UGFzc3dvcmQ6")
        succeeded(c.cmd(b64(USERS["alice"][1])))
    expect_log(moat, ok_line(icid, "alice", "LOGIN"), mark)
    c, icid, _ = session(moat)
    mark = moat.log_mark()
    with c:
        c.expect("AUTH LOGIN " + b64("dave"), "334 UGFzc3dvcmQ6")
        succeeded(c.cmd(b64(USERS["dave"][1])))
    expect_log(moat, ok_line(icid, "dave", "LOGIN"), mark)


@pytest.mark.parametrize("user", sorted(USERS), ids=[
    "%s-%s" % (u, USERS[u][0]) for u in sorted(USERS)])
def test_hash_schemes(moat_factory, passwd, user):
    """Each accepted scheme (sha512-crypt, yescrypt, bcrypt, sha256-crypt):
    the right password succeeds, a wrong one and the user name in another
    case fail."""
    moat = moat_factory(auth_conf(passwd))
    pw = USERS[user][1]
    c, icid, _ = session(moat)
    mark = moat.log_mark()
    with c:
        c.expect("AUTH PLAIN " + plain(user, pw + "!"), FAILED)
        c.expect("AUTH PLAIN " + plain(user.capitalize(), pw), FAILED)
        succeeded(auth_plain(c, user, pw))
    expect_log(moat, failed_line(icid, user, "PLAIN"), mark)
    expect_log(moat, ok_line(icid, user, "PLAIN"), mark)


def test_wrong_password_and_unknown_user(moat_factory, passwd):
    """535 5.7.8 for a wrong password (LOGIN), an unknown user (PLAIN) and
    refused PLAIN authorization identity that is not the user; each
    failure is logged with the user name tried; the right password still works in
    the same session."""
    moat = moat_factory(auth_conf(passwd))
    c, icid, _ = session(moat)
    mark = moat.log_mark()
    with c:
        c.expect("AUTH LOGIN", "334 VXNlcm5hbWU6")
        c.expect(b64("alice"), "334 UGFzc3dvcmQ6")
        c.expect(b64("not her password"), FAILED)
        c.expect("AUTH PLAIN " + plain("mallory", "anything"), FAILED)
        # a valid password with another authorization identity: refused
        # (RFC 4616: a well-formed request moat does not authorize: 535,
        # and it counts as a failure)
        c.expect("AUTH PLAIN " + plain("alice", USERS["alice"][1], authzid="bob"),
                 FAILED)
        succeeded(auth_plain(c, "alice", USERS["alice"][1]))
    expect_log(moat, failed_line(icid, "alice", "LOGIN"), mark)
    expect_log(moat, failed_line(icid, "mallory", "PLAIN"), mark)
    expect_log(moat, failed_line(icid, "alice", "PLAIN"), mark)
    expect_log(moat, ok_line(icid, "alice", "PLAIN"), mark)


def test_auth_cancelled_with_star(moat_factory, passwd):
    """'*' in answer to a challenge cancels the exchange with 501; the
    session goes on and can authenticate afterwards."""
    moat = moat_factory(auth_conf(passwd))
    c, icid, _ = session(moat)
    with c:
        c.expect("AUTH LOGIN", "334 VXNlcm5hbWU6")
        r = c.cmd("*")
        assert r.code == 501, r.raw
        c.expect("AUTH LOGIN", "334 VXNlcm5hbWU6")
        c.expect(b64("alice"), "334 UGFzc3dvcmQ6")
        assert c.cmd("*").code == 501
        assert c.cmd("AUTH PLAIN").raw == ["334 "]
        assert c.cmd("*").code == 501
        succeeded(auth_plain(c, "alice", USERS["alice"][1]))


def test_malformed_auth_commands(moat_factory, passwd):
    """Bad base64 gets 501, an unknown mechanism 504 (RFC 4954); neither
    authenticates."""
    moat = moat_factory(auth_conf(passwd))
    c, icid, _ = session(moat)
    with c:
        assert c.cmd("AUTH PLAIN not*base64").code == 501
        assert c.cmd("AUTH CRAM-MD5").code == 504
        assert c.cmd("AUTH").code == 501
        c.expect("AUTH LOGIN", "334 VXNlcm5hbWU6")
        assert c.cmd("%%%%").code == 501
        succeeded(auth_plain(c, "alice", USERS["alice"][1]))


def test_second_auth_and_auth_in_transaction_refused(moat_factory, passwd):
    """AUTH after a successful AUTH gets 503, as does AUTH during a mail
    transaction (RFC 4954)."""
    moat = moat_factory(auth_conf(passwd))
    c, icid, _ = session(moat)
    with c:
        c.expect("MAIL FROM:<s@test.example>", "250 2.1.0 Sender ok")
        assert auth_plain(c, "alice", USERS["alice"][1]).code == 503
        c.expect("RSET", "250 2.0.0 Reset state")
        succeeded(auth_plain(c, "alice", USERS["alice"][1]))
        assert auth_plain(c, "bob", USERS["bob"][1]).code == 503
        assert c.cmd("AUTH LOGIN").code == 503


def test_password_never_logged(moat_factory, passwd):
    """Neither a password nor the base64 response carrying it reaches the
    mail log, whether the AUTH succeeded or failed."""
    moat = moat_factory(auth_conf(passwd))
    secrets = []
    c, icid, _ = session(moat)
    with c:
        for pw in (USERS["alice"][1] + "-wrong", USERS["alice"][1]):
            c.expect("AUTH LOGIN", "334 VXNlcm5hbWU6")
            c.expect(b64("alice"), "334 UGFzc3dvcmQ6")
            c.cmd(b64(pw))
            secrets += [pw, b64(pw)]
        c.expect("QUIT", "221 2.0.0 Bye")
    c, icid, _ = session(moat)
    with c:
        auth_plain(c, "bob", USERS["bob"][1])
        secrets += [USERS["bob"][1], plain("bob", USERS["bob"][1])]
        c.expect("QUIT", "221 2.0.0 Bye")
    moat.wait_log(r"^ICID %d close$" % icid)
    text = moat.log_path.read_text(errors="replace")
    for s in secrets:
        assert s not in text, s


# ---------------------------------------------------------------------------
# relaying and smtp_auth = required

def test_authenticated_client_may_relay_on_public_listener(moat_factory, passwd):
    """Unauthenticated, a recipient outside the RAT is refused (550); after
    AUTH the same recipient is accepted (it skips the RAT) and the message
    is queued for it. Another session from the same address, without
    AUTH, still may not relay."""
    moat = moat_factory(auth_conf(passwd))
    c, icid, _ = session(moat)
    mark = moat.log_mark()
    with c:
        c.expect("MAIL FROM:<alice@example.com>", "250 2.1.0 Sender ok")
        c.expect("RCPT TO:<user@evil.example>", "550 5.1.0 Address rejected")
        c.expect("RSET", "250 2.0.0 Reset state")
        succeeded(auth_plain(c, "alice", USERS["alice"][1]))
        c.expect("MAIL FROM:<alice@example.com>", "250 2.1.0 Sender ok")
        c.expect("RCPT TO:<user@evil.example>", "250 2.1.5 Recipient ok")
        c.expect("RCPT TO:<u@example.com>", "250 2.1.5 Recipient ok")
        c.expect("DATA", DATA_GO)
        c.send(b"Subject: relayed\r\n\r\nbody\r\n.\r\n")
        m = re.fullmatch(r"250 2\.0\.0 Ok: Message (\d+) accepted", c.reply().line)
        assert m
        c.expect("QUIT", "221 2.0.0 Bye")
    mid = int(m.group(1))
    expect_log(moat, "MID %d ICID %d RID 0 To: <user@evil.example>" % (mid, icid), mark)
    expect_log(moat, "MID %d queued for delivery" % mid, mark)
    r = moat.ctl("queue", "show", mid)
    assert re.findall(r"^\s+RID \d+ <(.*)> ", r.stdout, re.M) == [
        "user@evil.example", "u@example.com"], r.stdout
    c, icid, _ = session(moat)
    with c:
        c.expect("MAIL FROM:<alice@example.com>", "250 2.1.0 Sender ok")
        c.expect("RCPT TO:<user@evil.example>", "550 5.1.0 Address rejected")


def test_failed_auth_does_not_allow_relaying(moat_factory, passwd):
    """A failed AUTH leaves the client unauthenticated: no relaying."""
    moat = moat_factory(auth_conf(passwd))
    c, icid, _ = session(moat)
    with c:
        c.expect("AUTH PLAIN " + plain("alice", "wrong"), FAILED)
        c.expect("MAIL FROM:<alice@example.com>", "250 2.1.0 Sender ok")
        c.expect("RCPT TO:<user@evil.example>", "550 5.1.0 Address rejected")


def test_smtp_auth_required(moat_factory, passwd):
    """smtp_auth = required: MAIL before a successful AUTH gets 530 5.7.0
    Authentication required (and the 'was required' log line); after AUTH
    the transaction goes through."""
    moat = moat_factory(auth_conf(passwd, smtp_auth="required"))
    c, icid, ehlo = session(moat)
    mark = moat.log_mark()
    with c:
        assert auth_lines(ehlo) == ["AUTH PLAIN LOGIN"], ehlo.raw
        c.expect("MAIL FROM:<alice@example.com>", "530 5.7.0 Authentication required")
        c.expect("AUTH PLAIN " + plain("alice", "wrong"), FAILED)
        c.expect("MAIL FROM:<alice@example.com>", "530 5.7.0 Authentication required")
        c.expect("QUIT", "221 2.0.0 Bye")
    expect_log(moat, "SMTP Auth (ICID %d) was required but remote host did not "
               "initiate it" % icid, mark)
    assert not [ln for ln in moat.log_lines()[mark:] if re.match(r"^Start MID", ln)]
    c, icid, _ = session(moat)
    with c:
        succeeded(auth_plain(c, "carol", USERS["carol"][1]))
        c.expect("MAIL FROM:<carol@example.com>", "250 2.1.0 Sender ok")
        c.expect("RCPT TO:<u@example.com>", "250 2.1.5 Recipient ok")


# ---------------------------------------------------------------------------
# lockout after auth_max_failures

def test_lockout_after_max_failures(moat_factory, passwd):
    """auth_max_failures = 3: after three failures from 127.0.0.10 (over
    two sessions) its next AUTH, even with the right password, gets
    421 4.7.0 and the session is closed; a new session from it too;
    127.0.0.11 is not affected."""
    moat = moat_factory(auth_conf(passwd, auth_max_failures=3))
    good = plain("alice", USERS["alice"][1])
    c, icid, _ = session(moat, "127.0.0.10")
    with c:
        c.expect("AUTH PLAIN " + plain("alice", "wrong1"), FAILED)
        c.expect("AUTH LOGIN", "334 VXNlcm5hbWU6")
        c.expect(b64("alice"), "334 UGFzc3dvcmQ6")
        c.expect(b64("wrong2"), FAILED)
        c.expect("QUIT", "221 2.0.0 Bye")
    c, icid, _ = session(moat, "127.0.0.10")
    with c:
        c.expect("AUTH PLAIN " + plain("bob", "wrong3"), FAILED)
        r = c.cmd("AUTH PLAIN " + good)
        assert r.code == 421 and r.line.startswith("421 4.7.0 "), r.raw
        assert c.closed()
    c, icid, _ = session(moat, "127.0.0.10")
    with c:
        r = c.cmd("AUTH PLAIN " + good)
        assert r.code == 421 and r.line.startswith("421 4.7.0 "), r.raw
        assert c.closed()
    c, icid, _ = session(moat, "127.0.0.11")
    with c:
        succeeded(c.cmd("AUTH PLAIN " + good))
    assert len([ln for ln in moat.log_lines() if "succeeded for user" in ln]) == 1


def test_lockout_ends_after_rate_limit_period(moat_factory, passwd):
    """With rate_limit_period = 4 s the failure count starts again: after
    the lockout, a later AUTH with the right password succeeds (polled
    with new sessions, bounded)."""
    moat = moat_factory(auth_conf(passwd, auth_max_failures=2, rate_limit_period=4))
    good = "AUTH PLAIN " + plain("alice", USERS["alice"][1])
    c, icid, _ = session(moat, "127.0.0.10")
    with c:
        c.expect("AUTH PLAIN " + plain("alice", "wrong1"), FAILED)
        c.expect("AUTH PLAIN " + plain("alice", "wrong2"), FAILED)
        r = c.cmd(good)
        assert r.code == 421 and r.line.startswith("421 4.7.0 "), r.raw
    deadline = time.monotonic() + 30
    seen = []
    while True:
        c, icid, _ = session(moat, "127.0.0.10")
        with c:
            r = c.cmd(good)
        seen.append(r.line)
        if r.code == 235:
            break
        assert r.code == 421, seen
        assert time.monotonic() < deadline, "still locked out after 30 s: %r" % seen
        time.sleep(0.5)
    assert re.match(SUCCESS, seen[-1])


# ---------------------------------------------------------------------------
# swaks as a second client

@pytest.mark.parametrize("mech", ["PLAIN", "LOGIN"])
def test_swaks_auth(moat_factory, passwd, swaks, mech):
    """swaks --auth PLAIN/LOGIN: the right password authenticates and the
    message to an outside domain is relayed; a wrong one fails (535) and
    swaks reports the failure."""
    moat = moat_factory(auth_conf(passwd))
    port = moat.ports["IncomingMail"]
    mark = moat.log_mark()
    r = swaks(port, "--auth", mech, "--auth-user", "bob",
              "--auth-password", USERS["bob"][1],
              "--from", "bob@example.com", "--to", "friend@evil.example")
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert re.search(r"^<-\s+235 2\.7\.0 ", out, re.M), out
    assert re.search(r"^<-\s+250 2\.0\.0 Ok: Message \d+ accepted", out, re.M), out
    moat.wait_log(r"^SMTP Auth: \(ICID \d+\) succeeded for user: bob using AUTH "
                  r"mechanism: %s with profile: %s$" % (mech, PROFILE), since=mark)
    moat.wait_log(r"^MID \d+ ICID \d+ RID 0 To: <friend@evil\.example>$", since=mark)
    r = swaks(port, "--auth", mech, "--auth-user", "bob", "--auth-password", "nope",
              "--from", "bob@example.com", "--to", "friend@evil.example")
    out = r.stdout + r.stderr
    assert r.returncode != 0, out
    assert FAILED in out, out
    moat.wait_log(r"^SMTP Auth \(ICID \d+\) failed for user: bob using AUTH "
                  r"mechanism: %s with profile: %s$" % (mech, PROFILE), since=mark)


# ---------------------------------------------------------------------------
# configuration

def check(moatd_bin, path):
    return subprocess.run([str(moatd_bin), "-t", "-c", str(path)],
                          capture_output=True, text=True, timeout=30)


def conf_text(passwd, listener_extra="", profile_block=None):
    if profile_block is None:
        profile_block = 'smtp_auth_profile "staff" { password_file = "%s"; }' % passwd
    return (
        'hostname = "gw.test.example";\n'                                        # 1
        'listener "In" { type = public; address = "127.0.0.1:2525"; %s }\n'      # 2
        % (listener_extra or 'smtp_auth_profile = "staff";') +
        'rat "In" { "example.com" = accept; }\n'                                 # 3
        'auth_max_failures = 5;\n'                                               # 4
        '%s\n' % profile_block +                                                 # 5
        'hat "In" { mail_flow_policy "ACCEPTED" { smtp_auth = preferred; '
        'auth_requires_tls = false; } }\n')                                      # 6


def test_auth_configuration_valid(moatd_bin, tmp_path, passwd):
    """The SMTP AUTH keys together are accepted by moatd -t."""
    f = tmp_path / "moat.conf"
    f.write_text(conf_text(passwd))
    r = check(moatd_bin, f)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "moatd: configuration %s is valid\n" % f


@pytest.mark.parametrize("case", ["unknown-profile", "missing-file", "md5-hash",
                                  "duplicate-user", "bad-max-failures"])
def test_auth_configuration_errors(moatd_bin, tmp_path, passwd, case):
    """Refused with file:line: a listener naming an unknown profile (line
    2), a missing password file (line 5), a password file with an MD5
    hash or a user twice (reported in the password file, PATH:LINE), an
    auth_max_failures of 0 (line 4)."""
    f = tmp_path / "moat.conf"
    pf = tmp_path / "bad-passwd"
    if case == "unknown-profile":
        text, where = conf_text(passwd, 'smtp_auth_profile = "nobody";'), (f, 2, "nobody")
    elif case == "missing-file":
        text = conf_text(passwd, profile_block='smtp_auth_profile "staff" { '
                         'password_file = "%s"; }' % (tmp_path / "no-such-file"))
        where = (f, 5, "no-such-file")
    elif case == "md5-hash":
        pf.write_text("alice:%s\n# ok\nbob:%s\n" % (
            make_hash("sha512", "x"), crypt.crypt("x", crypt.mksalt(crypt.METHOD_MD5))))
        text = conf_text(pf)
        where = (pf, 3, "")
    elif case == "duplicate-user":
        pf.write_text("alice:%s\nalice:%s\n" % (make_hash("sha512", "x"), make_hash("sha512", "y")))
        text = conf_text(pf)
        where = (pf, 2, "alice")
    else:
        text = conf_text(passwd).replace("auth_max_failures = 5;", "auth_max_failures = 0;")
        where = (f, 4, "auth_max_failures")
    f.write_text(text)
    r = check(moatd_bin, f)
    assert r.returncode == 1, (r.stdout, r.stderr)
    path, line, word = where
    assert re.search(r"^(.*: )?%s:%d(:\d+)?: .*%s" % (re.escape(str(path)), line, re.escape(word)),
                     r.stderr, re.M), r.stderr


# ---------------------------------------------------------------------------
# a password check that outlives its session


def test_check_finishing_after_a_timeout_does_not_reopen_the_session(
        moat_factory, tmp_path):
    """The session times out (connection_timeout) while a slow password
    check runs and while its 421 cannot be written (the client reads
    nothing): when the check finishes it must not answer, run the
    commands pipelined after AUTH, or accept a message. (Found in review:
    it used to reply 235 after the 421 and queue the message.)"""
    import socket
    slow = crypt.crypt("pw", crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=2 ** 16))
    f = tmp_path / "slow.passwd"
    f.write_text("alice:%s\n" % slow)
    conf = auth_conf(f)
    conf[("listener", "IncomingMail")]["connection_timeout"] = 2
    moat = moat_factory(conf)
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
    s.settimeout(10)
    s.connect(("127.0.0.1", moat.ports["IncomingMail"]))
    try:
        assert s.recv(100).startswith(b"220 ")
        s.sendall(b"EHLO client.example\r\n")
        time.sleep(0.3)
        s.recv(4096)
        # Enough NOOP replies to fill the socket buffers, so that the 421
        # stays queued in moatd; then AUTH and a whole transaction.
        s.sendall(b"NOOP\r\n" * 120000 +
                  b"AUTH PLAIN " + plain("alice", "pw").encode() + b"\r\n"
                  b"MAIL FROM:<a@example.net>\r\n"
                  b"RCPT TO:<victim@elsewhere.example>\r\n"
                  b"DATA\r\nSubject: x\r\n\r\nx\r\n.\r\n")
        moat.wait_log(r"^ICID \d+ disconnected address 127\.0\.0\.1, "
                      r"exceeded allowable connection time", 20)
        # Longer than the check takes (bcrypt 2^16: about a second here).
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline:
            text = "\n".join(moat.log_lines())
            assert "SMTP Auth" not in text, text
            assert "Start MID" not in text, text
            time.sleep(0.5)
    finally:
        s.close()
    moat.wait_log(r"^ICID \d+ (close|lost)$", 10)
    # The session is gone, not parked with its socket half closed.
    deadline = time.monotonic() + 10
    while not re.search(r"Current Inbound Conn\. +0$",
                        moat.ctl("status").stdout, re.M):
        assert time.monotonic() < deadline, moat.ctl("status").stdout
        time.sleep(0.2)
