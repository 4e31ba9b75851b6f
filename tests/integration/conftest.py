"""Fixtures for moat's integration tests.

Run with ``/usr/bin/python3 -m pytest tests/integration`` (or ``make test``).
Binaries come from ``$MOAT_BUILD_DIR`` (default ``<repo>/build-test``).
Everything talks to loopback only.

Fixtures
--------
moatd_bin, moatctl_bin
    Paths of the built binaries; the test is skipped (with the reason) when
    they are missing.
moat
    A started ``moatd -f`` with a fresh spool, on free loopback ports. The
    configuration is the default one below unless the test carries
    ``@pytest.mark.moat_conf(conf)`` where ``conf`` is a dict (see
    ``render_conf``) or a text template (see ``Moat``); use
    ``@pytest.mark.moat_conf(conf, start=False)`` to get it unstarted.
moat_factory
    ``moat_factory(conf=None, start=True)`` makes further instances (each in
    its own directory); all are stopped at teardown.
swaks
    ``swaks(port, *args, check=False, timeout=30)`` runs /usr/bin/swaks
    against 127.0.0.1:port and returns the CompletedProcess (text).
postfix_peer
    ``postfix_peer(mode="hold")`` sets up and starts a private Postfix on a
    free loopback port with bench/postfix-peer.sh (root only; skipped
    otherwise); ``mode`` is ``hold`` or ``relay:PORT``.
free_port
    ``free_port()`` returns a currently unused TCP port on 127.0.0.1.
"""

import os
import pwd
import re
import shutil
import signal
import socket
import string
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BUILD_DIR = Path(os.environ.get("MOAT_BUILD_DIR", REPO / "build-test")).resolve()
POSTFIX_PEER = REPO / "bench" / "postfix-peer.sh"
SWAKS = "/usr/bin/swaks"

START_TIMEOUT = 10.0  # seconds for every listener to be up
STOP_TIMEOUT = 10.0  # seconds after SIGTERM before SIGKILL

# "Mon Nov 23 10:01:02 2026 Info: " (day of month space-padded)
LOG_PREFIX = re.compile(
    r"^[A-Z][a-z]{2} [A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d \d{4} [A-Za-z]+: ")


# --------------------------------------------------------------------------
# ports

