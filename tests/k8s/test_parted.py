"""The drop-in nvidia-mig-parted: the MIG manager's call sequence on every shipped config, hooks, failures,
SIGKILL mid-apply, and the command line (flags, environment variables, exit statuses)."""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path

import pytest
import yaml
from tests.k8s.conftest import COMPAT, ROOT, parted_proc
from tests.k8s.migmanager import layout_problems, reconfigure

CONFIG_FILES = sorted(p for p in COMPAT.glob("*.yaml") if "hooks" not in p.name)
MODELS = ["A100-40GB", "H100-80GB", "B200"]


def _doc(path: Path) -> dict:
    """The v1 config of a compat file (a ConfigMap's config.yaml unwrapped), read with PyYAML only."""
    for d in yaml.safe_load_all(path.read_text()):
        if isinstance(d, dict) and d.get("kind") == "ConfigMap" and "config.yaml" in d.get("data", {}):
            return yaml.safe_load(d["data"]["config.yaml"])
        if isinstance(d, dict) and "mig-configs" in d:
            return d
    raise AssertionError(f"no config in {path}")


def _live():
    from migctl.device import open_node
    from migctl.reconcile.live import read_node

    return read_node(open_node())


def _layouts() -> dict[int, dict]:
    return {g.index: g.layout() for g in _live()}


def _impossible(doc: dict, label: str) -> bool:
    """True when some GPU of this node is asked for a profile its catalog model lacks or that cannot fit."""
    from tests.k8s.migmanager import wanted

    from migctl.catalog import load_model
    from migctl.catalog.geometry import place_all

    for g in _live():
        w = wanted(doc, label, g.index, g.pci_device_id)
        if w is None or not w["mig"]:
            continue
        model = load_model(g.model.key)
        profiles = []
        for key, n in w["devices"].items():
            gi = key.split(".", 1)[1] if re.match(r"^\d+c\.", key) else key
            p = model.profile(gi)
            if p is None:
                return True
            profiles += [p] * n
        if place_all(model, profiles) is None:
            return True
    return False


@pytest.mark.parametrize("model", MODELS)
def test_mig_manager_sequence_on_every_shipped_config(parted, monkeypatch, model) -> None:
    """Every label of every shipped file, one after another on one simulated node, through the MIG
    manager's own call sequence: each ends in `success` with the layout the raw YAML asks for, or in
    `failed` because the label cannot exist on this hardware, the failed full apply changing nothing.
    A label whose entries are identical to one already run on this node is only validated (99 distinct
    label bodies among the 254 labels of the 6 files)."""
    import migctl.sim as sim

    monkeypatch.setenv("MIGCTL_SIM", f"1x{model}")
    sim.install(f"1x{model}", state_path=None)  # in memory: the drop-in's open_node() uses this node
    seen: set[str] = set()
    successes = failures = 0
    for path in CONFIG_FILES:
        doc = _doc(path)
        for label, entries in doc["mig-configs"].items():
            body = json.dumps(entries, sort_keys=True)
            if body in seen:
                assert parted("assert", "--valid-config", "-f", str(path), "-c", label).rc == 0
                continue
            seen.add(body)
            o = reconfigure(parted, str(path), label)
            if o.state == "success":
                successes += 1
                assert layout_problems(doc, label, _live()) == [], (path.name, label, o.calls)
                continue
            failures += 1
            assert o.state == "failed", (label, o.calls)
            assert _impossible(doc, label), (label, o.failed_err)
            assert re.search(r"does not exist on|do not fit|not MIG-capable", o.failed_err), o.failed_err
            fatal = [ln for ln in o.failed_err.splitlines() if "level=fatal" in ln]
            assert len(fatal) == 1 and o.failed_err.splitlines()[-1] == fatal[0]
            # the failure came from the full apply; the mode-only step before it is mig-parted's too
            assert o.calls[-1][0][:2] == ("-d", "apply") and o.calls[-1][1] == 1
            assert parted("assert", "--mode-only", "-f", str(path), "-c", label).rc == 0
    assert len(seen) >= 90 and successes >= 10 and failures >= 10, (len(seen), successes, failures)


