"""A real authoritative DNS server (Knot DNS, ``knotd``) on loopback for
moat's integration tests.

Tests must never reach the system resolver nor the real root servers: every
zone moat may ask about, the root included, is served by one ``knotd`` that
the test starts on ``127.0.0.1@<free port>``. moat (libunbound) is pointed at
it with a stub zone for "." (``ub_ctx_set_stub(ctx, ".", "127.0.0.1@PORT",
0)``), so its iterator sends every query (RD=0) to this one server, and knot
answers each from the most specific zone it hosts.

Zones are Python data::

    {
        "example.net": [
            ("@", "MX", "10 mx1.example.net."),
            ("mx1", "A", "127.0.0.2"),
            ("mx1", "AAAA", "::2"),
            ("@", "TXT", "v=spf1 -all"),          # TXT is quoted for you
            ("short", 5, "A", "127.0.0.9"),       # (owner, ttl, type, rdata)
        ],
    }

* A zone name may be written with or without the final dot; "." is the root.
* An owner is "@" (the apex), a name relative to the zone ("mx1"), or an
  absolute name ending in "." (which must be inside the zone).
* rdata is zone-file text, written verbatim, except for TXT/SPF: a str not
  already starting with '"' is quoted (and split into 255-byte strings, as
  long DKIM keys need); a list/tuple gives several strings.
* Every zone gets an apex SOA and NS unless it lists its own. The root zone
  always exists, so that a name under no configured zone gets a proper
  authoritative NXDOMAIN from the root rather than REFUSED.
* Each zone (SERVFAIL ones too) is delegated (NS) from the closest
  enclosing served zone, as on the real Internet: qname-minimising
  resolvers see empty non-terminals (NOERROR) on the way down, not NXDOMAIN
  (with ``qname-minimisation-strict: yes`` a missing delegation would give
  NXDOMAIN). The NS target is ``ns.dns-fixture.invalid.``: knot never needs
  it (it answers from the child zone itself) and a resolver that tried to
  follow it would get NXDOMAIN for ``.invalid`` locally instead of querying
  port 53. (knotd logs "check, node ., missing glue record" for the root:
  harmless.)
* All records default to a short TTL (``ttl=`` of DnsServer, 1 second) so
  that resolvers (moat's cache) see a reload almost at once. SOA MINIMUM
  (negative caching) is the same value.

SERVFAIL: a zone in ``servfail`` is configured in knot.conf with a zone file
that does not exist, so knot holds no data for it and answers SERVFAIL for
the zone's apex and every name below it (even when the parent zone is
served). A zone that was served and becomes SERVFAIL is purged from knot
(``knotc zone-purge``), since a failed reload would keep the old data.
Note that libunbound caches a SERVFAIL for 5 seconds (NORR_TTL, not
configurable in unbound 1.17): a test that repairs a zone must wait that
long, or use another name, before moat sees the repair.

Resolver side (libunbound 1.17, checked with a C client): the stub alone
works (an explicit stub-addr on 127.0.0.1 is queried even without
``"do-not-query-localhost:", "no"``; setting it anyway is harmless). Names under ``test.`` are answered
NXDOMAIN by unbound's built-in local zone: ``"local-zone:", "test.
nodefault"`` has no effect through ub_ctx_set_option (an unbound parsing
bug: it stores "test. nodefault" as the name); ``"local-zone:", "test.
transparent"`` works, as does "local-zone: test. nodefault" in a file read
by ub_ctx_config(). A SERVFAIL from this server takes milliseconds (unbound
retries it ``outbound-msg-retry`` = 5 times, all on loopback).

Usage::

    from dnsserver import DnsServer

    with DnsServer(tmp_path / "dns", {"example.net": [...]},
                   servfail=["broken.example"]) as dns:
        # moat's resolver: stub "." -> dns.address ("127.0.0.1@PORT")
        assert dns.query("example.net", "MX").rdata() == ["10 mx1.example.net."]
        dns.set_zone("example.net", [("@", "MX", "20 mx2.example.net.")])
        dns.set_servfail("example.net")
        dns.reload({"example.org": [...]}, servfail=[])  # replace everything

Changes (set_zone, remove_zone, set_servfail, reload) are live: knotd is told
(``knotc reload`` / ``zone-reload`` / ``zone-purge``) and the call returns
only once knotd serves the new state: every served zone answers its SOA with
the new serial (all zone files are rewritten with one new serial on each
change) and every SERVFAIL zone answers SERVFAIL.
"""

