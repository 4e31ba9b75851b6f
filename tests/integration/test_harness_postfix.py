"""Self-test of the Postfix peer harness (bench/postfix-peer.sh, the
postfix_peer fixture): proves it before moatd runs, and keeps proving it."""

import smtplib
import subprocess

import pytest

from conftest import postfix_available

pytestmark = [
    pytest.mark.postfix,
    pytest.mark.skipif(not postfix_available(),
                       reason="needs root and Postfix (postfix, smtp-source)"),
]


def _send(port, n):
    with smtplib.SMTP("127.0.0.1", port, local_hostname="client.test.example",
                      timeout=30) as s:
        for i in range(n):
            msg = ("From: sender@test.example\r\nTo: rcpt@test.example\r\n"
                   "Subject: harness %d\r\n\r\nbody %d\r\n" % (i, i))
            s.sendmail("sender@test.example", ["rcpt@test.example"], msg)


def test_hold_mode_counts_accepted_messages(postfix_peer):
    pf = postfix_peer("hold")
    assert pf.count() == 0
    _send(pf.port, 3)
    assert pf.count() == 3
    assert pf.maillog().count("Client host triggers HOLD action") == 3
    pf.flush_queue()
    assert pf.count() == 0
    pf.stop()
    # Stopped means the port is free again.
    with pytest.raises(OSError):
        _send(pf.port, 1)


def test_relay_mode_delivers_to_sink(postfix_peer, free_port):
    sink_port = free_port()
    sink = subprocess.Popen(
        ["smtp-sink", "-u", "nobody", "127.0.0.1:%d" % sink_port, "64"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE)
    try:
        pf = postfix_peer("relay:%d" % sink_port)
        _send(pf.port, 3)
        assert pf.wait_count(0, timeout=20) == 0, pf.maillog()[-2000:]
        log = pf.maillog()
        assert log.count("status=sent") == 3, log[-2000:]
        assert "relay=127.0.0.1[127.0.0.1]:%d" % sink_port in log
    finally:
        sink.terminate()
        sink.wait(timeout=10)
