"""Next-hop SMTP servers for testing moat's delivery engine.

Two servers live here, both on loopback only:

FaultSink
    A scriptable SMTP server written in pure Python (stdlib only). It records
    every transaction byte-exact and lets a test inject faults: scripted
    replies per command, disconnects at any step, delays, odd greetings, EHLO
    rejection. It behaves like a strict real server otherwise (command
    sequence, parameters against the advertised extensions, RFC 2920
    pipelining, RFC 5321 line rules).

PostfixSink
    A wrapper around Postfix's ``smtp-sink`` (``/usr/sbin/smtp-sink``), a
    fast C server for benchmarks and for a second opinion on protocol
    behaviour. See its docstring for what smtp-sink can and cannot do.

Quick start::

    from smtpsink import FaultSink

    with FaultSink() as sink:                       # 127.0.0.1, free port
        sink.on("RCPT", "452 4.2.1 Mailbox busy", match="busy@")
        ... point moat at sink.port, queue mail ...
        assert sink.wait_for(1, timeout=10)         # one accepted message
        msg = sink.messages[0]
        assert msg.rcpts == ["ok@example.test"]
        assert sink.connections[0].quit             # client said QUIT

Events a rule can match (``FaultSink.on(event, ...)``):

    CONNECT     the greeting (subject: peer address)
    EHLO HELO MAIL RCPT DATA RSET NOOP QUIT VRFY ... any command verb
                (subject: the whole command line, e.g. "RCPT TO:<a@b>")
    *           any command line (not the pseudo events)
    DATA_BODY   each line of message content after 354 (subject: the line
                as received, before dot-unstuffing)
    DATA_END    the reply after the final "." (subject: the message data)

Actions (``action=``):

    None        default: send the reply; a 421 reply also closes the
                connection (RFC 5321 4.2.2 says the server closes after 421)
    "reply"     send the reply and keep the connection even if it is a 421
    "close"     close the connection without sending anything
    "reply_close"  send the reply, then close

A reply is a str ("250 2.0.0 Ok"); several lines are separated by "\\n" and
get their "-" continuation marks automatically ("250 a\\n250 b" is sent as
"250-a", "250 b"). A bytes reply is sent verbatim (no CRLF added), for
deliberately malformed replies.

All waiting is bounded: delays are interrupted by ``stop()``, every socket
read has a timeout, ``wait_for`` takes a timeout.
"""

import dataclasses
import os
import pwd
import re
import select
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import traceback
from email import message_from_bytes, policy

__all__ = [
    "FaultSink", "Rule", "Transaction", "Connection", "PostfixSink",
    "SinkMessage", "masked_greeting", "format_reply", "reply_code",
    "DEFAULT_CAPABILITIES",
]

DEFAULT_HOSTNAME = "sink.test"
DEFAULT_CAPABILITIES = ("PIPELINING", "SIZE 10485760", "8BITMIME",
                        "ENHANCEDSTATUSCODES")

# RFC 5321 4.5.3.1: command line 512 octets with CRLF, text line 1000.
# MAIL and RCPT get 500 more for parameters (RFC 1870, 3461, 4954 each
# allow some; 500 covers them together).
COMMAND_LINE_LIMIT = 512
PARAM_ALLOWANCE = 500
TEXT_LINE_LIMIT = 1000

# A command line longer than this is discarded and answered with 500.
COMMAND_BUFFER_LIMIT = 4096
# Message content without a CRLF for this long is consumed in fragments, so
# that one endless line cannot use unbounded memory.
DATA_FRAGMENT = 1 << 20
# Hard cap on what is stored of one message when no SIZE is advertised.
MAX_MESSAGE_SIZE = 64 << 20

# RFC 2920 3.1: these must be the last command in a pipelined group (HELO,
# AUTH, STARTTLS too: they change the session state the same way).
LAST_IN_GROUP = {"EHLO", "HELO", "DATA", "VRFY", "EXPN", "TURN", "QUIT",
                 "NOOP", "AUTH", "STARTTLS", "ETRN", "BDAT"}

# MAIL / RCPT parameter -> extension that must be advertised for it.
MAIL_PARAM_EXT = {"SIZE": "SIZE", "BODY": "8BITMIME", "SMTPUTF8": "SMTPUTF8",
                  "RET": "DSN", "ENVID": "DSN", "AUTH": "AUTH",
                  "REQUIRETLS": "REQUIRETLS"}
RCPT_PARAM_EXT = {"NOTIFY": "DSN", "ORCPT": "DSN"}
BODY_VALUE_EXT = {"7BIT": "8BITMIME", "8BITMIME": "8BITMIME",
                  "BINARYMIME": "BINARYMIME"}

_ADDR_ARG = re.compile(r"^(FROM|TO):\s*<([^<>]*)>(?:[ \t]+(.*))?$", re.I | re.S)
_REPLY_LINE = re.compile(r"^(\d{3})([ -]?)(.*)$", re.S)

ACTIONS = (None, "reply", "close", "reply_close")


# --------------------------------------------------------------------------
# small helpers

def format_reply(reply):
    """Wire form (bytes) of a reply.

    ``"250 ok"`` -> ``b"250 ok\\r\\n"``. Several lines (a list, or a str with
    "\\n") get "-" after the code on all but the last line, whatever
    separator they were written with. A line that does not start with three
    digits is sent unchanged. A bytes reply is returned as it is.
    """
    if isinstance(reply, (bytes, bytearray)):
        return bytes(reply)
    lines = list(reply) if isinstance(reply, (list, tuple)) else reply.split("\n")
    lines = [line.rstrip("\r") for line in lines]
    out = []
    for i, line in enumerate(lines):
        m = _REPLY_LINE.match(line)
        if m is None:
            out.append(line)
            continue
        code, _sep, text = m.groups()
        if i < len(lines) - 1:
            out.append(code + "-" + text)
        else:
            out.append(code + (" " + text if text else ""))
    return ("\r\n".join(out) + "\r\n").encode("utf-8", "surrogateescape")


def reply_code(reply):
    """The three-digit code of a reply's last line, or 0 if it has none."""
    if reply is None:
        return 0
    if isinstance(reply, (bytes, bytearray)):
        reply = bytes(reply).decode("latin-1")
    if isinstance(reply, (list, tuple)):
        reply = "\n".join(reply)
    last = reply.rstrip("\r\n").split("\n")[-1].lstrip("\r")
    return int(last[:3]) if last[:3].isdigit() else 0


def masked_greeting(greeting="220 %s ESMTP" % DEFAULT_HOSTNAME):
    """The greeting as a Cisco PIX/ASA "ESMTP inspection" shows it.

    The firewall keeps the "220 " and the length of the banner but replaces
    the text by asterisks; the characters "2" and "0" stay (banners seen in
    the wild look like ``220 ****2***0**0*****``). A client must accept any
    220 greeting whatever its text.
    """
    code, _, text = greeting.partition(" ")
    return code + " " + "".join(c if c in "20" else "*" for c in text)