def free_port(host="127.0.0.1"):
    """A TCP port on host that nothing listens on right now."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _listening_ports():
    """Ports in LISTEN state on loopback or wildcard, from /proc/net/tcp*."""
    ports = set()
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(name, encoding="ascii") as f:
                next(f)
                for line in f:
                    fields = line.split()
                    if len(fields) > 3 and fields[3] == "0A":
                        ports.add(int(fields[1].rsplit(":", 1)[1], 16))
        except OSError:
            return None
    return ports


def port_listening(port, host="127.0.0.1"):
    """True when something listens on port. Uses /proc so that no SMTP
    session (and no mail log line) is created; falls back to connect()."""
    ports = _listening_ports()
    if ports is not None:
        return port in ports
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


# --------------------------------------------------------------------------
# configuration

class Bare(str):
    """A configuration value written without quotes (an enum word)."""


# String values written bare even without Bare(): moat's enum words.
ENUM_WORDS = {"public", "private", "accept", "reject", "relay", "gateway"}

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _quote(s):
    return '"' + str(s).replace("\\", "\\\\").replace('"', '\\"') + '"'


def _value(v, indent):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, Bare) or (isinstance(v, str) and v in ENUM_WORDS):
        return str(v)
    if isinstance(v, str):
        return _quote(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_value(x, indent) for x in v) + "]"
    if isinstance(v, dict):
        return "{\n" + _block(v, indent + 1) + "  " * indent + "}"
    raise TypeError("cannot write %r in moat.conf" % (v,))


def _key(k):
    if isinstance(k, tuple):  # ("listener", "IncomingMail") -> listener "IncomingMail"
        return " ".join([k[0]] + [_quote(x) for x in k[1:]])
    k = str(k)
    return k if (_IDENT.match(k) or " " in k) else _quote(k)


def _block(d, indent):
    out = []
    pad = "  " * indent
    for k, v in d.items():
        if k == "__raw__":
            out.append("".join(pad + line + "\n" for line in str(v).splitlines()))
            continue
        if v is None:
            continue
        if isinstance(v, dict):
            out.append("%s%s %s\n" % (pad, _key(k), _value(v, indent)))
        else:
            out.append("%s%s = %s;\n" % (pad, _key(k), _value(v, indent)))
    return "".join(out)


def render_conf(conf):
    """moat.conf text from a dict.

    Keys map to ``key = value;``; a tuple key ``("listener", "In")`` is a
    named block ``listener "In" { ... }``; keys that are not identifiers are
    quoted (``"example.com" = accept;``); dict values are blocks; lists are
    ``[a, b]``; str values are quoted except Bare(...) and ENUM_WORDS; bools
    are true/false; a ``"__raw__"`` key adds its text verbatim; None values
    are dropped.
    """
    return _block(conf, 0)


def default_conf():
    """The configuration used when a test does not give one."""
    return {
        "hostname": "gw.test.example",
        ("listener", "IncomingMail"): {"type": "public", "address": "127.0.0.1:{port}"},
        ("listener", "OutgoingMail"): {
            "type": "private", "address": "127.0.0.1:{port}",
            "relay_senders": ["127.0.0.0/8", "::1"]},
        ("rat", "IncomingMail"): {"example.com": "accept", "ALL": "reject"},
    }


# --------------------------------------------------------------------------
# moatd

def _tail(path, n=40):
    try:
        with open(path, "rb") as f:
            lines = f.read().decode("utf-8", "replace").splitlines()
    except OSError as e:
        return "(%s)" % e
    return "\n".join(lines[-n:])


class Moat:
    """One moatd instance in its own directory.

    ``conf`` is a dict (``render_conf``; a listener address containing
    ``{port}`` gets a free port, ``hostname``/``user``/``spool_dir``/
    ``pidfile``/``control_socket``/``mail_log`` are filled in when absent) or
    a text template (``string.Template``): ``${port_NAME}`` becomes a free
    port recorded as ``ports["NAME"]``; ``${dir}``, ``${spool}``,
    ``${log}``, ``${pidfile}``, ``${socket}``, ``${user}`` are the paths and
    user name of this instance.
    """

    def __init__(self, moatd_bin, moatctl_bin, conf=None, base=None):
        self.moatd_bin = str(moatd_bin)
        self.moatctl_bin = str(moatctl_bin)
        self.dir = Path(tempfile.mkdtemp(prefix="moat-", dir=base or "/tmp"))
        # Short paths: the control socket path must fit in sun_path.
        self.conf_path = self.dir / "moat.conf"
        self.spool = self.dir / "spool"
        self.log_path = self.dir / "mail.current"
        self.pidfile = self.dir / "moatd.pid"
        self.socket = self.dir / "moatd.sock"
        self.stdout_path = self.dir / "moatd.stdout"
        self.stderr_path = self.dir / "moatd.stderr"
        self.user = pwd.getpwuid(os.getuid()).pw_name
        self.ports = {}
        self.proc = None
        self.returncode = None      # of the last stop()/kill9()/crash
        self.check_exit = True      # teardown fails if moatd did not exit 0
        self.unexpected_exit = None
        self.configure(conf if conf is not None else default_conf())

    # -- configuration --

    def configure(self, conf):
        """Write moat.conf (allocating ports only for new listeners, so a
        rewrite keeps the ports of listeners that exist already)."""
        if isinstance(conf, str):
            text = self._from_template(conf)
        else:
            text = self._from_dict(conf)
        tmp = self.conf_path.with_suffix(".tmp")
        tmp.write_text(text)
        os.replace(tmp, self.conf_path)
        self.conf_text = text
        return text

    def _port_for(self, name):
        if name not in self.ports:
            taken = set(self.ports.values())
            port = free_port()
            while port in taken:
                port = free_port()
            self.ports[name] = port
        return self.ports[name]

    def _from_template(self, template):
        t = string.Template(template)
        names = set()
        for m in t.pattern.finditer(template):
            name = m.group("named") or m.group("braced")
            if name and name.startswith("port_"):
                names.add(name[5:])
        values = {"port_" + n: self._port_for(n) for n in sorted(names)}
        values.update(dir=self.dir, spool=self.spool, log=self.log_path,
                      pidfile=self.pidfile, socket=self.socket, user=self.user)
        return t.substitute(values)

    def _from_dict(self, conf):
        full = {
            "hostname": "gw.test.example",
            "user": self.user,
            "spool_dir": str(self.spool),
            "pidfile": str(self.pidfile),
            "control_socket": str(self.socket),
            "mail_log": {"path": str(self.log_path)},
        }
        # Tests of the receiving side keep what they accept: delivery is
        # suspended unless the test configures delivery itself. DNS never
        # leaves loopback: without a test resolver every zone, the root
        # included, is stubbed to a port where nothing answers.
        if "delivery" not in conf:
            full["delivery"] = {"suspended": True}
        if "resolver" not in conf:
            full["resolver"] = {"resolv_conf": "",
                                "stub_zones": {".": ["127.0.0.1@9"]},
                                "timeout": 5}
        for k, v in conf.items():
            if isinstance(k, tuple) and k[0] == "listener" and isinstance(v, dict):
                v = dict(v)
                addr = v.get("address", "127.0.0.1:{port}")
                if "{port}" in addr:
                    v["address"] = addr.replace("{port}", str(self._port_for(k[1])))
                else:
                    self.ports[k[1]] = int(addr.rsplit(":", 1)[1])
            full[k] = v
        return render_conf(full)

    # -- process --

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout=START_TIMEOUT):
        """Start moatd -f and wait until every listener port listens."""
        assert not self.running(), "moatd already running"
        self.unexpected_exit = None
        with open(self.stdout_path, "ab") as out, open(self.stderr_path, "ab") as err:
            # A UBSan report must fail the test (the exit status is checked
            # at teardown), not scroll by in stderr.
            env = dict(os.environ)
            env.setdefault("UBSAN_OPTIONS", "halt_on_error=1:print_stacktrace=1")
            self.proc = subprocess.Popen(
                [self.moatd_bin, "-f", "-c", str(self.conf_path)],
                stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                cwd=self.dir, start_new_session=True, env=env)
        deadline = time.monotonic() + timeout
        pending = dict(self.ports)
        while True:
            rc = self.proc.poll()
            if rc is not None:
                self.returncode = rc
                raise AssertionError(
                    "moatd exited with status %s during start-up\n"
                    "--- stderr:\n%s\n--- mail log:\n%s"
                    % (rc, _tail(self.stderr_path), _tail(self.log_path)))
            pending = {n: p for n, p in pending.items() if not port_listening(p)}
            if not pending:
                return self
            if time.monotonic() > deadline:
                self.stop()
                raise AssertionError(
                    "moatd did not listen on %s within %.0fs\n--- stderr:\n%s"
                    % (pending, timeout, _tail(self.stderr_path)))
            time.sleep(0.05)

    def stop(self, timeout=STOP_TIMEOUT):
        """SIGTERM, wait up to timeout, then SIGKILL. Returns the exit code
        (negative: killed by that signal); None if it was not running."""
        if self.proc is None:
            return None
        if self.proc.poll() is not None:
            self._note_crash()
            self.proc = None
            return self.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.returncode = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.returncode = self.proc.wait(timeout=10)
            self.unexpected_exit = ("moatd did not exit within %.0fs of SIGTERM"
                                    % timeout)
        else:
            if self.returncode != 0:
                self.unexpected_exit = ("moatd exited with status %s after SIGTERM"
                                        % self.returncode)
        self.proc = None
        return self.returncode

    def _note_crash(self):
        rc = self.proc.poll() if self.proc is not None else None
        if rc is not None:
            self.returncode = rc
            self.unexpected_exit = "moatd exited by itself with status %s" % rc

    def kill9(self):
        """SIGKILL (a crash); the exit is expected, not a test failure."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.kill()
        self.returncode = self.proc.wait(timeout=10)
        self.proc = None
        return self.returncode

    def restart(self, timeout=START_TIMEOUT):
        """stop() then start() with the current moat.conf and ports."""
        self.stop()
        return self.start(timeout=timeout)

    def reload(self):
        """SIGHUP (the configuration is re-read from moat.conf)."""
        assert self.running(), "moatd is not running"
        self.proc.send_signal(signal.SIGHUP)

    # -- observation --

    def log_lines(self, strip=True):
        """Lines of the mail log; strip=True removes the date/level prefix."""
        try:
            with open(self.log_path, "rb") as f:
                lines = f.read().decode("utf-8", "replace").splitlines()
        except FileNotFoundError:
            return []
        if strip:
            lines = [LOG_PREFIX.sub("", ln, count=1) for ln in lines]
        return lines

    def log_mark(self):
        """Current number of mail log lines, for wait_log(since=...)."""
        return len(self.log_lines(strip=False))

    def wait_log(self, regex, timeout=5.0, since=0, strip=True):
        """Poll the mail log until a line (from line index ``since``) matches
        ``regex`` (re.search, prefix stripped unless strip=False); return the
        match. Fails the test with the log tail on timeout."""
        rx = re.compile(regex)
        deadline = time.monotonic() + timeout
        while True:
            for line in self.log_lines(strip=strip)[since:]:
                m = rx.search(line)
                if m:
                    return m
            if time.monotonic() > deadline:
                break
            if self.proc is not None and self.proc.poll() is not None:
                deadline = 0  # moatd is gone: one last look, then report
            time.sleep(0.05)
        raise AssertionError(
            "no mail log line matching %r within %.1fs\n--- mail log tail:\n%s"
            "\n--- stderr tail:\n%s"
            % (regex, timeout, "\n".join(self.log_lines(strip=False)[-30:]),
               _tail(self.stderr_path, 20)))

    def ctl(self, *args, timeout=30, check=False):
        """Run moatctl -c CONF ARGS...; returns the CompletedProcess (text)."""
        return subprocess.run(
            [self.moatctl_bin, "-c", str(self.conf_path), *map(str, args)],
            stdin=subprocess.DEVNULL, capture_output=True, text=True,
            timeout=timeout, check=check)

    def spool_files(self):
        """{"queue": [...], "incoming": [...]}: file names, sorted."""
        out = {}
        for sub in ("queue", "incoming"):
            d = self.spool / sub
            try:
                out[sub] = sorted(p.name for p in d.iterdir() if not p.name.startswith("."))
            except FileNotFoundError:
                out[sub] = []
        return out

    def stderr_text(self):
        try:
            return self.stderr_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def report(self, n=40):
        return ("--- moatd (%s) stderr tail:\n%s\n--- mail log tail (%s):\n%s"
                % (self.dir, _tail(self.stderr_path, n), self.log_path,
                   _tail(self.log_path, n)))

    def cleanup(self, keep=False):
        if self.proc is not None:
            if self.proc.poll() is None:
                self.stop()
            else:
                self._note_crash()
                self.proc = None
        if not keep:
            shutil.rmtree(self.dir, ignore_errors=True)


