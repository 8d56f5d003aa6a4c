#!/usr/bin/env bash
# The README's two commands as a new user runs them: a fresh clone of the committed HEAD into an empty
# temporary directory (nothing beside it), a fresh HOME and no migctl settings.
# Part of CI (.ci/run). Guarded against recursion: the inner run sees MIGCTL_NEWCOMER_RUN=1 and this script
# then does nothing, so the README's test command inside the clone never starts another newcomer run.
# pip reuses the outer pip cache (PIP_CACHE_DIR) so the fresh venv does not download everything again.
set -u
if [ "${MIGCTL_NEWCOMER_RUN:-}" = 1 ]; then
  echo "newcomer.sh: inside a newcomer run; not recursing"; exit 0
fi
repo=$(cd "${1:-$(dirname "$0")/..}" && git rev-parse --show-toplevel) || exit 2
cache=${PIP_CACHE_DIR:-$(python3 -m pip cache dir 2>/dev/null || echo "$HOME/.cache/pip")}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
git clone -q "$repo" "$work/project" || exit 2
cd "$work/project" || exit 2
export MIGCTL_NEWCOMER_RUN=1 PIP_CACHE_DIR="$cache" PIP_DISABLE_PIP_VERSION_CHECK=1
export HOME="$work/home" XDG_STATE_HOME="$work/home/state" XDG_CONFIG_HOME="$work/home/config" XDG_CACHE_HOME="$work/home/cache"
mkdir -p "$HOME"
unset MIGCTL_SIM MIGCTL_SIM_STATE MIGCTL_STATE_DIR MIGCTL_BACKEND VIRTUAL_ENV PYTHONPATH
# the first two fenced bash blocks of the README are the two commands
python3 - <<'PY' >"$work/cmds"
import re
text = open("README.md", encoding="utf-8").read()
blocks = re.findall(r"```(?:bash|sh|console)?\n(.*?)```", text, re.S)
for b in blocks[:2]:
    print(b.strip().replace("\n", " ; ").replace("\0", ""))
PY
n=0; fail=0; t0=$(date +%s)
while IFS= read -r cmd; do
  n=$((n+1)); echo "== command $n: $cmd"
  start=$(date +%s)
  bash -c "$cmd" >"$work/out.$n" 2>&1 </dev/null; rc=$?
  echo "   exit $rc after $(( $(date +%s) - start )) s; last lines:"; tail -n 8 "$work/out.$n" | sed 's/^/   | /'
  [ $rc = 0 ] || fail=$((fail+1))
done <"$work/cmds"
echo "newcomer run: $(( $(date +%s) - t0 )) s in all"
[ "$n" = 2 ] || { echo "README has $n fenced command blocks first; expected the two commands"; exit 1; }
[ $fail = 0 ] && echo "both README commands passed in a clone of this repository alone" || { echo "$fail of 2 README commands failed"; exit 1; }
