/*
 * conf_default.c - the built-in configuration, used when moatd is started
 * without a file (`make run`). It listens on loopback only; the shipped
 * etc/moat.conf.example says the same at greater length. Must always
 * load without errors (tests/unit/test_conf.c checks it).
 */
#include "conf/conf.h"

const char conf_default_text[] =
    "# moat built-in configuration (see docs/configuration.md).\n"
    "# hostname is left to the system's host name.\n"
    "\n"
    "user = \"moat\";\n"
    "pidfile = \"var/run/moatd.pid\";\n"
    "control_socket = \"var/run/moatd.sock\";\n"
    "spool_dir = \"var/spool\";\n"
    "\n"
    "mail_log {\n"
    "    path = \"var/log/mail_logs/mail.current\";\n"
    "    syslog = false;\n"
    "}\n"
    "\n"
    "# Mail from the Internet for the domains we accept.\n"
    "listener \"IncomingMail\" {\n"
    "    type = public;\n"
    "    address = \"127.0.0.1:2525\";\n"
    "}\n"
    "\n"
    "# Mail from our own hosts, relayed outwards.\n"
    "listener \"OutgoingMail\" {\n"
    "    type = private;\n"
    "    address = \"127.0.0.1:2587\";\n"
    "    relay_senders = [\"127.0.0.0/8\", \"::1\"];\n"
    "}\n"
    "\n"
    "# Recipients IncomingMail accepts; everything else is refused.\n"
    "rat \"IncomingMail\" {\n"
    "    \"example.com\" = accept;\n"
    "    \"ALL\" = reject;\n"
    "}\n"
    "\n"
    "# Where accepted mail for example.com goes: your mail server (here a\n"
    "# port on loopback; start any SMTP server there to receive it). Other\n"
    "# domains are delivered to their MX hosts.\n"
    "smtp_route \"example.com\" {\n"
    "    hosts = [\"127.0.0.1:2626\"];\n"
    "}\n";
