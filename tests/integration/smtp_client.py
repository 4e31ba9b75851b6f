"""Raw SMTP clients for the integration tests, shared by the test files.

Client shows replies as lists of lines (CRLF removed) and carries whole
transactions; RawSMTP is byte-exact, returns Reply objects, and asserts
what it reads (well-formed lines, exact final lines, EOF, silence).

Both connect to 127.0.0.1 unless given ``host`` (e.g. "::1" for a listener
on "[::1]:PORT") and from an address the kernel picks unless given
``source``: the client socket is bound to that address (port 0) before
connect, so that a test can come from 127.0.0.2, 127.0.0.3, ... (every
127.0.0.0/8 address is on the loopback interface) and be seen by moatd's
Host Access Table as a different host. ``connect_from()`` is a raw socket
bound the same way, for tests that must see a connection closed with no
bytes at all.
"""

import re
import socket
import time

HOST = "127.0.0.1"


def connect_from(port, source=None, host=HOST, timeout=10.0):
    """A TCP connection to host:port whose local address is ``source``
    (bound, port 0, before connect); None: the kernel's choice. Returns
    the connected socket (timeout set)."""
    src = (source, 0) if source else None
    return socket.create_connection((host, port), timeout=timeout,
                                    source_address=src)


class Client:
    """One raw SMTP connection; replies are returned as lists of lines
    (CRLF removed)."""

    def __init__(self, port, timeout=10.0, source=None, host=HOST):
        self.sock = connect_from(port, source, host, timeout)
        self.buf = b""

    def _line(self):
        """One line including CRLF, b"" at EOF. A socket timeout raises
        socket.timeout and keeps what was read."""
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                rest, self.buf = self.buf, b""
                return rest
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line + b"\r\n"

    def reply(self):
        """Read one (possibly multi-line) reply; [] at EOF."""
        lines = []
        while True:
            raw = self._line()
            if not raw:
                return lines
            assert raw.endswith(b"\r\n"), "reply line without CRLF: %r" % raw
            line = raw[:-2].decode("ascii")
            lines.append(line)
            if len(line) < 4 or line[3] != "-":
                return lines

    def last(self):
        """The last line of the next reply ('' at EOF)."""
        r = self.reply()
        return r[-1] if r else ""

    def send(self, data):
        if isinstance(data, str):
            data = data.encode("ascii")
        self.sock.sendall(data)

    def cmd(self, line):
        """Send one command line, return the last line of its reply."""
        self.send(line + "\r\n")
        return self.last()

    def greet(self, helo="EHLO client.test.example"):
        banner = self.last()
        assert banner.startswith("220 "), banner
        r = self.cmd(helo)
        assert r.startswith("250 "), r
        return self

    def begin(self, sender="s@test.example", rcpts=("u@example.com",)):
        """MAIL, RCPT for each recipient and DATA, each answered as usual."""
        assert self.cmd("MAIL FROM:<%s>" % sender) == "250 2.1.0 Sender ok"
        for r in rcpts:
            assert self.cmd("RCPT TO:<%s>" % r) == "250 2.1.5 Recipient ok"
        assert self.cmd("DATA") == "354 Start mail input; end with <CRLF>.<CRLF>"

    def message(self, sender="s@test.example", rcpts=("u@example.com",),
                body="Subject: t\r\n\r\nhello\r\n"):
        """A whole transaction; returns the reply to the end of data."""
        self.begin(sender, rcpts)
        self.send(body + ".\r\n")
        return self.last()

    def at_eof(self, timeout=5.0):
        """True if the server closes the connection within timeout (any
        further bytes are read and dropped)."""
        self.sock.settimeout(timeout)
        deadline = time.monotonic() + timeout
        self.buf = b""
        try:
            while time.monotonic() < deadline:
                if not self.sock.recv(65536):
                    return True
        except (socket.timeout, TimeoutError):
            return False
        except ConnectionResetError:
            return True
        return False

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class Reply:
    """One complete SMTP reply: code and its lines (text after 'NNN-'/'NNN ')."""

    def __init__(self, lines):
        self.raw = lines
        self.code = int(lines[-1][:3])
        self.lines = [ln[4:] for ln in lines]

    @property
    def line(self):
        """The final line, e.g. '250 2.0.0 Ok'."""
        return self.raw[-1]

    def __repr__(self):
        return "Reply(%r)" % (self.raw,)


class RawSMTP:
    """A byte-exact SMTP client over a plain socket."""

    def __init__(self, port, timeout=5.0, source=None, host=HOST):
        self.sock = connect_from(port, source, host, timeout)
        self.timeout = timeout
        self.buf = b""

    def close(self):
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def send(self, data):
        self.sock.sendall(data)

    def _fill(self, deadline):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("no complete reply; buffered %r" % self.buf)
        self.sock.settimeout(remaining)
        try:
            chunk = self.sock.recv(65536)
        except socket.timeout:
            raise TimeoutError("no complete reply; buffered %r" % self.buf) from None
        if not chunk:
            raise ConnectionError("connection closed; buffered %r" % self.buf)
        self.buf += chunk

    def reply(self, timeout=None):
        """Read one complete reply (until a final 'NNN ' line)."""
        deadline = time.monotonic() + (timeout or self.timeout)
        lines = []
        while True:
            while b"\r\n" not in self.buf:
                self._fill(deadline)
            line, self.buf = self.buf.split(b"\r\n", 1)
            text = line.decode("utf-8")
            assert re.match(r"^\d{3}[- ]", text), "malformed reply line %r" % text
            lines.append(text)
            if text[3] == " ":
                return Reply(lines)

    def replies(self, n, timeout=None):
        return [self.reply(timeout) for _ in range(n)]

    def cmd(self, line, timeout=None):
        """Send one command line (CRLF added) and read its reply."""
        if isinstance(line, str):
            line = line.encode("utf-8")
        self.send(line + b"\r\n")
        return self.reply(timeout)

    def expect(self, line, final):
        """Send a command and assert the final reply line exactly."""
        r = self.cmd(line)
        assert r.line == final, "%r -> %r" % (line[:80], r.raw)
        return r

    def nothing_more(self, wait=0.3):
        """Assert that no further byte arrives within `wait` seconds."""
        assert self.buf == b"", "unexpected extra output %r" % self.buf
        self.sock.settimeout(wait)
        try:
            data = self.sock.recv(65536)
        except socket.timeout:
            return
        raise AssertionError("unexpected extra output %r" % data)

    def closed(self, timeout=3.0):
        """Assert the server closes the connection (after buffered bytes)."""
        assert self.buf == b"", "unexpected extra output %r" % self.buf
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(65536)
        except ConnectionResetError:
            return True
        assert data == b"", "expected EOF, got %r" % data
        return True