def _split_params(text):
    """'SIZE=12 BODY=8BITMIME' -> {'SIZE': '12', 'BODY': '8BITMIME'}."""
    params = {}
    for word in (text or "").split():
        key, eq, value = word.partition("=")
        params[key.upper()] = value if eq else None
    return params


def _addr(host, port):
    return "[%s]:%d" % (host, port) if ":" in host else "%s:%d" % (host, port)


# --------------------------------------------------------------------------
# records

@dataclasses.dataclass
class Transaction:
    """One mail transaction that reached the final "." (accepted or not)."""
    conn_id: int
    seq: int                      # 1, 2, ... over the whole sink
    peer: tuple                   # (host, port) of the client
    helo: str                     # argument of the last HELO/EHLO (or None)
    esmtp: bool                   # True after EHLO, False after HELO
    mail_from: str                # reverse-path without <> ("" for <>)
    mail_params: dict             # {"SIZE": "123", "BODY": "8BITMIME"}
    rcpts: list                   # accepted recipients, in order
    rcpt_params: list             # one params dict per accepted recipient
    rejected_rcpts: list          # [(address, reply sent)]
    data: bytes                   # content after dot-unstuffing, CRLFs kept
    size: int                     # octets received (may exceed len(data) when oversize)
    reply: str                    # reply sent after "." (None: closed without reply)
    queue_id: str                 # id in the 250 reply
    bare_lf: bool                 # an LF not preceded by CR in the content
    bare_cr: bool                 # a CR not followed by LF in the content
    long_line: bool               # a line over 1000 octets with its CRLF
    max_line_length: int          # longest line, octets with CRLF
    eight_bit: bool               # an octet >= 0x80 in the content
    oversize: bool                # over the SIZE limit (answered 552)
    received_at: float            # time.time()

    @property
    def accepted(self):
        """The sink took responsibility (2xx after the final dot)."""
        return 200 <= reply_code(self.reply) < 300

    @property
    def message(self):
        """The data parsed as an email.message.EmailMessage."""
        return message_from_bytes(self.data, policy=policy.default)

    @property
    def text(self):
        return self.data.decode("utf-8", "replace")


@dataclasses.dataclass
class Connection:
    """One accepted TCP connection and what happened on it."""
    conn_id: int
    peer: tuple
    opened_at: float
    closed_at: float = None
    closed_by: str = None         # client | server | timeout | stop | error
    helo: str = None
    esmtp: bool = False
    commands: list = dataclasses.field(default_factory=list)     # lines received
    transcript: list = dataclasses.field(default_factory=list)   # [("C"|"S"|"D", text)]
    quit: bool = False            # QUIT was received
    pipelined: bool = False       # a command arrived before the previous reply went out
    violations: list = dataclasses.field(default_factory=list)   # protocol errors of the client
    transactions: int = 0         # completed DATA transactions

    @property
    def open(self):
        return self.closed_at is None

    @property
    def verbs(self):
        """Upper-case command verbs in order ("." marks the end of DATA)."""
        return [c.split(" ", 1)[0].upper() for c in self.commands]

    def snapshot(self):
        c = dataclasses.replace(self)
        c.commands = list(self.commands)
        c.transcript = list(self.transcript)
        c.violations = list(self.violations)
        return c


@dataclasses.dataclass
class Rule:
    """A scripted reaction to an event; see the module docstring.

    match: None (always), a str (case-insensitive substring of the subject),
    a compiled regex (search), or a callable(subject) -> bool.
    times: None (unlimited) or how many matches it applies to.
    """
    event: str
    reply: object = None          # str | list | bytes | None (= normal reply)
    match: object = None
    times: int = None
    delay: float = 0.0
    action: str = None
    hits: int = 0

    def __post_init__(self):
        self.event = self.event.upper()
        if self.action not in ACTIONS:
            raise ValueError("action must be one of %r" % (ACTIONS,))
        if self.times is not None and self.times < 0:
            raise ValueError("times must be >= 0")

    @property
    def spent(self):
        return self.times is not None and self.hits >= self.times

    def applies(self, event, subject_fn):
        if self.spent:
            return False
        if self.event != event and not (self.event == "*" and event not in
                                        ("CONNECT", "DATA_BODY", "DATA_END")):
            return False
        m = self.match
        if m is None:
            return True
        subject = subject_fn()
        if isinstance(m, str):
            return m.lower() in subject.lower()
        if isinstance(m, re.Pattern):
            return m.search(subject) is not None
        return bool(m(subject))


class _End(Exception):
    """Ends a session; the argument is Connection.closed_by."""


class _DataAcc:
    """Accumulates message content line by line (lines end with CRLF only)."""

    def __init__(self, limit):
        self.limit = limit
        self.data = bytearray()
        self.size = 0
        self.partial = 0            # octets of the current line seen so far
        self.oversize = False
        self.bare_lf = self.bare_cr = self.long_line = self.eight_bit = False
        self.max_line = 0

    def feed(self, frag, eol):
        """frag: octets of a line without its CRLF; eol: the CRLF followed."""
        raw_len = len(frag)
        if self.partial == 0 and frag[:1] == b".":
            frag = frag[1:]                      # dot-unstuffing (RFC 5321 4.5.2)
        if b"\n" in frag:
            self.bare_lf = True
        if b"\r" in frag:
            self.bare_cr = True
        if not frag.isascii():
            self.eight_bit = True
        self.partial += raw_len
        piece = frag + b"\r\n" if eol else frag
        self.size += len(piece)
        room = self.limit - len(self.data)
        if len(piece) > room:
            self.oversize = True
            piece = piece[:max(room, 0)]
        self.data += piece
        if eol:
            length = self.partial + 2
            self.max_line = max(self.max_line, length)
            if length > TEXT_LINE_LIMIT:
                self.long_line = True
            self.partial = 0


# --------------------------------------------------------------------------
# FaultSink

