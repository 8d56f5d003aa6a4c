#!/usr/bin/env bash
# Regenerate the evidence in docs/observe/ on a simulated node (needs tmux):
#   bash docs/observe/regenerate.sh
# Writes gpus-map.txt, slices.svg, apply-dry-run.txt, apply-dry-run.svg and top.txt (a tmux capture-pane of
# `migctl top` while two jobs run).
set -euo pipefail
cd "$(dirname "$0")/../.."
out=docs/observe
tmp=$(mktemp -d)
trap 'touch "$tmp/stop"; tmux -S "$tmp/tmux" kill-server 2>/dev/null || true; wait || true; rm -rf "$tmp"' EXIT
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" MIGCTL_STATE_DIR="$tmp/state" MIGCTL_SIM_STATE="$tmp/sim.json"
export MIGCTL_SIM=2xH100-80GB,1xA100-40GB
m() { python -m migctl.cli.main "$@"; }
m mode enable >/dev/null
m apply -f $out/example-config.yaml -c mixed -q
spin='import os, sys, time
b = bytearray(b"x" * (int(sys.argv[2]) << 20))
while not os.path.exists(sys.argv[1]): pass'
m run -p 3g.40gb -g 0 -- python -c "$spin" "$tmp/stop" 700 &
m run -p 1g.10gb -g 1 -- python -c "$spin" "$tmp/stop" 200 &
sleep 4
m gpus --map --svg $out/slices.svg > $out/gpus-map.txt
m apply -f $out/example-config.yaml -c serving --dry-run --svg $out/apply-dry-run.svg > $out/apply-dry-run.txt
tmux -S "$tmp/tmux" new-session -d -s top -x 132 -y 48 "env -u COLUMNS -u LINES TERM=xterm-256color python -m migctl.cli.main top"
sleep 5
tmux -S "$tmp/tmux" capture-pane -p -t top | sed -e 's/[[:space:]]*$//' | sed -e '/./,$!d' | sed -e :a -e '/^\n*$/{$d;N;ba' -e '}' > $out/top.txt
echo "written: $out/{gpus-map.txt,slices.svg,apply-dry-run.txt,apply-dry-run.svg,top.txt}"