def _hooks_file(tmp_path: Path) -> tuple[Path, Path]:
    """NVIDIA's hooks-default.yaml with its workdir pointed at a directory holding our hooks.sh."""
    work = tmp_path / "mig-manager"
    work.mkdir()
    log = tmp_path / "hooks.log"
    funcs = "\n".join(
        f'{name}() {{ echo "{name} args=$* sel=$MIG_PARTED_SELECTED_CONFIG mode_only=$MIG_PARTED_MODE_CHANGE_ONLY '
        f'skip_reset=$MIG_PARTED_SKIP_RESET file=$MIG_PARTED_CONFIG_FILE hooks=$MIG_PARTED_HOOKS_FILE '
        f'home=${{HOME:-unset}} extra=${{EXTRA:-unset}}" >> {log}; [ "${{FAIL_AT:-}}" != "{name}" ]; }}'
        for name in ("apply-start", "pre-apply-mode", "pre-apply-config", "apply-exit", "refresh-cdi"))
    (work / "hooks.sh").write_text(funcs + "\n")
    text = (COMPAT / "deployments_systemd_hooks-default.yaml").read_text().replace("/etc/nvidia-mig-manager", str(work))
    hooks = tmp_path / "hooks.yaml"
    hooks.write_text(text)
    return hooks, log


def _entries(log: Path) -> list[str]:
    lines = log.read_text().splitlines() if log.exists() else []
    log.unlink(missing_ok=True)
    return lines


def test_hooks_from_environment_through_the_sequence(simnode, parted, tmp_path, monkeypatch) -> None:
    """MIG_PARTED_HOOKS_FILE (as the systemd unit sets it) with NVIDIA's default hooks file: each apply runs
    apply-start, pre-apply-mode/-config only when that phase changes something, apply-exit and refresh-cdi;
    hooks see MIG_PARTED_MODE_CHANGE_ONLY and nothing inherited from our environment."""
    simnode("2xH100-80GB")
    hooks, log = _hooks_file(tmp_path)
    cfg = str(COMPAT / "gpu-operator_default-mig-parted-config.yaml")
    monkeypatch.setenv("MIG_PARTED_HOOKS_FILE", str(hooks))
    monkeypatch.setenv("HOME", "/root-of-the-caller")
    o = reconfigure(parted, cfg, "all-balanced")
    assert o.state == "success" and o.mode_change_required
    lines = _entries(log)
    names = [ln.split()[0] for ln in lines]
    assert names == ["apply-start", "pre-apply-mode", "apply-exit", "refresh-cdi",  # -d apply --mode-only
                     "apply-start", "pre-apply-config", "apply-exit", "refresh-cdi"]  # -d apply
    assert all("sel=all-balanced" in ln and f"file={cfg}" in ln and f"hooks={hooks}" in ln for ln in lines)
    assert all("mode_only=true" in ln for ln in lines[:4]) and all("mode_only=false" in ln for ln in lines[4:])
    assert all("skip_reset=false" in ln and "home=unset" in ln for ln in lines)
    assert lines[0].split()[1] == "args=all-balanced"  # "apply-start ${MIG_PARTED_SELECTED_CONFIG}"
    # already applied: the manager stops at `assert`, no apply and no hook
    assert reconfigure(parted, cfg, "all-balanced").state == "success" and _entries(log) == []
    # a config change without a mode change: no pre-apply-mode; an apply with nothing to do runs no pre-apply-*
    o = reconfigure(parted, cfg, "all-1g.10gb")
    assert o.state == "success" and not o.mode_change_required
    assert [ln.split()[0] for ln in _entries(log)] == ["apply-start", "apply-exit", "refresh-cdi",
                                                      "apply-start", "pre-apply-config", "apply-exit", "refresh-cdi"]