class FaultSink:
    """A scriptable, recording SMTP server in a background thread.

    FaultSink(host="127.0.0.1", port=0, *, hostname="sink.test",
              greeting=None, capabilities=DEFAULT_CAPABILITIES,
              ehlo_reject=None, rules=(), command_timeout=30.0,
              require_helo=True, strict_params=True, max_errors=20,
              max_connections=None, max_recipients=1000)

    It listens as soon as it is made (``port`` 0 picks a free one; ``host``
    may be "::1"). One thread per connection; a few hundred concurrent
    connections are fine. The settings below are plain attributes and may be
    changed at any time; a change applies from the next greeting or command.

    greeting        str (default "220 <hostname> ESMTP"); multi-line with
                    "\\n"; a 421 or other 4xx/5xx greeting closes after it,
                    a 554 greeting waits for QUIT answering 503 (RFC 5321 3.1)
    capabilities    EHLO keywords after the hostname line; "SIZE n" also
                    sets the size limit, PIPELINING enables pipelining
    ehlo_reject     None, or the reply to every EHLO (e.g. "502 5.5.1 Error:
                    command not implemented") so the client must use HELO
    command_timeout idle seconds before "421 4.4.2 ... timeout exceeded"
    require_helo    MAIL before HELO/EHLO gets 503
    strict_params   MAIL/RCPT parameters of extensions not advertised
                    (or any after HELO) get 555
    max_errors      client protocol errors before 421 and close
    max_connections None, or concurrent connections beyond which a new one
                    gets "421 4.7.0 ... too many connections"
    max_recipients  RCPTs per transaction before "452 4.5.3"
    rules           Rule objects (or dicts of Rule fields) to start with;
                    more with on() / close_on() at any time

    (``greeting`` is computed from ``hostname`` once, at construction.)

    Records (thread-safe; they stay readable after stop()):

    transactions    every Transaction that reached the final dot
    messages        the accepted ones (2xx after the dot); rcpts: theirs
    connections     Connection snapshots: commands (lines received, "."
                    marks the end of DATA), verbs, transcript, quit,
                    pipelined, violations (client protocol errors), closed_by
    connection(id), commands(id), connection_count, active_connections,
    peak_connections, internal_errors (sink bugs: should stay empty)
    wait_for(count, timeout, what), wait_until(predicate, timeout)
    """

    def __init__(self, host="127.0.0.1", port=0, *, hostname=DEFAULT_HOSTNAME,
                 greeting=None, capabilities=DEFAULT_CAPABILITIES,
                 ehlo_reject=None, rules=(), command_timeout=30.0,
                 require_helo=True, strict_params=True, max_errors=20,
                 max_connections=None, max_recipients=1000, backlog=512):
        self.hostname = hostname
        self.greeting = greeting if greeting is not None else "220 %s ESMTP" % hostname
        self.capabilities = list(capabilities)
        self.ehlo_reject = ehlo_reject
        self.command_timeout = command_timeout
        self.require_helo = require_helo
        self.strict_params = strict_params
        self.max_errors = max_errors
        self.max_connections = max_connections
        self.max_recipients = max_recipients

        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self._rules = []
        self.internal_errors = []       # tracebacks of sink bugs (should stay empty)
        for r in rules:
            self.add_rule(r)
        self._transactions = []
        self._connections = {}          # conn_id -> Connection
        self._sessions = {}             # conn_id -> _Session (open ones)
        self._next_conn = 1
        self._next_seq = 1
        self._peak = 0
        self._stopping = threading.Event()
        self._stopped = False

        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._lsock = socket.socket(family, socket.SOCK_STREAM)
        try:
            self._lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._lsock.bind((host, port))
            self._lsock.listen(backlog)
            self._lsock.setblocking(False)
        except OSError:
            self._lsock.close()
            raise
        self.host = host
        self.port = self._lsock.getsockname()[1]
        self._acceptor = threading.Thread(target=self._accept_loop, daemon=True,
                                          name="faultsink-accept-%d" % self.port)
        self._acceptor.start()

    # -- addresses ----------------------------------------------------------

    @property
    def address(self):
        """(host, port), for socket.create_connection / smtplib."""
        return (self.host, self.port)

    @property
    def hostport(self):
        """"127.0.0.1:PORT" or "[::1]:PORT"."""
        return _addr(self.host, self.port)

    # -- scripting ----------------------------------------------------------

    def on(self, event, reply=None, *, match=None, times=None, delay=0.0,
           action=None):
        """Add a rule: react to ``event`` with ``reply`` / ``action`` after
        ``delay`` seconds. Rules are tried in the order added; the first one
        that applies wins. Returns the Rule (see ``remove``).

        Examples::

            sink.on("RCPT", "452 4.2.1 Mailbox busy", match="busy@")
            sink.on("MAIL", "451 4.3.0 try later", times=1)
            sink.on("DATA_END", "550 5.7.1 rejected")
            sink.on("MAIL", action="close")              # drop after MAIL
            sink.on("DATA_END", delay=5)                 # slow 250 after "."
        """
        return self.add_rule(Rule(event, reply, match, times, delay, action))

    def close_on(self, event, *, match=None, times=None, delay=0.0):
        """Close the connection without a reply on ``event``.

        "CONNECT" closes before the greeting, "MAIL"/"RCPT"/"DATA" when the
        command arrives, "DATA_BODY" at the first content line (mid-DATA),
        "DATA_END" after the final dot (the message is recorded in
        ``transactions`` with reply None, not in ``messages``).
        """
        return self.on(event, match=match, times=times, delay=delay,
                       action="close")

    def close_after_greeting(self, times=None):
        """Send the normal greeting, then close."""
        return self.on("CONNECT", times=times, action="reply_close")

    def add_rule(self, rule):
        if isinstance(rule, dict):
            rule = Rule(**rule)
        with self._lock:
            self._rules.append(rule)
        return rule

    def remove(self, rule):
        with self._lock:
            if rule in self._rules:
                self._rules.remove(rule)

    def clear_rules(self):
        with self._lock:
            self._rules.clear()

    @property
    def rules(self):
        with self._lock:
            return list(self._rules)

    def _has_rules(self, event):
        with self._lock:
            return any(r.event == event and not r.spent for r in self._rules)

    def _take_rule(self, event, subject_fn):
        """The first applicable rule for event (its hit counted), or None."""
        cache = []

        def subject():
            if not cache:
                cache.append(subject_fn())
            return cache[0]

        with self._lock:
            for r in self._rules:
                if r.applies(event, subject):
                    r.hits += 1
                    return r
        return None

    # -- records ------------------------------------------------------------

    @property
    def transactions(self):
        """Every transaction that reached the final dot, accepted or not."""
        with self._lock:
            return list(self._transactions)

    @property
    def messages(self):
        """Accepted transactions (2xx after the final dot)."""
        with self._lock:
            return [t for t in self._transactions if t.accepted]

    @property
    def rcpts(self):
        """Recipients of accepted messages, in arrival order."""
        with self._lock:
            return [r for t in self._transactions if t.accepted for r in t.rcpts]

    @property
    def connections(self):
        """Snapshots of all connections, oldest first."""
        with self._lock:
            return [c.snapshot() for _, c in sorted(self._connections.items())]

    def connection(self, conn_id=None):
        """Snapshot of one connection (default: the latest)."""
        with self._lock:
            if conn_id is None:
                if not self._connections:
                    return None
                conn_id = max(self._connections)
            return self._connections[conn_id].snapshot()

    def commands(self, conn_id=None):
        """Command lines received on one connection (default: the latest)."""
        c = self.connection(conn_id)
        return c.commands if c else []

    @property
    def connection_count(self):
        with self._lock:
            return len(self._connections)

    @property
    def active_connections(self):
        with self._lock:
            return len(self._sessions)

    @property
    def peak_connections(self):
        """Most connections open at the same time."""
        with self._lock:
            return self._peak

    def clear_records(self):
        """Forget transactions and closed connections (rules stay)."""
        with self._lock:
            self._transactions.clear()
            for cid in [cid for cid, c in self._connections.items() if not c.open]:
                del self._connections[cid]
            self._peak = len(self._sessions)

    def _count(self, what):
        if what == "messages":
            return sum(1 for t in self._transactions if t.accepted)
        if what == "transactions":
            return len(self._transactions)
        if what == "rcpts":
            return sum(len(t.rcpts) for t in self._transactions if t.accepted)
        if what == "connections":
            return len(self._connections)
        if what == "closed":
            return sum(1 for c in self._connections.values() if not c.open)
        raise ValueError("what: messages, transactions, rcpts, connections or closed")

    def wait_for(self, count, timeout=10.0, what="messages"):
        """Wait until at least ``count`` of ``what`` were recorded.

        what: "messages" (accepted), "transactions" (reached the dot),
        "rcpts" (recipients of accepted messages), "connections" (opened),
        "closed" (connections closed). Returns True, or False on timeout.
        """
        return self.wait_until(lambda: self._count(what) >= count, timeout)

    def wait_until(self, predicate, timeout=10.0):
        """Wait until predicate() (called with the sink's lock held; it may
        use the accessors) is true. Re-checked on every event. Returns
        True, or False on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return True

    # -- life cycle ---------------------------------------------------------

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()

    def stop(self, timeout=5.0):
        """Stop listening, close every connection, end all threads (bounded
        by ``timeout``). Records stay readable."""
        if self._stopped:
            return
        self._stopped = True
        self._stopping.set()
        self._acceptor.join(timeout)
        try:
            self._lsock.close()
        except OSError:
            pass
        with self._lock:
            sessions = list(self._sessions.values())
        for s in sessions:
            s.abort()
        deadline = time.monotonic() + timeout
        for s in sessions:
            s.thread.join(max(0.0, deadline - time.monotonic()))
        with self._cond:
            self._cond.notify_all()

    def _accept_loop(self):
        poller = select.poll()
        poller.register(self._lsock.fileno(), select.POLLIN)
        while not self._stopping.is_set():
            if not poller.poll(100):
                continue
            try:
                sock, peer = self._lsock.accept()
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                if self._stopping.is_set():
                    break
                time.sleep(0.01)      # e.g. EMFILE: do not spin
                continue
            self._start_session(sock, peer)

    def _start_session(self, sock, peer):
        sock.setblocking(True)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self._cond:
            conn = Connection(self._next_conn, tuple(peer[:2]), time.time())
            self._next_conn += 1
            self._connections[conn.conn_id] = conn
            session = _Session(self, sock, conn)
            self._sessions[conn.conn_id] = session
            self._peak = max(self._peak, len(self._sessions))
            too_many = (self.max_connections is not None
                        and len(self._sessions) > self.max_connections)
            self._cond.notify_all()
        session.thread = threading.Thread(
            target=session.run, args=(too_many,), daemon=True,
            name="faultsink-%d-conn-%d" % (self.port, conn.conn_id))
        session.thread.start()

    # -- called by sessions --------------------------------------------
    def _record_transaction(self, **fields):
        with self._cond:
            t = Transaction(seq=self._next_seq, **fields)
            self._next_seq += 1
            self._transactions.append(t)
            self._cond.notify_all()
            return t

    def _session_done(self, conn_id):
        with self._cond:
            self._sessions.pop(conn_id, None)
            self._cond.notify_all()


class _Session:
    """One SMTP session, run in its own thread.

    Input is read into ``buf`` and consumed line by line; every reply is sent
    before the next command is looked at, so pipelined commands are answered
    in order (RFC 2920) and 354 never goes out before the replies to the
    MAIL/RCPT commands in front of DATA.
    """

    def __init__(self, sink, sock, conn):
        self.sink = sink
        self.sock = sock
        self.conn = conn
        self.thread = None
        self.buf = bytearray()
        self.eof = False
        self.helo = None
        self.esmtp = False
        self.caps = {}              # EHLO keyword -> argument string
        self.rejected = False       # 554 greeting: only QUIT is served
        self.errors = 0
        self.txn = None             # dict while a mail transaction is open
        self.txn_count = 0

    # -- plumbing -----------------------------------------------------------

    def abort(self):
        """Called by stop(): wake the thread from any socket wait."""
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _note(self, **changes):
        """Update the connection record under the sink lock; wake waiters."""
        with self.sink._cond:
            for k, v in changes.items():
                setattr(self.conn, k, v)
            self.sink._cond.notify_all()

    def _log(self, direction, text):
        with self.sink._cond:
            self.conn.transcript.append((direction, text))
            if direction == "C":
                self.conn.commands.append(text)
            self.sink._cond.notify_all()

    def _violation(self, text):
        with self.sink._cond:
            self.conn.violations.append(text)
            self.sink._cond.notify_all()

    def _gone(self):
        """closed_by for a connection that failed under us."""
        return "stop" if self.sink._stopping.is_set() else "client"

    def _recv(self):
        """Read more input into buf; raise _End on EOF, timeout or stop."""
        if self.eof or self.sink._stopping.is_set():
            raise _End(self._gone())
        self.sock.settimeout(self.sink.command_timeout)
        try:
            chunk = self.sock.recv(65536)
        except socket.timeout:
            self._timeout()
        except OSError:
            raise _End(self._gone())
        if not chunk:
            self.eof = True
            raise _End(self._gone())
        self.buf += chunk

    def _timeout(self):
        try:
            self._send("421 4.4.2 %s Error: timeout exceeded" % self.sink.hostname)
        except _End:
            pass
        raise _End("timeout")

    def _drain_ready(self):
        """Pull in the input that is already waiting, without blocking: shows
        whether the client sent more before it could have read our reply."""
        poller = select.poll()
        poller.register(self.sock.fileno(), select.POLLIN)
        try:
            while len(self.buf) < (1 << 20) and not self.eof and poller.poll(0):
                chunk = self.sock.recv(65536)
                if not chunk:
                    self.eof = True
                    break
                self.buf += chunk
        except OSError:
            pass

    def _send(self, reply):
        data = format_reply(reply)
        for line in data.decode("utf-8", "surrogateescape").split("\r\n")[:-1] or [""]:
            self._log("S", line)
        self.sock.settimeout(self.sink.command_timeout)
        try:
            self.sock.sendall(data)
        except OSError:
            raise _End(self._gone())

    def _pause(self, seconds):
        """Sleep, but end the session at once when the sink stops."""
        if seconds and self.sink._stopping.wait(seconds):
            raise _End("stop")

    def _answer(self, rule, default):
        """Carry out a rule (already taken; None for the normal reply) for a
        command whose normal reply is ``default``. Returns (code, reply)
        sent; raises _End when the connection is closed."""
        reply, action = default, None
        if rule is not None:
            self._pause(rule.delay)
            if rule.reply is not None:
                reply = rule.reply
            action = rule.action
        if action == "close":
            raise _End("server")
        self._send(reply)
        code = reply_code(reply)
        if action == "reply_close" or (action is None and code == 421):
            raise _End("server")
        return code, reply

    def _reply(self, event, subject, default, error=False):
        """Answer a command: the first matching rule for ``event`` wins,
        else ``default`` is sent; ``error`` marks a default that is a
        protocol error of the client (counted against max_errors).
        Returns (code, reply sent)."""
        rule = self.sink._take_rule(event, subject)
        if rule is None and error:
            return self._error(default)
        return self._answer(rule, default)

    def _error(self, reply):
        """Reply to a protocol error of the client; too many end the session."""
        self.errors += 1
        self._send(reply)
        if self.errors >= self.sink.max_errors:
            self._send("421 4.7.0 %s Error: too many errors" % self.sink.hostname)
            raise _End("server")
        return reply_code(reply), reply

    # -- session ------------------------------------------------------------

    def run(self, too_many=False):
        reason = "error"
        try:
            if too_many:
                self._send("421 4.7.0 %s Error: too many connections"
                           % self.sink.hostname)
                raise _End("server")
            self._serve()
        except _End as e:
            reason = e.args[0]
        except Exception as e:          # a bug here must show, not hang a test
            with self.sink._cond:
                self.sink.internal_errors.append(
                    "conn %d: %s" % (self.conn.conn_id, traceback.format_exc()))
            self._violation("sink internal error: %r" % (e,))
        finally:
            try:
                self.sock.close()
            except OSError:
                pass
            self._note(closed_at=time.time(), closed_by=reason)
            self.sink._session_done(self.conn.conn_id)

    def _serve(self):
        sink = self.sink
        peer = self.conn.peer[0]
        rule = sink._take_rule("CONNECT", lambda: peer)
        greeting, action = sink.greeting, None
        if rule is not None:
            self._pause(rule.delay)
            greeting = rule.reply if rule.reply is not None else greeting
            action = rule.action
        if action == "close":
            raise _End("server")
        self._drain_ready()
        if self.buf:
            self._violation("client sent data before the greeting")
        self._send(greeting)
        code = reply_code(greeting)
        if action == "reply_close":
            raise _End("server")
        if code == 554:
            self.rejected = True        # RFC 5321 3.1: wait for QUIT
        elif code != 220 and action != "reply":
            raise _End("server")        # 421 and friends: close

        while True:
            line = self._read_command()
            if line is None:
                self._error("500 5.5.2 Error: line too long")
            else:
                self._dispatch(line)

    def _read_command(self):
        """The next command line (str, no line end); None if it was too long
        (it is then discarded)."""
        discarding = False
        while True:
            i = self.buf.find(b"\n")
            if i >= 0:
                raw = bytes(self.buf[:i + 1])
                del self.buf[:i + 1]
                if discarding:
                    self._log("C", "<over %d octets, discarded>" % COMMAND_BUFFER_LIMIT)
                    self._violation("command line over %d octets"
                                    % COMMAND_BUFFER_LIMIT)
                    return None
                if raw.endswith(b"\r\n"):
                    body = raw[:-2]
                else:
                    body = raw[:-1]
                    self._violation("command line ended by bare LF: %r" % body[:80])
                text = body.decode("utf-8", "surrogateescape")
                self._log("C", text)
                verb = text.split(" ", 1)[0].upper()
                limit = COMMAND_LINE_LIMIT + (
                    PARAM_ALLOWANCE if verb in ("MAIL", "RCPT") else 0)
                if len(raw) > limit:
                    self._violation("%s command line of %d octets (limit %d)"
                                    % (verb, len(raw), limit))
                return text
            if len(self.buf) > COMMAND_BUFFER_LIMIT:
                self.buf.clear()
                discarding = True
            self._recv()

    def _check_pipelining(self, verb):
        """RFC 2920: was more input sent before this command's reply?"""
        self._drain_ready()
        if not self.buf:
            return
        self._note(pipelined=True)
        if "PIPELINING" not in self.caps:
            self._violation("pipelining without PIPELINING: input after %s "
                            "before its reply" % verb)
        elif verb in LAST_IN_GROUP:
            self._violation("pipelining: input after %s before its reply "
                            "(%s must end a group)" % (verb, verb))

    def _dispatch(self, line):
        verb, _, arg = line.partition(" ")
        verb = verb.upper()
        arg = arg.strip()
        self._check_pipelining(verb)
        subject = lambda: line

        if self.rejected and verb != "QUIT":
            self._reply(verb, subject, "503 5.5.1 Error: bad sequence of commands")
            return
        handler = getattr(self, "_cmd_" + verb, None) if verb.isalpha() else None
        if handler is None:
            self._reply(verb, subject, "500 5.5.2 Error: command not recognized",
                        error=True)
        else:
            handler(arg, subject)

    # -- commands -----------------------------------------------------------

    def _cmd_EHLO(self, arg, subject):
        sink = self.sink
        if not arg:
            self._reply("EHLO", subject, "501 5.5.4 Syntax: EHLO hostname", error=True)
            return
        if sink.ehlo_reject:
            default = sink.ehlo_reject
        else:
            default = ["250 " + sink.hostname] + ["250 " + c for c in sink.capabilities]
        code, reply = self._reply("EHLO", subject, default)
        if code == 250:
            self.helo, self.esmtp = arg, True
            self.caps = self._parse_caps(reply)
            self.txn = None
            self._note(helo=arg, esmtp=True)

    @staticmethod
    def _parse_caps(reply):
        """EHLO keywords (upper case) -> their arguments, from a reply."""
        if isinstance(reply, (bytes, bytearray)):
            reply = bytes(reply).decode("latin-1")
        lines = list(reply) if isinstance(reply, (list, tuple)) else reply.split("\n")
        caps = {}
        for line in lines[1:]:
            text = line.strip()[4:].strip()
            if text:
                kw, _, rest = text.partition(" ")
                caps[kw.upper()] = rest
        return caps

    def _cmd_HELO(self, arg, subject):
        if not arg:
            self._reply("HELO", subject, "501 5.5.4 Syntax: HELO hostname", error=True)
            return
        code, _ = self._reply("HELO", subject, "250 " + self.sink.hostname)
        if code == 250:
            self.helo, self.esmtp, self.caps = arg, False, {}
            self.txn = None
            self._note(helo=arg, esmtp=False)

    def _size_limit(self):
        size = self.caps.get("SIZE", "")
        if size.isdigit() and int(size) > 0:
            return min(int(size), MAX_MESSAGE_SIZE)
        return MAX_MESSAGE_SIZE

    def _check_params(self, params, table):
        """None if the parameters are acceptable, else the error reply."""
        strict = self.sink.strict_params
        for key, value in params.items():
            ext = table.get(key)
            if strict and (ext is None or ext not in self.caps):
                return "555 5.5.4 Unsupported option: %s" % key
            if key == "SIZE" and not (value or "").isdigit():
                return "501 5.5.4 Bad SIZE syntax"
            if key == "BODY":
                need = BODY_VALUE_EXT.get((value or "").upper())
                if need is None or (strict and need not in self.caps):
                    return "555 5.5.4 Unsupported option: BODY=%s" % value
        return None

    def _cmd_MAIL(self, arg, subject):
        sink = self.sink
        m = _ADDR_ARG.match(arg)
        params = {}
        if sink.require_helo and self.helo is None:
            default = "503 5.5.1 Error: send HELO/EHLO first"
        elif self.txn is not None:
            default = "503 5.5.1 Error: nested MAIL command"
        elif m is None or m.group(1).upper() != "FROM":
            default = "501 5.5.4 Syntax: MAIL FROM:<address>"
        else:
            params = _split_params(m.group(3))
            default = self._check_params(params, MAIL_PARAM_EXT)
            if default is None and "SIZE" in params \
                    and int(params["SIZE"]) > self._size_limit():
                default = "552 5.3.4 Message size exceeds fixed limit"
        ok = default is None
        code, _ = self._reply("MAIL", subject, "250 2.1.0 Ok" if ok else default,
                              error=not ok)
        if ok and 200 <= code < 300:
            self.txn = {"mail_from": m.group(2), "mail_params": params,
                        "rcpts": [], "rcpt_params": [], "rejected_rcpts": []}

    def _cmd_RCPT(self, arg, subject):
        m = _ADDR_ARG.match(arg)
        params = {}
        error = True
        if self.txn is None:
            default = "503 5.5.1 Error: need MAIL command"
        elif m is None or m.group(1).upper() != "TO":
            default = "501 5.5.4 Syntax: RCPT TO:<address>"
        elif not m.group(2).strip():
            default = "501 5.1.3 Bad recipient address syntax"
        else:
            params = _split_params(m.group(3))
            default = self._check_params(params, RCPT_PARAM_EXT)
            if default is None and len(self.txn["rcpts"]) >= self.sink.max_recipients:
                default, error = "452 4.5.3 Error: too many recipients", False
        ok = default is None
        code, reply = self._reply("RCPT", subject, "250 2.1.5 Ok" if ok else default,
                                  error=error and not ok)
        if self.txn is not None and m is not None:
            if ok and 200 <= code < 300:
                self.txn["rcpts"].append(m.group(2))
                self.txn["rcpt_params"].append(params)
            else:
                self.txn["rejected_rcpts"].append((m.group(2), reply))

    def _cmd_DATA(self, arg, subject):
        if arg:
            default = "501 5.5.4 Syntax: DATA"
        elif self.txn is None:
            default = "503 5.5.1 Error: need RCPT command"
        elif not self.txn["rcpts"]:
            default = "554 5.5.1 Error: no valid recipients"
        else:
            default = None
        ok = default is None
        code, _ = self._reply("DATA", subject,
                              "354 End data with <CR><LF>.<CR><LF>" if ok else default,
                              error=not ok)
        if ok and code == 354:
            self._finish_data(self._read_data())

    def _read_data(self):
        """Read message content up to CRLF.CRLF (nothing else ends it);
        returns the _DataAcc."""
        acc = _DataAcc(self._size_limit())
        body_rules = self.sink._has_rules("DATA_BODY")
        while True:
            buf = self.buf
            start = 0
            while True:
                i = buf.find(b"\r\n", start)
                if i < 0:
                    break
                line = bytes(buf[start:i])
                start = i + 2
                if acc.partial == 0 and line == b".":
                    del buf[:start]
                    self._log("D", "<%d octets>" % acc.size)
                    self._log("C", ".")
                    return acc
                if body_rules:
                    self._body_rule(line)
                acc.feed(line, True)
            del buf[:start]
            if len(buf) > DATA_FRAGMENT:
                # No CRLF for a long way: consume all but a trailing CR.
                keep = 1 if buf.endswith(b"\r") else 0
                acc.feed(bytes(buf[:len(buf) - keep]), False)
                del buf[:len(buf) - keep]
            self._recv()

    def _body_rule(self, line):
        """DATA_BODY rules: delay (slow reader), close, or reply-and-close."""
        rule = self.sink._take_rule("DATA_BODY", lambda: line.decode("latin-1"))
        if rule is None:
            return
        self._pause(rule.delay)
        if rule.action == "close":
            raise _End("server")
        if rule.reply is not None:
            self._send(rule.reply)      # an early reply ends the session
            if rule.action != "reply":
                raise _End("server")
        elif rule.action == "reply_close":
            raise _End("server")

    def _finish_data(self, acc):
        sink = self.sink
        self.txn_count += 1
        queue_id = "%04X%04X" % (self.conn.conn_id % 0x10000, self.txn_count % 0x10000)
        if acc.oversize:
            default = "552 5.3.4 Error: message file too big"
        else:
            default = "250 2.0.0 Ok: queued as %s" % queue_id
        data = bytes(acc.data)
        rule = sink._take_rule("DATA_END", lambda: data.decode("latin-1"))
        reply, action = default, None
        if rule is not None:
            self._pause(rule.delay)
            if rule.reply is not None:
                reply = rule.reply
            action = rule.action
        txn, self.txn = self.txn, None
        # Recorded before the reply goes out, as a real server commits the
        # message before it says 250.
        sink._record_transaction(
            conn_id=self.conn.conn_id, peer=self.conn.peer, helo=self.helo,
            esmtp=self.esmtp, mail_from=txn["mail_from"],
            mail_params=txn["mail_params"], rcpts=txn["rcpts"],
            rcpt_params=txn["rcpt_params"],
            rejected_rcpts=txn["rejected_rcpts"], data=data,
            size=acc.size, reply=None if action == "close" else reply,
            queue_id=queue_id, bare_lf=acc.bare_lf, bare_cr=acc.bare_cr,
            long_line=acc.long_line, max_line_length=acc.max_line,
            eight_bit=acc.eight_bit, oversize=acc.oversize,
            received_at=time.time())
        with sink._cond:
            self.conn.transactions += 1
        if action == "close":
            raise _End("server")
        self._send(reply)
        if action == "reply_close" or (action is None and reply_code(reply) == 421):
            raise _End("server")

    def _cmd_RSET(self, arg, subject):
        if self._reply("RSET", subject, "250 2.0.0 Ok")[0] == 250:
            self.txn = None

    def _cmd_NOOP(self, arg, subject):
        self._reply("NOOP", subject, "250 2.0.0 Ok")

    def _cmd_VRFY(self, arg, subject):
        self._reply("VRFY", subject, "252 2.0.0 Cannot VRFY user")

    def _cmd_HELP(self, arg, subject):
        self._reply("HELP", subject, "214 2.0.0 See RFC 5321")

    def _cmd_QUIT(self, arg, subject):
        self._note(quit=True)
        self._reply("QUIT", subject, "221 2.0.0 Bye")
        raise _End("client")

    def _cmd_STARTTLS(self, arg, subject):
        if "STARTTLS" in self.caps:
            self._reply("STARTTLS", subject, "454 4.7.0 TLS not available")
        else:
            self._reply("STARTTLS", subject, "502 5.5.1 Error: command not implemented",
                        error=True)

    def _not_implemented(self, verb, subject):
        self._reply(verb, subject, "502 5.5.1 Error: command not implemented",
                    error=True)

    def _cmd_AUTH(self, arg, subject):
        self._not_implemented("AUTH", subject)

    def _cmd_BDAT(self, arg, subject):
        self._not_implemented("BDAT", subject)

    def _cmd_EXPN(self, arg, subject):
        self._not_implemented("EXPN", subject)

    def _cmd_ETRN(self, arg, subject):
        self._not_implemented("ETRN", subject)