# --------------------------------------------------------------------------
# fixtures

@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "moat_conf(conf, start=True): configuration for the moat fixture")
    config.addinivalue_line(
        "markers", "postfix: needs Postfix (postfix, smtp-source, smtp-sink) and root")


def _test_failed(request):
    for when in ("setup", "call"):
        rep = getattr(request.node, "rep_" + when, None)
        if rep is not None and rep.failed:
            return True
    return False


def _binary(name):
    path = BUILD_DIR / name
    if not (path.is_file() and os.access(path, os.X_OK)):
        pytest.skip("%s not built: %s is missing (set MOAT_BUILD_DIR)" % (name, path))
    return path


@pytest.fixture(scope="session")
def moatd_bin():
    return _binary("moatd")


@pytest.fixture(scope="session")
def moatctl_bin():
    return _binary("moatctl")


@pytest.fixture
def moat_factory(request, moatd_bin, moatctl_bin):
    made = []

    def make(conf=None, start=True):
        m = Moat(moatd_bin, moatctl_bin, conf)
        made.append(m)
        if start:
            m.start()
        return m

    yield make

    failed = _test_failed(request)
    problems = []
    for m in made:
        m.cleanup(keep=True)
        if m.check_exit and m.unexpected_exit:
            problems.append("%s: %s" % (m.dir, m.unexpected_exit))
    for m in made:
        if failed or problems:
            print("\n" + m.report())
            print("(kept %s)" % m.dir)
        else:
            m.cleanup(keep=False)
    if problems and not failed:
        pytest.fail("moatd did not exit cleanly:\n" + "\n".join(problems), pytrace=False)