def test_hook_envs_and_flag_precedence(simnode, parted, tmp_path, monkeypatch) -> None:
    """A hook's own envs reach it, but the command's MIG_PARTED_* values win (mig-parted's EnvsMap.Combine);
    a flag on the command line beats its environment variable."""
    simnode("1xH100-80GB")
    hooks, log = _hooks_file(tmp_path)
    data = yaml.safe_load(hooks.read_text())
    for h in data["hooks"]["apply-start"]:
        h["envs"] = {"EXTRA": "from-hook", "MIG_PARTED_SELECTED_CONFIG": "overridden?"}
    hooks.write_text(yaml.safe_dump(data))
    cfg = str(COMPAT / "examples_config.yaml")
    monkeypatch.setenv("MIG_PARTED_SELECTED_CONFIG", "all-disabled")
    monkeypatch.setenv("MIG_PARTED_CONFIG_FILE", cfg)
    monkeypatch.setenv("MIG_PARTED_SKIP_RESET", "1")
    r = parted("apply", "-k", str(hooks), "-c", "all-enabled")  # file from the environment, label from the flag
    assert r.rc == 0 and r.out == "MIG configuration applied successfully\n", r.err
    first = _entries(log)[0]
    assert "extra=from-hook" in first and "sel=all-enabled" in first and "skip_reset=true" in first
    assert all(g.mig_current for g in _live())


def test_failing_hook_and_fault_roll_back_and_apply_exit_runs(simnode, parted, tmp_path, monkeypatch) -> None:
    import migctl.sim as sim

    simnode("2xA100-40GB")
    hooks, log = _hooks_file(tmp_path)
    cfg = str(COMPAT / "examples_config.yaml")
    assert parted("apply", "-f", cfg, "-c", "all-balanced").rc == 0
    before = _layouts()
    # pre-apply-config fails: exit 1, nothing changed, apply-exit still ran
    data = yaml.safe_load(hooks.read_text())
    for h in data["hooks"]["pre-apply-config"]:
        h["envs"] = {"FAIL_AT": "pre-apply-config"}
    hooks.write_text(yaml.safe_dump(data))
    r = parted("-d", "apply", "-f", cfg, "-c", "all-1g.5gb", "-k", str(hooks))
    last = r.err.splitlines()[-1]
    assert r.rc == 1 and "Error applying MIG configuration with hooks" in last
    assert "error running pre-apply-config hook: exit status 1" in last and "rolled back" in last
    assert [ln.split()[0] for ln in _entries(log)] == ["apply-start", "pre-apply-config", "apply-exit", "refresh-cdi"]
    assert _layouts() == before
    # an NVML failure in the middle: every GPU rolled back, exit 1, the manager would set `failed`
    node = sim.active()
    assert node is not None
    for k in (1, 5, 11):
        node.inject_fault(k)
        o = reconfigure(parted, cfg, "all-1g.5gb")
        assert o.state == "failed" and "rolled back" in o.failed_err, o.failed_err
        assert _layouts() == before
    node.inject_fault(None)
    assert reconfigure(parted, cfg, "all-1g.5gb").state == "success"


