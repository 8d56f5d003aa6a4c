"""The repository is self-contained: tests, benchmarks and scripts read nothing outside it at run time."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures"


def test_fixtures_are_in_the_repository_with_their_source():
    assert len(list((FIXTURES / "seeds").glob("*.txt"))) == 4
    assert (FIXTURES / "compat" / "mig-parted" / "deployments_systemd_config-default.yaml").is_file()
    assert (FIXTURES / "parvagpu" / "LICENSE").is_file()
    assert (REPO / "benchmarks" / "planner" / "data" / "alibaba-gpu-v2023" / "openb_pod_list_default.csv").is_file()
    readme = (FIXTURES / "README.md").read_text()
    for folder in ("seeds/", "compat/mig-parted/", "parvagpu/"):
        assert folder in readme


def test_no_code_reads_outside_the_repository():
    """No path into a sibling ``shared`` folder (or an absolute /work path) in tests, benchmarks, scripts or src."""
    bad = re.compile(r"""(parents\[\d\]\s*/\s*["']shared["'])|(["']/work/)|((Path|open)\([^)]*\.\./shared)|"""
                     r"""(cd|cat|cp|ls|source)\s+[^#\n]*\.\./shared|MIGCTL_SHARED_DATA""")
    offenders = []
    for top in ("tests", "benchmarks", "scripts", "src"):
        for path in (REPO / top).rglob("*"):
            if path.suffix not in {".py", ".sh"} or path == Path(__file__).resolve():
                continue
            for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if bad.search(line):
                    offenders.append(f"{path.relative_to(REPO)}:{n}: {line.strip()}")
    assert offenders == []


def test_benchmark_help_prints_help_and_runs_nothing():
    """Every benchmark script answers --help with its usage, and an unknown argument with one error line and
    exit 2, without running (before, `variants.py --help` started its 17-minute run, which rewrites its results)."""
    scripts = sorted(p for p in (REPO / "benchmarks").glob("*/*.py") if "__main__" in p.read_text())
    assert len(scripts) >= 13
    before = {p: p.stat().st_mtime_ns for p in (REPO / "benchmarks").rglob("*")
              if p.is_file() and "__pycache__" not in p.parts}
    for script in scripts:
        name = str(script.relative_to(REPO))
        r = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, (name, r.stderr)
        assert r.stdout.startswith("usage:"), name
        r = subprocess.run([sys.executable, str(script), "--no-such-option"], capture_output=True, text=True,
                           timeout=60)
        assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].endswith("--no-such-option"), (name, r.stderr)
    r = subprocess.run([sys.executable, str(REPO / "benchmarks" / "dynamic" / "run.py"), "nonsense"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "unknown family 'nonsense' (valid: alibaba, parvagpu, synthetic)" in r.stderr
    assert {p: p.stat().st_mtime_ns for p in before} == before  # nothing rewritten


def test_ci_runs_the_newcomer_check_and_it_does_not_recurse():
    ci = (REPO / ".ci" / "run").read_text()
    assert "scripts/test.sh" in ci and "scripts/newcomer.sh" in ci
    env = {"PATH": "/usr/bin:/bin", "MIGCTL_NEWCOMER_RUN": "1"}
    r = subprocess.run(["bash", str(REPO / "scripts" / "newcomer.sh")], capture_output=True, text=True, env=env,
                       timeout=30)
    assert r.returncode == 0 and "not recursing" in r.stdout


def test_readme_says_the_test_command_installs_slurm_and_the_install_is_idempotent():
    readme = (REPO / "README.md").read_text()
    assert "apt-installs Slurm" in readme and "scripts/install-slurm.sh" in readme
    script = (REPO / "scripts" / "install-slurm.sh").read_text()
    assert "already installed" in script and "exit 0" in script
    # the suite's Slurm tests need it installed, so here it is: a second install does nothing
    r = subprocess.run(["bash", str(REPO / "scripts" / "install-slurm.sh")], capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr
    r = subprocess.run(["bash", str(REPO / "scripts" / "install-slurm.sh")], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0 and "already installed" in r.stdout
