#!/usr/bin/env bash
# Install the Slurm daemons and client used by tests/jobs/test_slurm.py (Debian 12: Slurm 22.05.8).
# Needs root and apt. Idempotent: does nothing when slurmctld, slurmd, scontrol and munged are present.
# The packages' systemd units are not started (the tests run their own daemons on loopback).
set -euo pipefail
have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ]; }
if have slurmctld && have slurmd && have scontrol && have munged; then
  echo "slurm already installed: slurmd $(dpkg-query -W -f '${Version}' slurmd 2>/dev/null || echo unknown)"; exit 0
fi
if [ "$(id -u)" != 0 ]; then echo "install-slurm.sh: needs root (apt-get install)" >&2; exit 1; fi
command -v apt-get >/dev/null || { echo "install-slurm.sh: apt-get not found (Debian/Ubuntu only)" >&2; exit 1; }
export DEBIAN_FRONTEND=noninteractive
# keep package scripts from starting services in containers without systemd
if [ ! -e /usr/sbin/policy-rc.d ]; then printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; trap 'rm -f /usr/sbin/policy-rc.d' EXIT; fi
apt-get update -qq
apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null
echo "installed: slurmd $(dpkg-query -W -f '${Version}' slurmd)"