def test_busy_instance_elsewhere_is_kept_and_only_changing_gpu_is_reset(simnode, parted, client) -> None:
    """mig-parted clears the whole GPU and resets every GPU for one mode change; the drop-in resets only the
    GPU whose mode changes and keeps a busy instance on another GPU that the target keeps."""
    import migctl.sim as sim
    from migctl.device import open_node

    simnode("2xH100-80GB")
    cfg = str(COMPAT / "gpu-operator_default-mig-parted-config.yaml")
    assert parted("apply", "-f", cfg, "-c", "all-balanced").rc == 0
    node = open_node()
    gi = node.gpu(0).gpu_instances()[0]
    uuid = next(d.uuid for d in node.gpu(0).mig_devices() if d.gi_id == gi.id)
    p = client(60)
    assert sim.active().add_client(0, p.pid, gi.id, 0) == 0
    custom = {"version": "v1", "mig-configs": {"mixed": [
        {"devices": [0], "mig-enabled": True, "mig-devices": {"1g.10gb": 2, "2g.20gb": 1, "3g.40gb": 1}},
        {"devices": [1], "mig-enabled": False}]}}
    path = Path(os.environ["MIGCTL_STATE_DIR"]).parent / "mixed.yaml"
    path.write_text(yaml.safe_dump(custom))
    o = reconfigure(parted, str(path), "mixed")
    assert o.state == "success" and o.mode_change_required
    debug = "".join(c for c in [parted("-d", "assert", "-f", str(path), "-c", "mixed").err])
    assert "level=debug" in debug
    assert uuid in {c.uuid for g in _live() for x in g.gis for c in x.cis}
    # the mode-only apply planned a reset of GPU 1 only
    r = parted("-d", "apply", "-m", "-f", cfg, "-c", "all-balanced")
    assert r.rc == 0 and "GPU 1: reset" in r.err and "GPU 0: reset" not in r.err
    # a target that must destroy the busy instance is refused (exit 1), naming the PID; nothing changes
    before = _layouts()
    r = parted("apply", "-f", cfg, "-c", "all-7g.80gb")
    assert r.rc == 1 and str(p.pid) in r.err and "in use" in r.err
    assert _layouts() == before


def test_skip_reset_and_mode_change_on_a_busy_gpu(simnode, parted, client) -> None:
    """--skip-reset plans no reset; a mode change the driver cannot make (GPU in use) fails `apply
    --mode-only`, so the manager's `assert --mode-only` fails and WITH_REBOOT reboots (state rebooting)."""
    import migctl.sim as sim

    simnode("2xB200")
    cfg = str(COMPAT / "gpu-operator_default-mig-parted-config.yaml")
    r = parted("-d", "apply", "--skip-reset", "--mode-only", "-f", cfg, "-c", "all-balanced")
    assert r.rc == 0 and "reset" not in r.err and all(g.mig_current for g in _live())
    p = client(60)
    assert parted("apply", "-f", cfg, "-c", "all-disabled").rc == 0
    assert sim.active().add_client(1, p.pid) == 0  # a process on the whole GPU 1
    o = reconfigure(parted, cfg, "all-balanced", with_reboot=True)
    assert o.state == "rebooting" and str(p.pid) in o.failed_err
    assert [g.mig_current for g in _live()] == [False, False]  # all-or-nothing: GPU 0 was not changed either


def test_sigkill_mid_apply_then_the_manager_retries(simnode, tmp_path) -> None:
    """The drop-in is SIGKILLed in the middle of `-d apply`; the MIG manager's next attempt (a fresh process
    for every call, as in the cluster) finds the journal, rolls back, and applies."""
    state = simnode("2xA100-40GB")
    env = {"MIGCTL_SIM": "2xA100-40GB", "MIGCTL_SIM_STATE": str(state)}
    cfg = str(COMPAT / "examples_config.yaml")
    assert parted_proc("apply", "-f", cfg, "-c", "all-balanced", env=env).returncode == 0
    before = _layouts()
    import migctl.sim as sim

    sim.active().inject_fault(None)  # resets the operation counter MIGCTL_SIM_CRASH_AT counts
    crash_at = 9  # after the old instances are gone, while new ones are being created
    r = parted_proc("-d", "apply", "-f", cfg, "-c", "all-3g.20gb", env={**env, "MIGCTL_SIM_CRASH_AT": str(crash_at)})
    assert r.returncode == -9, r.stderr
    from migctl.device import open_node
    from migctl.reconcile import Journal

    assert Journal(open_node()).exists()
    assert _layouts() != before or crash_at == 1

    def call(*argv: str):
        proc = parted_proc(*argv, env=env)
        return type("R", (), {"rc": proc.returncode, "err": proc.stderr})

    o = reconfigure(call, cfg, "all-3g.20gb")
    assert o.state == "success", o.calls
    assert not Journal(open_node()).exists()
    assert layout_problems(_doc(Path(cfg)), "all-3g.20gb", _live()) == []


