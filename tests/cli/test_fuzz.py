"""Fuzzing: random CLI arguments and random content for every input file type.

Whatever the input, migctl must answer with a result or with one ``migctl: error:`` line and a non-zero exit:
never a traceback, a hang or unbounded memory. Runs in-process on a simulated node with bounded examples
(hypothesis' deadline bounds each example's time; the input limits of migctl.inputs bound memory).
"""

from __future__ import annotations

import json
import resource
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

SETTINGS = settings(max_examples=40, deadline=20_000, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

# verbs that never wait for anything (no worker loop, no run/--wait, no follow)
VERBS = [["gpus"], ["profiles"], ["placements"], ["catalog"], ["validate"], ["export"], ["generate-config"],
         ["jobs"], ["leases"], ["gi", "list"], ["ci", "list"], ["sim", "status"], ["checkpoint"], ["k8s", "export"],
         ["mode"], ["plan"], ["cancel"], ["doctor"], ["logs"], ["assert"], ["gi", "create"], ["gi", "destroy"], ["ci", "profiles"]]
WORDS = ["-i", "--gpu", "0", "1", "7", "-1", "0,1", "0,,0", "all", "--json", "-f", "--file", "-c", "--config",
         "--model", "H100-80GB", "A30", "nope", "1g.10gb", "9g.99gb", "--state", "queued", "--all", "-o", "json",
         "yaml", "toml", "--label", "--placements", "--gi", "--ci", "nan", "inf", "1e400", "99999999999999999999999",
         "", " ", "\x1b[2J", "\udcff", "--", "--help", "-C", "--time-limit", "0.1", "--seed", "--map",
         "x" * 300, "/", "--svg"]  # a name too long for the file system, a directory


@pytest.fixture(scope="module", autouse=True)
def _memory_cap() -> Iterator[None]:
    """Cap this process's address space while fuzzing, so a regression fails instead of exhausting the machine."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    cap = 6 * 1024**3
    resource.setrlimit(resource.RLIMIT_AS, (cap if hard == resource.RLIM_INFINITY else min(cap, hard), hard))
    yield
    resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def _check(r: Any, args: Any) -> None:
    assert isinstance(r.code, int), (args, r)
    if r.code != 0 and r.code != 1 or r.err.startswith("migctl: error"):
        lines = [ln for ln in r.err.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("migctl: error: "), (args, r.err[:500])
    assert "Traceback" not in r.err and "Traceback" not in r.out, args



@SETTINGS
@given(verb=st.sampled_from(VERBS), extra=st.lists(st.one_of(st.sampled_from(WORDS), st.text(max_size=12)),
                                                   max_size=6))
def test_fuzz_cli_arguments(cli, tmp_path: Path, verb: list[str], extra: list[str]) -> None:
    args = [*verb, *extra]
    if "plan" in verb and "--time-limit" not in args:
        args += ["--time-limit", "1"]
    _check(cli(*args, sim="1xA30,1xH100-80GB"), args)


# ------------------------------------------------------------------------------------------------- files
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-10**20, 10**20), st.floats(allow_nan=True),
                    st.text(max_size=20), st.sampled_from(["v1", "all", "1g.10gb", "7g.80gb", "0x233010DE", "A30"]))
KEYS = st.one_of(st.text(max_size=10), st.sampled_from(
    ["version", "mig-configs", "devices", "mig-enabled", "mig-devices", "device-filter", "hooks", "apply-start",
     "command", "args", "envs", "workdir", "jobs", "defaults", "profile", "mem", "gpu", "env", "priority", "name",
     "fleet", "workloads", "model", "count", "memory_gib", "options", "serving", "gpus", "layout", "format",
     "old", "target", "ops", "next", "phase", "label", "kind", "data", "config.yaml"]))
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                        st.dictionaries(KEYS, inner, max_size=4)), max_leaves=25)
DOCS = st.one_of(
    VALUES.map(lambda v: yaml.safe_dump(v, allow_unicode=True)),
    st.dictionaries(KEYS, VALUES, max_size=5).map(lambda v: yaml.safe_dump(v, allow_unicode=True)),
    VALUES.map(lambda v: json.dumps(v, default=str)),
    st.text(max_size=300),
    st.binary(max_size=200).map(lambda b: b.decode("latin-1")),
)


def _node(spec: str) -> Any:
    from migctl.device import open_node

    return open_node(spec)


def _write(tmp: Path, name: str, text: str) -> Path:
    p = tmp / name
    p.write_bytes(text.encode("utf-8", "surrogateescape"))
    return p


@SETTINGS
@given(text=DOCS, kind=st.sampled_from(["config", "hooks", "checkpoint", "jobs", "plan", "k8s", "simstate",
                                         "journal", "csv", "slurm"]))
def test_fuzz_every_input_file_type(cli, tmp_path: Path, text: str, kind: str) -> None:
    good = _write(tmp_path, "good.yaml", "version: v1\nmig-configs:\n  all-disabled:\n"
                                         "    - devices: all\n      mig-enabled: false\n")
    f = _write(tmp_path, f"in-{kind}.yaml", text)
    if kind == "config":
        runs = [("validate", "-f", f), ("apply", "-f", f, "-c", "all-disabled", "--dry-run")]
    elif kind == "hooks":
        runs = [("apply", "-f", good, "-c", "all-disabled", "-k", f, "--dry-run")]
    elif kind == "checkpoint":
        runs = [("restore", "-f", f, "--dry-run")]
    elif kind == "jobs":
        from migctl.errors import UserError
        from migctl.jobs import JobsError, batch

        try:
            batch.load(f)  # parse only: running random commands is not the point
        except (JobsError, UserError) as e:
            assert "\n" not in str(e)
        return
    elif kind == "plan":
        runs = [("plan", f, "--time-limit", "1")]
    elif kind == "k8s":
        runs = [("k8s", "export", "-f", f, "-c", "all-disabled")]
    elif kind == "slurm":
        gres = _write(tmp_path, "gres.conf", text)
        runs = [("slurm", "gres", "--node", "n1", "--gres-conf", gres, "--slurm-conf", f),
                ("slurm", "gres", "--node", "n1", "--gres-conf", f, "--no-slurm-conf")]
    elif kind == "csv":
        csv = _write(tmp_path, "w.csv", text)
        plan = _write(tmp_path, "p.yaml", f"fleet: [{{model: A30, count: 1}}]\nworkloads_csv: {csv.name}\n")
        runs = [("plan", plan, "--time-limit", "1")]
    elif kind == "journal":
        # a pending apply journal with random content: recover must validate it and change nothing
        assert cli("gpus", sim="1xA30").code == 0
        from migctl.paths import state_dir
        from migctl.reconcile.journal import Journal

        node = _node("1xA30")
        Journal(node, state_dir()).path.write_bytes(text.encode("utf-8", "surrogateescape"))
        r = cli("recover", sim="1xA30")
        _check(r, "recover")
        assert r.code in (0, 2), r
        return
    else:
        runs = [("--sim-state", f, "gpus")]
    for args in runs:
        _check(cli(*args, sim="1xA30"), args)