import json
import os
import random
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time
from pathlib import Path

KNOTD = shutil.which("knotd") or "/usr/sbin/knotd"
KNOTC = shutil.which("knotc") or "/usr/sbin/knotc"
KDIG = shutil.which("kdig") or "/usr/bin/kdig"
KEYMGR = shutil.which("keymgr") or "/usr/sbin/keymgr"

DEFAULT_TTL = 1         # seconds, for every record unless given
SERIAL_STEP = 10        # zone file serial step per change (room for knot's
                        # own increments when it signs)
START_TIMEOUT = 10.0    # seconds for knotd to serve every zone
RELOAD_TIMEOUT = 10.0   # seconds for a change to be served
STOP_TIMEOUT = 5.0      # seconds after SIGTERM before SIGKILL

# NS target of every zone and delegation (see the module docstring).
NS_NAME = "ns.dns-fixture.invalid."
HOSTMASTER = "hostmaster.dns-fixture.invalid."

RCODES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN",
          4: "NOTIMP", 5: "REFUSED"}

_T_SOA = 6


def knot_available():
    """True when knotd, knotc and kdig are installed (knot, knot-dnsutils)."""
    return all(os.access(p, os.X_OK) for p in (KNOTD, KNOTC, KDIG))


# --------------------------------------------------------------------------
# names and zone files

def zone_name(name):
    """Canonical zone/domain name: lower case, with the final dot."""
    name = str(name).strip().lower()
    if name in ("", "."):
        return "."
    return name if name.endswith(".") else name + "."


def _parent(name):
    """The name one label up ("a.b." -> "b.", "b." -> ".")."""
    return "." if name.count(".") <= 1 else name.split(".", 1)[1]


def _is_below(name, zone):
    """True when name is zone itself or inside it (both canonical)."""
    return zone == "." or name == zone or name.endswith("." + zone)


def _txt_rdata(value):
    """TXT rdata text from a str (split into 255-byte strings) or a list of
    str (one character-string each); a str already starting with a quote is
    zone-file text and is kept as it is."""
    if isinstance(value, str):
        if value.startswith('"'):
            return value
        raw = value.encode()
        parts = [raw[i:i + 255] for i in range(0, len(raw), 255)] or [b""]
    else:
        parts = [str(p).encode() for p in value]

    def quote(b):  # zone-file escapes: \" \\ and \DDD for non-printables
        return '"' + "".join(
            "\\" + chr(c) if c in b'"\\' else
            chr(c) if 0x20 <= c < 0x7F else "\\%03d" % c for c in b) + '"'
    return " ".join(quote(p) for p in parts)


def _record(zone, rec, default_ttl):
    """(owner, ttl, TYPE, rdata) with an absolute owner, from a 3- or
    4-tuple given by a test."""
    if len(rec) == 3:
        owner, rtype, rdata = rec
        ttl = default_ttl
    elif len(rec) == 4:
        owner, ttl, rtype, rdata = rec
    else:
        raise ValueError("record must be (owner, type, rdata) or "
                         "(owner, ttl, type, rdata): %r" % (rec,))
    owner = str(owner)
    if owner == "@":
        owner = zone
    elif not owner.endswith("."):
        owner = owner + ("." if zone == "." else "." + zone)
    owner = owner.lower()
    if not _is_below(owner, zone):
        raise ValueError("owner %s is outside zone %s" % (owner, zone))
    rtype = str(rtype).upper()
    if rtype in ("TXT", "SPF"):
        rdata = _txt_rdata(rdata)
    return owner, int(ttl), rtype, str(rdata)


# --------------------------------------------------------------------------
# a minimal DNS client (UDP), for readiness checks without a subprocess

def _encode_name(name):
    out = b""
    for label in zone_name(name).rstrip(".").split("."):
        if label:
            out += bytes([len(label)]) + label.encode("ascii")
    return out + b"\0"


