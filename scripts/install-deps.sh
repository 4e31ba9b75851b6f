#!/bin/sh
# Install the Debian packages moat needs to build, run and test.
# Idempotent: quiet and quick when everything is already present.
# Usage: scripts/install-deps.sh [run|test|bench]   (default: run)
set -eu

mode=${1:-run}

# Build and run. ca-certificates: the CAs outbound TLS trusts by default;
# dns-root-data: the DNSSEC root trust anchor (/usr/share/dns/root.key)
# for DANE.
pkgs="build-essential pkg-config meson ninja-build libevent-dev libssl-dev
      libunbound-dev libpcre2-dev libsqlite3-dev libjansson-dev
      libcrypt-dev ca-certificates dns-root-data"
# Tests: unit framework, Python test runner, real SMTP peers, a DNS server
# (knotd) and its tools (kdig, knotc) for the loopback DNS fixture, nmap
# (its smtp-open-relay script checks that no listener is an open relay);
# swaks needs Net::SSLeay for --tls; testssl.sh scans the STARTTLS set-up.
test_pkgs="libcmocka-dev python3 python3-pytest swaks libnet-ssleay-perl
           postfix nmap knot knot-dnsutils testssl.sh"
# Benchmarks: Postfix's smtp-source/smtp-sink come with postfix.
bench_pkgs="postfix procps"

case "$mode" in
  run)   want="$pkgs" ;;
  test)  want="$pkgs $test_pkgs" ;;
  bench) want="$pkgs $test_pkgs $bench_pkgs" ;;
  *) echo "usage: $0 [run|test|bench]" >&2; exit 2 ;;
esac

missing=""
for p in $want; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" \
    || missing="$missing $p"
done
[ -z "$missing" ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
  echo "install-deps: missing packages:$missing" >&2
  echo "install-deps: run as root (or install them with apt-get)" >&2
  exit 1
fi

echo "install-deps: installing:$missing"
export DEBIAN_FRONTEND=noninteractive
# Postfix must not ask questions nor configure a system mailer for us:
# tests and benchmarks run their own private instances.
echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
# Do not let package installation start services (there may be no init).
policy=/usr/sbin/policy-rc.d
made_policy=0
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' > "$policy"; chmod 755 "$policy"; made_policy=1
fi
apt-get update -qq
apt-get install -y -qq --no-install-recommends $missing >/dev/null
[ "$made_policy" -eq 1 ] && rm -f "$policy"
echo "install-deps: done"
