#!/usr/bin/env bash
# The test command (README, second command; .ci/run calls exactly this).
# Installs migctl with its test dependencies into .venv, the Debian packages the Slurm and
# Prometheus integration tests need (when running as root with apt), then runs ruff and the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip >/dev/null
python -m pip install -q -e '.[test]'
if [ -x scripts/install-slurm.sh ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  bash scripts/install-slurm.sh
fi
if [ -x scripts/install-prometheus.sh ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  bash scripts/install-prometheus.sh
fi
ruff check src tests benchmarks
# bytecode for migctl's own modules (an editable install has none): the suite starts `migctl` hundreds of
# times, and where PYTHONDONTWRITEBYTECODE is set each start would compile them from source again
python -m compileall -q src >/dev/null
# each run gets its own state dir, so a developer's simulated nodes are never touched
export MIGCTL_STATE_DIR="$(mktemp -d)"
# two test processes (pytest-xdist): most tests wait on subprocesses, daemons and polls rather than compute, so
# two of them share the 2-core machine well; MIGCTL_TEST_PROCESSES=0 runs them in this process, one at a time
python -m pytest -p no:cacheprovider -n "${MIGCTL_TEST_PROCESSES:-2}" --durations=5 "$@"
