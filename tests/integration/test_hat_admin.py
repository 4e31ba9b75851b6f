"""moatctl hat list|detail|export|import against a running moatd.

The export is configuration text that reproduces the table; import splices
a (possibly edited) export into the configuration file, validates the
whole, keeps a backup and commits, so the running daemon uses it at once.
"""

import re

import pytest

from smtp_client import RawSMTP

CONF = """\
hostname = "gw.test.example";
user = "${user}";
spool_dir = "${spool}";
pidfile = "${pidfile}";
control_socket = "${socket}";
mail_log { path = "${log}"; }
delivery { suspended = true; }
resolver { resolv_conf = ""; stub_zones { "." = ["127.0.0.1@9"]; } timeout = 2; }
listener "In" { type = public; address = "127.0.0.1:${port_In}"; }
listener "Out" { type = private; address = "127.0.0.1:${port_Out}";
                 relay_senders = ["127.0.0.1"]; }
rat "In" { "example.com" = accept; }
hat "In" {
    # Partners first.
    sender_group "PARTNERS" {
        policy = "TRUSTED";
        senders = [ "127.0.0.5", ".partner.example" ];
        comment = "our partners";
    }
}
"""


@pytest.mark.moat_conf(CONF)
def test_hat_list_shows_groups_in_order(moat):
    r = moat.ctl("hat", "list", "In", check=True)
    rows = [ln.split()[:4] for ln in r.stdout.splitlines()[2:]]
    assert rows == [
        ["1", "PARTNERS", "TRUSTED", "ACCEPT"],
        ["2", "ALLOWED_LIST", "TRUSTED", "ACCEPT"],
        ["3", "BLOCKED_LIST", "BLOCKED", "REJECT"],
        ["4", "SUSPECTLIST", "THROTTLED", "ACCEPT"],
        ["5", "UNKNOWNLIST", "ACCEPTED", "ACCEPT"],
        ["-", "ALL", "ACCEPTED", "ACCEPT"],
    ]
    assert "our partners" in r.stdout
    every = moat.ctl("hat", "list", check=True).stdout
    assert "Listener In (public)" in every and "Listener Out (private)" in every
    assert re.search(r"^1\s+RELAYLIST\s+RELAYED\s+RELAY\s+1", every, re.M)
    bad = moat.ctl("hat", "list", "Nope")
    assert bad.returncode == 1
    assert 'no listener named "Nope"' in bad.stderr


@pytest.mark.moat_conf(CONF)
def test_hat_detail_resolves_parameters(moat):
    out = moat.ctl("hat", "detail", "In", check=True).stdout
    assert "Sender group PARTNERS (policy TRUSTED)" in out
    assert "    .partner.example" in out
    # THROTTLED's own values; ACCEPTED's from the listener defaults.
    throttled = out.split("Mail flow policy THROTTLED")[1].split("Mail flow")[0]
    assert "max_recipients_per_hour = 20;" in throttled
    accepted = out.split("Mail flow policy ACCEPTED")[1].split("Mail flow")[0]
    assert "max_connections_per_ip = 10;" in accepted


@pytest.mark.moat_conf(CONF)
def test_export_import_round_trip_and_edit(moat, tmp_path):
    before = moat.ctl("hat", "list", "In", check=True).stdout
    exported = moat.ctl("hat", "export", "In", check=True).stdout
    assert exported.count('sender_group "') == 5
    f = tmp_path / "in.hat"
    f.write_text(exported)
    # Unchanged: the same table.
    r = moat.ctl("hat", "import", "In", str(f), check=True)
    assert "Changes committed" in r.stdout
    assert moat.ctl("hat", "list", "In", check=True).stdout == before
    conf = moat.conf_path.read_text()
    assert conf.count('hat "In"') == 1
    assert (moat.conf_path.parent / "moat.conf.bak").exists()

    # Edited: 127.0.0.2 is now blocked, and the running daemon knows.
    f.write_text(exported.replace(
        'sender_group "BLOCKED_LIST" {\n        policy = "BLOCKED";\n'
        '        senders = [];',
        'sender_group "BLOCKED_LIST" {\n        policy = "BLOCKED";\n'
        '        senders = [ "127.0.0.2" ];'))
    moat.ctl("hat", "import", "In", str(f), check=True)
    with RawSMTP(moat.ports["In"], source="127.0.0.2") as c:
        assert c.reply().line == "554 5.7.1 gw.test.example Access denied"
    moat.wait_log(r"^ICID \d+ REJECT SG BLOCKED_LIST match 127\.0\.0\.2 ")
    with RawSMTP(moat.ports["In"], source="127.0.0.3") as c:
        assert c.reply().code == 220

    # A listener without a hat block gets one appended.
    out_hat = tmp_path / "out.hat"
    out_hat.write_text(moat.ctl("hat", "export", "Out", check=True).stdout
                       .replace('"RELAYLIST" {', '"RELAYLIST" {\n'
                                '        comment = "imported";'))
    moat.ctl("hat", "import", "Out", str(out_hat), check=True)
    assert moat.conf_path.read_text().count('hat "Out"') == 1
    assert "imported" in moat.ctl("hat", "list", "Out", check=True).stdout


@pytest.mark.moat_conf(CONF)
def test_import_refuses_bad_files_and_changes_nothing(moat, tmp_path):
    conf_before = moat.conf_path.read_text()
    cases = [
        ('hat "In" { sender_group "X" { policy = "NOPE"; } }\n',
         'no mail_flow_policy "NOPE" on listener "In"'),
        ('hat "Out" { }\n', 'exactly one block: hat "In"'),
        ('hat "In" { }\nhostname = "x.example";\n', "exactly one block"),
        ('hat "In" { sender_group "X" {\n', "unterminated block"),
    ]
    for text, want in cases:
        f = tmp_path / "bad.hat"
        f.write_text(text)
        r = moat.ctl("hat", "import", "In", str(f))
        assert r.returncode != 0, text
        assert want in r.stderr, (text, r.stderr)
        assert moat.conf_path.read_text() == conf_before
    r = moat.ctl("hat", "import", "In")
    assert r.returncode == 2 and "usage: moatctl hat import LISTENER FILE" in r.stderr
    assert re.search(r"hat import +LISTENER FILE", moat.ctl("--help").stdout)
    assert moat.ctl("hat", "import", "--help").returncode == 0