def _skip_name(msg, off):
    while True:
        n = msg[off]
        if n == 0:
            return off + 1
        if n & 0xC0 == 0xC0:
            return off + 2
        off += 1 + n


def udp_query(host, port, name, qtype, timeout=0.5):
    """One non-recursive query over UDP. Returns (rcode, aa, answers) where
    answers is a list of (type, rdata_offset, rdlength, message), or None
    when no answer came within timeout."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    qid = random.randrange(65536)
    query = (struct.pack(">HHHHHH", qid, 0, 1, 0, 0, 0) + _encode_name(name)
             + struct.pack(">HH", qtype, 1))
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        try:
            s.sendto(query, (host, port))
            while True:
                msg = s.recv(65535)
                if len(msg) >= 12 and struct.unpack(">H", msg[:2])[0] == qid:
                    break
        except OSError:  # timeout, or ICMP port unreachable (not up yet)
            return None
    _, flags, qd, an, _, _ = struct.unpack(">HHHHHH", msg[:12])
    off = 12
    for _ in range(qd):
        off = _skip_name(msg, off) + 4
    answers = []
    for _ in range(an):
        off = _skip_name(msg, off)
        rtype, _, _, rdlen = struct.unpack(">HHIH", msg[off:off + 10])
        off += 10
        answers.append((rtype, off, rdlen, msg))
        off += rdlen
    return flags & 0xF, bool(flags & 0x0400), answers


def _soa_serial(host, port, zone, timeout=0.5):
    """("NOERROR", serial) for an authoritative SOA answer at the zone apex,
    (RCODE name, None) otherwise, (None, None) when nothing answered."""
    r = udp_query(host, port, zone, _T_SOA, timeout)
    if r is None:
        return None, None
    rcode, aa, answers = r
    for rtype, off, _, msg in answers:
        if rtype == _T_SOA and aa and rcode == 0:
            off = _skip_name(msg, _skip_name(msg, off))  # MNAME, RNAME
            return "NOERROR", struct.unpack(">I", msg[off:off + 4])[0]
    return RCODES.get(rcode, str(rcode)), None


# --------------------------------------------------------------------------
# kdig answers

class DnsAnswer:
    """A kdig answer (parsed from ``kdig +json``, RFC 8427).

    ``rcode`` ("NOERROR", "NXDOMAIN", "SERVFAIL", ...), ``aa`` (bool),
    ``answer``/``authority``/``additional``: lists of (name, TYPE, ttl,
    rdata text); ``raw``: the JSON dict.
    """

    def __init__(self, raw):
        self.raw = raw
        self.rcode = RCODES.get(raw.get("RCODE"), str(raw.get("RCODE")))
        self.aa = bool(raw.get("AA"))
        self.answer = self._rrs("answerRRs")
        self.authority = self._rrs("authorityRRs")
        self.additional = self._rrs("additionalRRs")

    def _rrs(self, key):
        out = []
        for rr in self.raw.get(key, []):
            tname = rr.get("TYPEname", str(rr.get("TYPE")))
            rdata = rr.get("rdata" + tname)
            if rdata is None:  # a type kdig has no text form for
                rdata = "\\# %d %s" % (rr.get("RDLENGTH", 0), rr.get("RDATAHEX", ""))
            out.append((rr.get("NAME"), tname, rr.get("TTL"), rdata))
        return out

    def rdata(self, rtype=None):
        """rdata texts of the answer section (of type rtype if given)."""
        return [r[3] for r in self.answer
                if rtype is None or r[1] == rtype.upper()]

    def __repr__(self):
        return "<DnsAnswer %s aa=%s answer=%r authority=%r>" % (
            self.rcode, self.aa, self.answer, self.authority)


# --------------------------------------------------------------------------
# the server

def _free_port(host):
    """A port free for both UDP and TCP on host."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _ in range(100):
        with socket.socket(family, socket.SOCK_DGRAM) as u:
            u.bind((host, 0))
            port = u.getsockname()[1]
            with socket.socket(family, socket.SOCK_STREAM) as t:
                try:
                    t.bind((host, port))
                except OSError:
                    continue
        return port
    raise RuntimeError("no free UDP+TCP port on %s" % host)