def test_console_script_and_verbs(simnode, parted, tmp_path) -> None:
    # (tomllib is Python 3.11+; the project supports 3.10)
    scripts = (ROOT / "pyproject.toml").read_text().partition("[project.scripts]")[2].partition("\n[")[0]
    assert re.search(r'^nvidia-mig-parted = "migctl\.parted\.cli:run"$', scripts, re.M), scripts
    simnode("2xH100-80GB")
    cfg = str(COMPAT / "gpu-operator_default-mig-parted-config.yaml")
    assert parted("apply", "-f", cfg, "-c", "all-balanced").rc == 0
    r = parted("export", "-o", "json", "-l", "mine")
    exported = json.loads(r.out)
    assert r.rc == 0 and list(exported["mig-configs"]) == ["mine"]
    again = tmp_path / "exported.yaml"
    again.write_text(parted("export").out)
    assert parted("assert", "-f", str(again), "-c", "current").rc == 0  # single label: -c optional too
    assert parted("assert", "-f", str(again)).rc == 0
    ck = tmp_path / "ck.json"
    r = parted("checkpoint", "-f", str(ck))
    assert r.rc == 0 and r.out == "MIG configuration checkpointed successfully\n"
    assert stat.S_IMODE(ck.stat().st_mode) == 0o600
    assert parted("apply", "-f", cfg, "-c", "all-disabled").rc == 0
    r = parted("restore", "-f", str(ck), "-m")
    assert r.rc == 0 and all(g.mig_current and not g.gis for g in _live())
    r = parted("restore", "-f", str(ck))
    assert r.rc == 0 and r.out == "MIG configuration restored successfully\n"
    assert parted("assert", "-f", str(again)).rc == 0
    gen = tmp_path / "gen.yaml"
    assert parted("generate-config", "-f", str(gen)).rc == 0
    assert "all-balanced" in yaml.safe_load(gen.read_text())["mig-configs"]
    assert parted("assert", "-a", "-f", str(gen), "-c", "all-1g.10gb").out == "Selected MIG configuration is valid\n"


@pytest.mark.parametrize(
    ("argv", "env", "needle"),
    [
        (["apply", "-x"], {}, "Flag provided but not defined: -x"),
        (["apply", "-f"], {}, "Flag needs an argument: -f"),
        (["apply"], {}, "Missing required flags 'config-file'"),
        (["apply", "-f", "/nonexistent.yaml", "-c", "a"], {}, "no such file"),
        (["assert", "-f", "CFG"], {}, "missing required flag 'selected-config' when more than one config available"),
        (["assert", "-a", "-f", "CFG", "-c", "nope"], {}, "selected mig-config not present: nope (valid: all-disabled"),
        (["apply", "-f", "CFG", "-c", "all-disabled"], {"MIG_PARTED_SKIP_RESET": "maybe"},
         'invalid value "maybe" for environment variable MIG_PARTED_SKIP_RESET'),
        (["apply", "--skip-reset=nah"], {}, 'invalid value "nah" for flag -skip-reset'),
        (["export", "-o", "xml"], {}, "unrecognized 'output-format': xml (valid: json, yaml)"),
        (["frobnicate"], {}, "No help topic for 'frobnicate'"),
        (["restore", "-f", "CFG"], {}, "error parsing checkpoint file"),
        (["apply", "-k", "CFG", "-f", "CFG", "-c", "all-disabled"], {}, "Error parsing hooks file"),
    ],
)
def test_bad_command_lines_exit_1_with_one_line(simnode, parted, monkeypatch, argv, env, needle) -> None:
    simnode("1xH100-80GB")
    cfg = str(COMPAT / "examples_config.yaml")
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    before = _layouts()
    r = parted(*[cfg if a == "CFG" else a for a in argv])
    assert r.rc == 1 and r.out == "" and r.err.count("\n") == 1 and "level=fatal" in r.err, r.err
    msg = json.loads(r.err.split(" msg=", 1)[1])
    assert needle.lower() in msg.lower(), msg
    assert "Traceback" not in r.err and _layouts() == before


