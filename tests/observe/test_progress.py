"""Progress on long work: the planner reports its status; apply prints every step; pictures of changes."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

from tests.observe.conftest import Env

from migctl.planner import load_request, plan
from migctl.planner.progress import SolveProgress

REPO = Path(__file__).resolve().parents[2]

CONFIG = """version: v1
mig-configs:
  a:
    - devices: all
      mig-enabled: true
      mig-devices: {"3g.40gb": 1, "1g.10gb": 2}
  b:
    - devices: all
      mig-enabled: true
      mig-devices: {"3g.40gb": 1, "2g.20gb": 1}
"""


def test_planner_reports_best_bound_and_phase() -> None:
    req = load_request(REPO / "examples" / "workloads.yaml")
    prog = SolveProgress(time_limit_s=req.options.time_limit_s)
    req.options.progress = prog
    result = plan(req)
    assert prog.phase.startswith("CP-SAT")
    assert prog.best is not None and prog.bound is not None
    assert prog.best >= result.objective and prog.bound <= result.objective
    assert prog.elapsed() > 0 and "planning [" in prog.line() and "/ 10s limit" in prog.line()


def test_apply_prints_every_step_and_dry_run_draws_before_after(h100x2: Env) -> None:
    cfg = h100x2.tmp / "cfg.yaml"
    cfg.write_text(CONFIG, encoding="utf-8")
    r = h100x2.migctl("apply", "-f", str(cfg), "-c", "a")
    assert r.returncode == 0, r.stderr
    steps = [ln for ln in r.stderr.splitlines() if ln.startswith("[")]
    n = int(steps[0].split("/")[1].split("]")[0])
    assert n < 8 * 2 and [s.split("]")[0] for s in steps] == [f"[{k}/{n}" for k in range(1, n + 1)]
    before = h100x2.migctl("gpus", "--json").stdout
    svg = h100x2.tmp / "change.svg"
    r = h100x2.migctl("apply", "-f", str(cfg), "-c", "b", "--dry-run", "--svg", str(svg))
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "before: GPU 0  H100-80GB" in out and "after: GPU 0  H100-80GB" in out
    assert out.count("-1g.10gb") == 4 and out.count("+2g.20gb") == 2 and "kept" in out
    assert "\x1b[" not in out
    assert json.loads(h100x2.migctl("gpus", "--json").stdout) == json.loads(before)  # nothing changed
    texts = [t.text for t in ET.parse(svg).getroot().iter("{http://www.w3.org/2000/svg}text")]
    assert "+2g.20gb" in texts and "-1g.10gb" in texts


def test_plan_pictures_and_svg(h100x2: Env) -> None:
    svg = h100x2.tmp / "plan.svg"
    r = h100x2.migctl("plan", str(REPO / "examples" / "workloads.yaml"), "--svg", str(svg))
    assert r.returncode == 0, r.stderr
    assert " mem  [" in r.stdout and "llm-serving" in r.stdout and "fine-tune" in r.stdout
    ET.parse(svg)