class DnsServer:
    """One knotd serving ``zones`` on ``host@port``, all files under
    ``workdir`` (made if missing): knot.conf, zones/, db/ (journal, timers,
    keys), knotd.log, knotd.pid and the control socket.

    ``zones``: {zone name: [records]} (see the module docstring); the root
    zone is added when missing. ``servfail``: zone names answered with
    SERVFAIL (a name may be in both: SERVFAIL wins until set_servfail(name,
    False)). ``ttl``: default TTL. ``port``: fixed port (default: a free
    one). ``start``: start at once (default True).

    ``dnssec=True``: knot signs every served zone except those in
    ``unsigned`` (default policy: ECDSA P-256 KSK+ZSK, NSEC; keys made by
    knot in db/), and each signed zone's DS (SHA-256) is put in its parent
    next to the delegation, so the chain of trust is complete from the root;
    ``trust_anchor`` is then the root's DS record, for ub_ctx_add_ta(). An
    ``unsigned`` zone is an insecure delegation (no DS).

    Attributes: ``host``, ``port``, ``address`` ("127.0.0.1@PORT", the form
    unbound's stub-addr and moat take), ``workdir``, ``conf_path``,
    ``log_path``, ``serial`` (of every served zone now), ``proc``.
    """

    def __init__(self, workdir, zones=None, *, servfail=(), ttl=DEFAULT_TTL,
                 host="127.0.0.1", port=None, dnssec=False, unsigned=(),
                 start=True):
        self.workdir = Path(workdir).resolve()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.zone_dir = self.workdir / "zones"
        self.db_dir = self.workdir / "db"
        self.zone_dir.mkdir(exist_ok=True)
        self.db_dir.mkdir(exist_ok=True)
        self.conf_path = self.workdir / "knot.conf"
        self.log_path = self.workdir / "knotd.log"
        self.host = host
        self.port = port or _free_port(host)
        self.ttl = int(ttl)
        self.dnssec = bool(dnssec)
        self.unsigned = {zone_name(z) for z in unsigned}
        self._ds = {}  # signed zone -> its DS records (text), put in the parent
        self.proc = None
        self.serial = 0
        self._zones = {}
        self._servfail = set()
        self._applied_ok = set()   # zones served (loaded) after the last apply
        self._applied_all = set()  # zones in knot.conf after the last apply
        # The control socket path must fit in sun_path (108 bytes); pytest's
        # tmp_path can be long, so fall back to a short private directory.
        sock = self.workdir / "knot.sock"
        self._sock_dir = None
        if len(str(sock)) > 100:
            self._sock_dir = tempfile.mkdtemp(prefix="knotc-", dir="/tmp")
            sock = Path(self._sock_dir) / "knot.sock"
        self.sock_path = sock
        self._set_all(zones or {}, servfail)
        if start:
            self.start()

    # -- properties --

    @property
    def address(self):
        """"127.0.0.1@PORT": what a stub zone / forwarder setting takes."""
        return "%s@%d" % (self.host, self.port)

    @property
    def zones(self):
        """{canonical zone name: [(owner, ttl, TYPE, rdata)]}, a copy (the
        automatic SOA, NS and delegations not included)."""
        return {z: list(r) for z, r in self._zones.items()}

    @property
    def servfail(self):
        return set(self._servfail)

    @property
    def trust_anchor(self):
        """The root zone's DS record (". DS tag 13 2 hex"), as
        ub_ctx_add_ta() or a trust-anchor file takes it; None unless dnssec
        and the root is signed."""
        if not self.dnssec or "." in self.unsigned:
            return None
        ds = self._keymgr_ds(".")
        return ds[0] if ds else None

    def write_trust_anchor(self, path):
        """Write trust_anchor to path (a trust-anchor-file); returns path."""
        Path(path).write_text(self.trust_anchor + "\n")
        return path

    # -- life cycle --

    def start(self, timeout=START_TIMEOUT):
        """Write the files, start knotd and wait until it serves every zone."""
        if self.running():
            return self
        self._write_files()
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [KNOTD, "-c", str(self.conf_path)], stdin=subprocess.DEVNULL,
            stdout=self._log, stderr=subprocess.STDOUT, cwd=str(self.workdir),
            start_new_session=True)
        try:
            self._wait_served(timeout, "start")
        except BaseException:
            self.stop()
            raise
        self._applied_ok = self._served_zones()
        self._applied_all = set(self._zones) | self._servfail
        self._sync_ds()
        return self

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout=STOP_TIMEOUT):
        """SIGTERM, wait up to timeout, then SIGKILL. Returns knotd's exit
        status (None if it was not started)."""
        if self.proc is None:
            return None
        rc = self.proc.poll()
        if rc is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                rc = self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                rc = self.proc.wait(timeout=10)
        self.proc = None
        self._log.close()
        return rc

    def cleanup(self):
        """stop() and remove the short control-socket directory, if any."""
        self.stop()
        if self._sock_dir:
            shutil.rmtree(self._sock_dir, ignore_errors=True)
            self._sock_dir = None

    def __enter__(self):
        return self if self.running() else self.start()

    def __exit__(self, *exc):
        self.cleanup()

    # -- changing what is served --

    def set_zone(self, name, records, apply=True):
        """Add or replace zone ``name`` with ``records``; served at once
        unless apply=False (then call reload())."""
        self._zones[zone_name(name)] = self._records(zone_name(name), records)
        if apply:
            self.reload()

    def remove_zone(self, name, apply=True):
        """Stop serving zone ``name`` (its names then fall under the parent
        zone: NXDOMAIN from the root, typically). The root stays."""
        name = zone_name(name)
        if name != ".":
            self._zones.pop(name, None)
            self._servfail.discard(name)
        else:
            self._zones["."] = []
        if apply:
            self.reload()

    def set_servfail(self, name, on=True, apply=True):
        """Make zone ``name`` (and every name below it) answer SERVFAIL, or
        with on=False serve it again (its records if it has any, else an
        empty zone with SOA and NS)."""
        name = zone_name(name)
        if on:
            self._servfail.add(name)
        else:
            self._servfail.discard(name)
            self._zones.setdefault(name, [])
        if apply:
            self.reload()

    def reload(self, zones=None, servfail=None, timeout=RELOAD_TIMEOUT):
        """Apply the current zones to the running knotd and wait until they
        are served. ``zones`` given: replaces every zone (the root is added
        when missing); ``servfail`` given: replaces the SERVFAIL set."""
        if zones is not None or servfail is not None:
            self._set_all(self._zones if zones is None else zones,
                          self._servfail if servfail is None else servfail)
        if not self.running():
            self._write_files()
            return
        before_ok, before_all = self._applied_ok, self._applied_all
        self._write_files()
        self._knotc("reload")  # configuration: zones added, removed, re-filed
        now_ok = self._served_zones()
        # Served before and still served: same knot.conf entry, so tell knot
        # to read the rewritten file (a config reload only re-reads files
        # whose mtime it sees change).
        same = sorted(before_ok & now_ok)
        if same:
            self._knotc("zone-reload", *same)
        # Served before, SERVFAIL now: a failed load keeps the old data, so
        # drop it.
        for z in sorted(before_ok & self._servfail):
            self._knotc("-b", "-f", "zone-purge", z)
        self._wait_served(timeout, "reload",
                          gone=before_all - set(self._zones) - self._servfail)
        self._applied_ok = now_ok
        self._applied_all = set(self._zones) | self._servfail
        self._sync_ds()

    # -- queries --

    def query(self, name, rtype="A", *, tcp=False, dnssec=False, timeout=2):
        """Ask knotd with kdig (no recursion) and return a DnsAnswer; for
        test debugging: ``print(dns.query("example.net", "MX"))``."""
        cmd = [KDIG, "@" + self.host, "-p", str(self.port), "+norec",
               "+json", "+timeout=%d" % timeout, "+retry=0"]
        if tcp:
            cmd.append("+tcp")
        if dnssec:
            cmd.append("+dnssec")
        cmd += [str(name), str(rtype)]
        r = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True,
                           text=True, timeout=timeout + 10)
        try:
            return DnsAnswer(json.loads(r.stdout))
        except ValueError:
            raise AssertionError("kdig %s %s failed (%s):\n%s%s\n%s"
                                 % (name, rtype, r.returncode, r.stdout,
                                    r.stderr, self.report())) from None

    # -- observation --

    def log_text(self):
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def report(self, n=30):
        """The knotd log tail, for assertion messages."""
        lines = self.log_text().splitlines()[-n:]
        return "--- knotd log tail (%s):\n%s" % (self.log_path, "\n".join(lines))

    # -- internals --

    def _records(self, zone, records):
        return [_record(zone, r, self.ttl) for r in records]

    def _set_all(self, zones, servfail):
        # Records already normalised go through _record() unchanged.
        new = {}
        for name, records in zones.items():
            z = zone_name(name)
            new[z] = self._records(z, records)
        new.setdefault(".", [])
        self._zones = new
        self._servfail = {zone_name(z) for z in servfail}

    def _served_zones(self):
        """Zones knot loads (configured, not SERVFAIL)."""
        return set(self._zones) - self._servfail

    def _zone_file(self, zone):
        return self.zone_dir / ("root.zone" if zone == "." else zone + "zone")

    def _write_files(self):
        """knot.conf and one zone file per served zone, with a new serial."""
        self.serial += SERIAL_STEP
        served = self._served_zones()
        # Delegations: each zone (SERVFAIL ones too) gets NS in its closest
        # served ancestor (at least the root). For a SERVFAIL zone this is
        # needed with DNSSEC: without it the parent's NSEC records would
        # prove the name does not exist, and a validating resolver with
        # aggressive NSEC (unbound's default) would answer NXDOMAIN from its
        # cache instead of asking (and getting SERVFAIL).
        cuts = {}
        for z in served | self._servfail:
            if z == ".":
                continue
            p = _parent(z)
            while p not in served and p != ".":
                p = _parent(p)
            if p in served:
                cuts.setdefault(p, []).append(z)

        for z in served:
            recs = self._zones[z]
            has = {(o, t) for o, _, t, _ in recs}
            lines = ["; written by tests/integration/dnsserver.py",
                     "$TTL %d" % self.ttl]
            if (z, "SOA") not in has:
                lines.append("%s %d SOA %s %s %d 3600 600 86400 %d"
                             % (z, self.ttl, NS_NAME, HOSTMASTER, self.serial,
                                self.ttl))
            if (z, "NS") not in has:
                lines.append("%s %d NS %s" % (z, self.ttl, NS_NAME))
            for child in sorted(cuts.get(z, [])):
                if (child, "NS") not in has:
                    lines.append("%s %d NS %s" % (child, self.ttl, NS_NAME))
                if ((child, "DS") not in has and self._signed(child)
                        and child in served):
                    lines += [self._ds_rr(ds) for ds in self._ds.get(child, [])]
            for owner, ttl, rtype, rdata in recs:
                lines.append("%s %d %s %s" % (owner, ttl, rtype, rdata))
            tmp = self._zone_file(z).with_suffix(".tmp")
            tmp.write_text("\n".join(lines) + "\n")
            os.replace(tmp, self._zone_file(z))  # knot never reads half a file

        zone_entries = []
        for z in sorted(set(self._zones) | self._servfail):
            f = self._zone_file(z)
            if z in self._servfail:
                # A file that never exists: knot has no data, says SERVFAIL.
                f = f.with_name(f.name + ".servfail-no-such-file")
            zone_entries.append('  - domain: "%s"\n    file: "%s"\n' % (z, f))
            if self._signed(z) and z not in self._servfail:
                zone_entries.append("    dnssec-signing: on\n")
        conf = CONF_TEMPLATE.format(
            dir=self.workdir, listen="%s@%d" % (self.host, self.port),
            sock=self.sock_path, db=self.db_dir, zones=self.zone_dir)
        tmp = self.conf_path.with_suffix(".tmp")
        tmp.write_text(conf + "".join(zone_entries))
        os.replace(tmp, self.conf_path)
        # Zone files of zones no longer served, so that the directory shows
        # what is served.
        keep = {self._zone_file(z).name for z in served}
        for f in self.zone_dir.glob("*zone"):
            if f.name not in keep:
                f.unlink()

    # -- DNSSEC --

    def _signed(self, zone):
        return self.dnssec and zone not in self.unsigned

    def _ds_rr(self, ds):
        """"example.net. DS 1234 13 2 HEX" -> a zone file line with our TTL."""
        f = ds.split()
        return " ".join([f[0], str(self.ttl)] + f[1:])

    def _keymgr_ds(self, zone):
        """DS records (SHA-256) of the zone's KSK, from knot's key database."""
        r = subprocess.run([KEYMGR, "-c", str(self.conf_path), zone, "ds"],
                           stdin=subprocess.DEVNULL, capture_output=True,
                           text=True, timeout=20)
        if r.returncode != 0:
            raise AssertionError("keymgr %s ds failed (%s):\n%s%s"
                                 % (zone, r.returncode, r.stdout, r.stderr))
        return [ln.strip() for ln in r.stdout.splitlines()
                if len(ln.split()) == 6 and ln.split()[1] == "DS"
                and ln.split()[4] == "2"]

    def _sync_ds(self):
        """With dnssec: after knot has made the keys of new zones (at their
        first load), put their DS in the parents and serve that."""
        if not self.dnssec:
            return
        ds = {z: self._keymgr_ds(z) for z in self._served_zones()
              if z != "." and self._signed(z)}
        if ds == {z: self._ds.get(z) for z in ds}:
            return
        self._ds = ds
        self._write_files()  # same knot.conf, new zone files
        self._knotc("zone-reload", *sorted(self._served_zones()))
        self._wait_served(RELOAD_TIMEOUT, "DS update")

    def _knotc(self, *args, timeout=20):
        r = subprocess.run([KNOTC, "-c", str(self.conf_path), "-t", "10", *args],
                           stdin=subprocess.DEVNULL, capture_output=True,
                           text=True, timeout=timeout)
        if r.returncode != 0:
            raise AssertionError("knotc %s failed (%s):\n%s%s\n%s"
                                 % (" ".join(args), r.returncode, r.stdout,
                                    r.stderr, self.report()))
        return r.stdout

    def _wait_served(self, timeout, what, gone=()):
        """Poll (UDP SOA queries) until every served zone answers with the
        current serial, every SERVFAIL zone answers SERVFAIL and every zone
        in ``gone`` no longer has an SOA of its own."""
        want = {z: ("NOERROR", self.serial) for z in self._served_zones()}
        want.update({z: ("SERVFAIL", None) for z in self._servfail})

        def ok(z, got):  # knot may add to the serial when it signs
            if want[z][1] is None or got[0] != "NOERROR" or got[1] is None:
                return got == want[z]
            return 0 <= got[1] - want[z][1] < SERIAL_STEP

        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise AssertionError("knotd exited with status %s during %s\n%s"
                                     % (self.proc.returncode, what, self.report()))
            got = {z: _soa_serial(self.host, self.port, z, 0.2)
                   for z in list(want) + list(gone)}
            pending = {z: (want[z], got[z]) for z in want if not ok(z, got[z])}
            pending.update({z: ("no SOA", got[z]) for z in gone
                            if got[z][1] is not None or got[z][0] is None})
            if not pending:
                return
            if time.monotonic() > deadline:
                raise AssertionError(
                    "knotd on %s did not serve the zones within %.0fs of %s "
                    "(zone: (wanted, got)) %r\n%s"
                    % (self.address, timeout, what, pending, self.report()))
            time.sleep(0.02)


# knot.conf, everything under the work directory; no "user:" (knotd keeps
# the user it is started as, root or not) and no /run/knot. Zone files are
# only read: never written back (zonefile-sync -1), no journal of changes.
CONF_TEMPLATE = """\
# written by tests/integration/dnsserver.py
server:
    rundir: "{dir}"
    pidfile: "{dir}/knotd.pid"
    listen: {listen}
    udp-workers: 1
    tcp-workers: 1
    background-workers: 1

control:
    listen: "{sock}"

log:
  - target: stderr
    any: info

database:
    storage: "{db}"
    journal-db-max-size: 64M
    kasp-db-max-size: 16M
    timer-db-max-size: 16M
    catalog-db-max-size: 16M

template:
  - id: default
    storage: "{zones}"
    zonefile-sync: -1
    zonefile-load: whole
    journal-content: none

zone:
"""