@pytest.fixture(scope="module")
def module_moat_factory(moatd_bin, moatctl_bin):
    """moat_factory for module-scoped fixtures (one moatd shared by a
    module's tests, e.g. a matrix of deliveries made once); each is
    stopped when the module is done, and kept if it did not exit 0."""
    made = []

    def make(conf):
        m = Moat(moatd_bin, moatctl_bin, conf)
        made.append(m)
        m.start()
        return m

    yield make
    for m in made:
        m.cleanup(keep=True)
        if m.check_exit and m.unexpected_exit:
            print("\n" + m.report())
            print("(kept %s)" % m.dir)
        else:
            m.cleanup(keep=False)


@pytest.fixture
def moat(request, moat_factory):
    marker = request.node.get_closest_marker("moat_conf")
    conf, start = None, True
    if marker is not None:
        if marker.args:
            conf = marker.args[0]
        conf = marker.kwargs.get("conf", conf)
        start = marker.kwargs.get("start", True)
    return moat_factory(conf, start=start)


@pytest.fixture
def swaks():
    if not os.access(SWAKS, os.X_OK):
        pytest.skip("swaks not installed")

    def run(port, *args, check=False, timeout=30, host="127.0.0.1"):
        argv = [SWAKS, "--server", host, "--port", str(port)]
        args = [str(a) for a in args]
        if not any(a in ("--helo", "--ehlo", "--lhlo", "-h") for a in args):
            argv += ["--helo", "client.test.example"]
        return subprocess.run(argv + args, stdin=subprocess.DEVNULL,
                              capture_output=True, text=True,
                              timeout=timeout, check=check)

    return run


