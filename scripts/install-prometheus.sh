#!/usr/bin/env bash
# Install the Prometheus server and promtool used by tests/observe/ (Debian 12: prometheus 2.42), and tmux
# for the `migctl top` terminal test. Needs root and apt. Idempotent: does nothing when prometheus,
# promtool and tmux are present. The package's systemd unit is not started (the tests run their own
# server on loopback, on an ephemeral port).
set -euo pipefail
have() { command -v "$1" >/dev/null 2>&1; }
if have prometheus && have promtool && have tmux; then
  echo "prometheus already installed: $(dpkg-query -W -f '${Version}' prometheus 2>/dev/null || echo unknown)"; exit 0
fi
if [ "$(id -u)" != 0 ]; then echo "install-prometheus.sh: needs root (apt-get install)" >&2; exit 1; fi
command -v apt-get >/dev/null || { echo "install-prometheus.sh: apt-get not found (Debian/Ubuntu only)" >&2; exit 1; }
export DEBIAN_FRONTEND=noninteractive
# keep package scripts from starting services in containers without systemd
if [ ! -e /usr/sbin/policy-rc.d ]; then printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; trap 'rm -f /usr/sbin/policy-rc.d' EXIT; fi
apt-get update -qq
apt-get install -y -qq --no-install-recommends prometheus tmux >/dev/null
echo "installed: prometheus $(dpkg-query -W -f '${Version}' prometheus)"