def test_parser_follows_urfave_cli() -> None:
    from migctl.parted.args import parse

    p = parse(["apply", "-sm", "-f=x.yaml", "--selected-config", "all-balanced", "-d"], {})
    assert (p.command, p.bool("skip-reset"), p.bool("mode-only"), p.str("config-file"), p.bool("debug")) == \
        ("apply", True, True, "x.yaml", True)
    p = parse(["-d", "assert", "-config-file", "y.yaml", "-ma", "--mode-only=false"], {})
    assert (p.bool("debug"), p.str("config-file"), p.bool("mode-only"), p.bool("valid-config")) == (True, "y.yaml", False, True)
    env = {"MIG_PARTED_CONFIG_FILE": "e.yaml", "MIG_PARTED_MODE_CHANGE_ONLY": "true", "MIG_PARTED_DEBUG": "1",
           "MIG_PARTED_SKIP_RESET": ""}
    p = parse(["apply", "-f", "flag.yaml"], env)
    assert (p.str("config-file"), p.bool("mode-only"), p.bool("debug"), p.bool("skip-reset")) == ("flag.yaml", True, True, False)
    p = parse(["export"], {"MIG_PARTED_OUTPUT_FORMAT": "json"})
    assert (p.str("output-format"), p.str("config-label")) == ("json", "current")
    assert parse(["help", "apply"], {}).help and parse(["apply", "--help"], {}).help
    assert parse(["apply", "--", "-f"], {}).args == ["-f"]


def test_python_m_runs_the_drop_in(simnode) -> None:
    r = parted_proc("--version")
    assert r.returncode == 0 and r.stdout.startswith("nvidia-mig-parted version")
    r = parted_proc("assert", "-f", "/nonexistent")
    assert r.returncode == 1 and "Traceback" not in r.stderr and r.stderr.count("\n") == 1



def test_engine_mode_only_and_skip_reset(simnode) -> None:
    """The engine's mode_only / skip_reset (what the drop-in's -m / -s call)."""
    from migctl.device import open_node
    from migctl.reconcile import apply_config

    simnode("2xH100-80GB")
    cfg = str(COMPAT / "gpu-operator_default-mig-parted-config.yaml")
    seen: list[str] = []
    r = apply_config(cfg, "all-balanced", node=open_node(), mode_only=True, skip_reset=True,
                     progress=lambda k, n, d: seen.append(d))
    assert r.applied and seen and all("enable MIG mode" in d for d in seen)
    assert all(g.mig_current and not g.gis for g in _live())
    apply_config(cfg, "all-balanced", node=open_node())
    assert layout_problems(_doc(Path(cfg)), "all-balanced", _live()) == []


def test_a_config_on_stdin_is_read_as_a_file_is(simnode, parted, monkeypatch) -> None:
    """`-f -` reads at most 16 MiB and one byte more, as a config file is read (it read stdin to its end:
    300 MB took 282 s and 900 MB on 2026-12-03), refuses bytes that are not UTF-8, and applies a sound one."""
    import io
    import sys

    simnode("1xH100-80GB")
    before = _layouts()
    for data, needle in ((b"a" * (16 * 1024 * 1024 + 1), "larger than 16 MiB"), (b"\xff\xfe", "not UTF-8")):
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))
        r = parted("apply", "-f", "-", "-c", "all-1g.10gb")
        assert r.rc == 1 and r.err.count("\n") == 1 and needle in r.err, r.err
        assert _layouts() == before
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO((COMPAT / "examples_config.yaml").read_bytes())))
    r = parted("apply", "-f", "-", "-c", "all-1g.10gb")
    assert r.rc == 0, r.err
    assert _layouts() != before