@pytest.fixture(name="free_port")
def free_port_fixture():
    return free_port


# --------------------------------------------------------------------------
# Postfix peer

def postfix_available():
    return (shutil.which("postfix") is not None
            and shutil.which("smtp-source") is not None
            and os.geteuid() == 0)


class PostfixPeer:
    """A private Postfix on 127.0.0.1:port driven by bench/postfix-peer.sh."""

    def __init__(self, mode="hold", port=None):
        self.dir = Path(tempfile.mkdtemp(prefix="moat-pf-", dir="/tmp"))
        os.chmod(self.dir, 0o755)  # Postfix's daemons (user postfix) go here
        self.port = port or free_port()
        self.mode = mode
        self.peer("setup", str(self.port), mode)

    def peer(self, cmd, *args, timeout=60):
        r = subprocess.run(["bash", str(POSTFIX_PEER), cmd, str(self.dir), *args],
                           stdin=subprocess.DEVNULL, capture_output=True,
                           text=True, timeout=timeout)
        if r.returncode != 0:
            raise AssertionError("postfix-peer.sh %s failed (%s):\n%s%s"
                                 % (cmd, r.returncode, r.stdout, r.stderr))
        return r.stdout

    def start(self):
        self.peer("start")
        return self

    def stop(self):
        self.peer("stop")

    def count(self):
        return int(self.peer("count").strip())

    def flush_queue(self):
        self.peer("flush-queue")

    def wait_count(self, n, timeout=10.0):
        deadline = time.monotonic() + timeout
        while True:
            c = self.count()
            if c == n or time.monotonic() > deadline:
                return c
            time.sleep(0.1)

    def maillog(self):
        try:
            return (self.dir / "maillog").read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def cleanup(self, keep=False):
        try:
            self.stop()
        finally:
            if not keep:
                shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def postfix_peer(request):
    if not postfix_available():
        pytest.skip("needs root and Postfix (postfix, smtp-source)")
    made = []

    def make(mode="hold", port=None, start=True):
        p = PostfixPeer(mode, port)
        made.append(p)
        return p.start() if start else p

    yield make

    failed = _test_failed(request)
    for p in made:
        if failed:
            print("\n--- Postfix peer %s maillog tail:\n%s"
                  % (p.dir, "\n".join(p.maillog().splitlines()[-30:])))
        p.cleanup(keep=failed)