# --------------------------------------------------------------------------
# PostfixSink

SMTP_SINK = "/usr/sbin/smtp-sink"

# Separates messages in the -D dump file (smtp-sink -S understands \ddd).
_DUMP_MARK = b"\x01\x02smtp-sink-message\x03\n"
_DUMP_MARK_ARG = "\\001\\002smtp-sink-message\\003\\n"
_COUNTERS = re.compile(rb"sess=(\d+) quit=(\d+) mesg=(\d+)\r")


@dataclasses.dataclass
class SinkMessage:
    """One message from smtp-sink's dump file.

    smtp-sink writes the content with every CR removed and dot-unstuffed,
    so ``data`` has bare LF line ends: use FaultSink for byte-exact checks.
    """
    client_addr: str
    proto: str                    # SMTP | ESMTP | LMTP
    helo: str                     # None when the client sent no HELO/EHLO
    mail_args: str                # "<a@b> SIZE=123" (after "FROM:")
    rcpt_args: list               # ["<x@y>", ...] (after "TO:")
    data: bytes                   # message, LF line ends

    @property
    def mail_from(self):
        m = re.match(r"\s*<([^<>]*)>", self.mail_args)
        return m.group(1) if m else self.mail_args.split(" ")[0]

    @property
    def rcpts(self):
        out = []
        for a in self.rcpt_args:
            m = re.match(r"\s*<([^<>]*)>", a)
            out.append(m.group(1) if m else a.split(" ")[0])
        return out

    @property
    def message(self):
        return message_from_bytes(self.data, policy=policy.default)


def smtp_sink_available():
    return os.access(SMTP_SINK, os.X_OK)


def _listen_inodes(port):
    """Socket inodes listening on TCP port (from /proc/net/tcp{,6})."""
    inodes = set()
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(name, encoding="ascii") as f:
                next(f)
                for line in f:
                    fields = line.split()
                    if (len(fields) > 9 and fields[3] == "0A"
                            and int(fields[1].rsplit(":", 1)[1], 16) == port):
                        inodes.add(fields[9])
        except OSError:
            pass
    return inodes


def _pid_sockets(pid):
    found = set()
    try:
        for fd in os.listdir("/proc/%d/fd" % pid):
            try:
                link = os.readlink("/proc/%d/fd/%s" % (pid, fd))
            except OSError:
                continue
            if link.startswith("socket:["):
                found.add(link[8:-1])
    except OSError:
        pass
    return found


class PostfixSink:
    """Postfix's smtp-sink on a loopback port, with counters and a dump.

    PostfixSink(host="127.0.0.1", port=0, *, dump=True, hostname="sink.test",
                hard_reject=(), soft_reject=(), disconnect=(), reply_421=(),
                hard_reply=None, soft_reply=None, data_delay=None,
                command_delays=None, abort_after_data=None, pix_greeting=False,
                esmtp=True, pipelining=True, eightbitmime=True,
                enhanced_status=True, max_concurrency=256, backlog=256,
                timeout=None, extra_args=(), start=True)

    Options map to smtp-sink flags (Postfix 3.7, ``man smtp-sink``):

        hard_reject=("RCPT",)   -f: answer those commands "500 5.3.0 Error:
                                command failed" (or hard_reply, -B)
        soft_reject=("MAIL",)   -r: "450 4.3.0 Error: command failed" (or
                                soft_reply, -b)
        disconnect=("DATA",)    -q: close without reply on those commands
        reply_421=(".",)        -Q: send 421 and close
        data_delay=N            -w: wait N s (integer) before the 354
        command_delays={"RCPT": 2}  -W cmd:N: wait before replying
        abort_after_data=N      -A: N s after 354 send 550 and close
        pix_greeting=True       -P: greeting "220 ********" (implies no ESMTP)
        esmtp=False             -e: EHLO is answered "500 5.5.1 Error:
                                unknown command" (HELO fallback)
        pipelining=False        -p; eightbitmime=False -8;
        enhanced_status=False   -E; max_concurrency -m; timeout -t

    Command names for the reject lists: CONNECT, HELO, EHLO, MAIL, RCPT,
    DATA, "." (the final dot), RSET, NOOP, VRFY, QUIT. -f and -r make
    smtp-sink stop announcing PIPELINING. The rules apply to every
    occurrence (no "only this recipient"): use FaultSink for finer faults.

    Counting. ``-c`` makes smtp-sink print "sess=N quit=N mesg=N\\r" to
    stdout whenever a session ends, a QUIT is answered or a "." is received,
    flushed each time. Stdout goes to a file here (a pipe nobody reads
    would block smtp-sink after ~64 KiB, i.e. ~2,000 messages), and
    ``counters()`` reads the last complete record from the file's last
    256 bytes: constant cost, so it is the way to count a 20,000-message
    benchmark. Measured here (Postfix 3.7.11, smtp-source -s 20 -m 20000):
    -c alone ~5 s, -c with -D ~10 s: use ``dump=False`` for benchmarks.

    Dump. ``-D file`` appends each message to one file when its "." arrives,
    before the reply is sent, so the dump (and the mesg counter) is complete
    by the time the client sees the 250. Each record starts with a marker
    (-S) and smtp-sink's headers X-Client-Addr, X-Client-Proto, X-Helo-Args,
    X-Mail-Args, X-Rcpt-Args (one per accepted RCPT) and a three-line
    Received:, then the content with CRs removed, dot-unstuffed, and one
    extra LF. ``messages()`` parses it. Note that mesg and the dump count
    every message whose "." arrived, even when "." itself is rejected (-f .)
    or dropped (-q .). Running as root needs -u (the user, "nobody" here,
    must be able to write the dump directory: it is chowned to it).
    """

    def __init__(self, host="127.0.0.1", port=0, *, dump=True,
                 hostname=DEFAULT_HOSTNAME, hard_reject=(), soft_reject=(),
                 disconnect=(), reply_421=(), hard_reply=None, soft_reply=None,
                 data_delay=None, command_delays=None, abort_after_data=None,
                 pix_greeting=False, esmtp=True, pipelining=True,
                 eightbitmime=True, enhanced_status=True, max_concurrency=256,
                 backlog=256, timeout=None, user="nobody", extra_args=(),
                 start=True):
        if not smtp_sink_available():
            raise RuntimeError("%s not installed (Debian package postfix)" % SMTP_SINK)
        self.host = host
        self.port = port
        self.dump = dump
        self.proc = None
        self.dir = tempfile.mkdtemp(prefix="smtp-sink-")
        self.dump_path = os.path.join(self.dir, "dump")
        self.counter_path = os.path.join(self.dir, "counters")
        self.stderr_path = os.path.join(self.dir, "stderr")
        self._run_as = None
        if os.geteuid() == 0:
            self._run_as = user
            pw = pwd.getpwnam(user)
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)

        args = ["-c", "-h", hostname, "-m", str(max_concurrency)]
        if self._run_as:
            args += ["-u", self._run_as]
        if dump:
            args += ["-D", self.dump_path, "-S", _DUMP_MARK_ARG]

        def cmds(names):
            return ",".join(names) if not isinstance(names, str) else names

        if hard_reject:
            args += ["-f", cmds(hard_reject)]
        if soft_reject:
            args += ["-r", cmds(soft_reject)]
        if disconnect:
            args += ["-q", cmds(disconnect)]
        if reply_421:
            args += ["-Q", cmds(reply_421)]
        if hard_reply:
            args += ["-B", hard_reply]
        if soft_reply:
            args += ["-b", soft_reply]
        if data_delay:
            args += ["-w", str(int(data_delay))]
        for cmd, delay in (command_delays or {}).items():
            args += ["-W", "%s:%d" % (cmd, int(delay))]
        if abort_after_data is not None:
            args += ["-A", str(int(abort_after_data))]
        if pix_greeting:
            args.append("-P")
        if not esmtp:
            args.append("-e")
        if not pipelining:
            args.append("-p")
        if not eightbitmime:
            args.append("-8")
        if not enhanced_status:
            args.append("-E")
        if timeout:
            args += ["-t", str(int(timeout))]
        self._args = args + list(extra_args)
        self._backlog = backlog
        if start:
            self.start()

    @property
    def address(self):
        return (self.host, self.port)

    @property
    def hostport(self):
        return _addr(self.host, self.port)

    def start(self, timeout=10.0):
        """Start smtp-sink and wait until it listens (retries a port taken
        meanwhile when port was 0)."""
        want = self.port
        for _attempt in range(5):
            if want == 0:
                family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
                with socket.socket(family, socket.SOCK_STREAM) as s:
                    s.bind((self.host, 0))
                    self.port = s.getsockname()[1]
            listen = ("[%s]:%d" if ":" in self.host else "%s:%d") % (self.host, self.port)
            cmd = [SMTP_SINK] + self._args + [listen, str(self._backlog)]
            with open(self.counter_path, "wb") as out, \
                    open(self.stderr_path, "ab") as err:
                self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL,
                                             stdout=out, stderr=err)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    break
                if _listen_inodes(self.port) & _pid_sockets(self.proc.pid):
                    return self
                time.sleep(0.01)
            if self.proc.poll() is None:
                self.stop()
                raise RuntimeError("smtp-sink did not listen on %s within %ss: %s"
                                   % (listen, timeout, self.stderr()))
            self.proc = None
            if want != 0 or "in use" not in self.stderr():
                break
        raise RuntimeError("smtp-sink failed: %s %s" % (" ".join(cmd), self.stderr()))

    def stderr(self):
        try:
            with open(self.stderr_path, encoding="utf-8", errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def counters(self):
        """{"sess": sessions ended, "quit": QUITs, "mesg": messages}."""
        try:
            with open(self.counter_path, "rb") as f:
                f.seek(0, os.SEEK_END)
                size = f.tell()
                f.seek(max(0, size - 256))
                tail = f.read()
        except OSError:
            tail = b""
        found = _COUNTERS.findall(tail)
        if not found:
            return {"sess": 0, "quit": 0, "mesg": 0}
        sess, quit_, mesg = (int(x) for x in found[-1])
        return {"sess": sess, "quit": quit_, "mesg": mesg}

    def count(self):
        """Messages received (their final "." arrived)."""
        return self.counters()["mesg"]

    def wait_for(self, count, timeout=10.0, what="mesg"):
        """Wait until counters()[what] >= count (what: mesg, sess, quit).
        Polls every 10 ms; returns True, or False on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            if self.counters()[what] >= count:
                return True
            if time.monotonic() >= deadline or (self.proc is not None
                                                and self.proc.poll() is not None):
                return self.counters()[what] >= count
            time.sleep(0.01)

    def messages(self):
        """Messages parsed from the dump file (needs dump=True)."""
        if not self.dump:
            raise RuntimeError("PostfixSink(dump=False) keeps no messages")
        try:
            with open(self.dump_path, "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            return []
        out = []
        for rec in raw.split(_DUMP_MARK)[1:]:
            head, body = rec, b""
            fields = {"X-Client-Addr": "", "X-Client-Proto": "", "X-Helo-Args": None,
                      "X-Mail-Args": ""}
            rcpts = []
            lines = rec.split(b"\n")
            i = 0
            while i < len(lines):
                line = lines[i].decode("utf-8", "surrogateescape")
                i += 1
                name, _, value = line.partition(": ")
                if name == "Received":
                    i += 2                        # "\tby ..." and "\t<date>"
                    break
                if name == "X-Rcpt-Args":
                    rcpts.append(value)
                elif name in fields:
                    fields[name] = value
            body = b"\n".join(lines[i:])
            if body.endswith(b"\n"):
                body = body[:-1]                  # the LF of the final "."
            out.append(SinkMessage(fields["X-Client-Addr"], fields["X-Client-Proto"],
                                   fields["X-Helo-Args"], fields["X-Mail-Args"],
                                   rcpts, body))
        return out

    def stop(self, timeout=5.0):
        """Stop smtp-sink (files stay for reading)."""
        p, self.proc = self.proc, None
        if p is None:
            return
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout)

    def cleanup(self):
        """Stop and remove the work directory."""
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.cleanup()
