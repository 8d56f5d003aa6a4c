"""Verbs that change the node: mode, reset, gi create/destroy, ci create/destroy; refusals change nothing."""

from __future__ import annotations

import os
import re

import pytest
from cli_helpers import one_error_line


def snapshot(cli) -> tuple:
    """Everything a failed command must leave alone: GIs, CIs and MIG modes."""
    return (cli("gi", "list", "--json").out, cli("ci", "list", "--json").out, cli("mode", "--json").out)


@pytest.fixture
def enabled(cli):
    """2xH100-80GB with MIG enabled and GPU 0 holding 3g.40gb + 1g.10gb (with default CIs)."""
    assert cli("mode", "enable").code == 0
    r = cli("gi", "create", "3g.40gb,1g.10gb", "-C", "-i", "0")
    assert r.code == 0, r.err
    return cli


def test_mode_enable_done_then_unchanged(cli):
    r = cli("mode", "enable", "-i", "0")
    assert r.code == 0
    assert r.out.strip() == "Enabled MIG mode on GPU 0 (00000000:17:00.0)"
    again = cli("mode", "enable", "-i", "0")
    assert again.code == 0 and "already enabled" in again.out
    modes = cli("mode", "--json").json()["gpus"]
    assert [(g["mig_current"], g["mig_pending"]) for g in modes] == [(True, True), (False, False)]
    data = cli("mode", "disable", "-i", "0", "--json").json()
    assert data["gpus"][0]["result"] == "done" and data["gpus"][0]["mig_current"] is False


def test_mode_pending_while_in_use_then_reset_applies_it(cli):
    pid = os.getpid()
    assert cli("sim", "add-client", pid, "-i", "1").code == 0
    r = cli("mode", "enable", "-i", "1")
    assert r.code == 0
    assert "pending" in r.out and f"PID {pid}" in r.out and "migctl reset -i 1" in r.out
    assert "pending enabled" in cli("gpus", "-i", "1").out
    g = cli("mode", "--json").json()["gpus"][1]
    assert (g["mig_current"], g["mig_pending"]) == (False, True)
    # reset is refused while the client lives, naming it; nothing changes
    before = snapshot(cli)
    busy = cli("reset", "-i", "1")
    assert busy.code == 3  # busy: the same code as apply's
    assert f"PID {pid}" in one_error_line(busy)
    assert snapshot(cli) == before
    assert cli("sim", "remove-client", pid, "-i", "1").code == 0
    done = cli("reset", "-i", "1")
    assert done.code == 0, done.err
    assert "MIG mode enabled" in done.out
    assert cli("mode", "--json").json()["gpus"][1]["mig_current"] is True


def test_mode_bad_action_and_non_mig_gpu(cli, monkeypatch):
    r = cli("mode", "sideways")
    assert r.code == 2 and "enable, disable" in one_error_line(r)

    import pynvml

    from migctl.device.api import Gpu

    real = Gpu.mig_mode

    def mig_mode(self):
        if self.index == 1:
            raise pynvml.NVMLError_NotSupported()
        return real(self)

    monkeypatch.setattr(Gpu, "mig_mode", mig_mode)
    bad = cli("mode", "enable", "-i", "1")
    assert bad.code == 2
    line = one_error_line(bad)
    assert "GPU 1" in line and "does not support MIG" in line and "MIG-capable GPUs: 0" in line
    assert cli("mode", "--json").json()["gpus"][0]["mig_current"] is False  # nothing changed
    # without -i the non-MIG GPU is skipped with a note, the others are enabled
    ok = cli("mode", "enable")
    assert ok.code == 0 and "skipped" in ok.err and "Enabled MIG mode on GPU 0" in ok.out


def test_reset_removes_instances(enabled):
    cli = enabled
    r = cli("reset", "-i", "0", "--json")
    assert r.code == 0
    assert r.json() == {"gpus": [{"index": 0, "bus_id": "00000000:17:00.0", "mig_current": True,
                                  "gpu_instances_removed": 2}], "error": None}
    assert cli("gi", "list", "--json").json() == {"gpu_instances": []}


def test_gi_create_reports_ids_profiles_placements(cli):
    cli("mode", "enable", "-i", "0")
    r = cli("gi", "create", "3g.40gb,2g.20gb,1g.10gb", "-C", "-i", "0")
    assert r.code == 0, r.err
    lines = r.out.splitlines()
    assert lines[0] == "Created GPU instance  2 on GPU 0: MIG 3g.40gb (profile 9) at 4:4"
    assert re.match(r"  Created compute instance 0 in GPU instance 2: MIG 3g\.40gb \(CI profile 2\), MIG-", lines[1])
    assert lines[2] == "Created GPU instance  3 on GPU 0: MIG 2g.20gb (profile 14) at 0:2"
    assert lines[4] == "Created GPU instance  9 on GPU 0: MIG 1g.10gb (profile 19) at 2:1"
    assert len(lines) == 6


def test_gi_create_accepts_id_short_and_full_names_json(cli):
    cli("mode", "enable", "-i", "0")
    r = cli("gi", "create", "19", "MIG 1g.10gb", "1g.10gb", "-i", "0", "--json")
    assert r.code == 0, r.err
    data = r.json()
    assert data["error"] is None
    assert [(c["gi_id"], c["profile_id"], c["placement"]["start"]) for c in data["created"]] == [
        (13, 19, 6), (11, 19, 4), (12, 19, 5)]
    assert all(c["compute_instances"] == [] for c in data["created"])


def test_gi_create_with_placement(cli):
    cli("mode", "enable", "-i", "0")
    r = cli("gi", "create", "3g.40gb", "--placement", "0", "-i", "0", "--json")
    assert r.code == 0, r.err
    assert r.json()["created"][0]["placement"] == {"start": 0, "size": 4}
    bad = cli("gi", "create", "3g.40gb", "--placement", "2", "-i", "0")
    assert bad.code == 2 and "valid starts: 0, 4" in one_error_line(bad)
    two = cli("gi", "create", "1g.10gb,1g.10gb", "--placement", "5", "-i", "0")
    assert two.code == 2 and "one profile" in one_error_line(two)


@pytest.mark.parametrize("argv, expect", [
    (["gi", "create", "3g.40gb,bogus", "-i", "0"], ["'bogus'", "valid: 19 (1g.10gb)", "9 (3g.40gb)", "0 (7g.80gb)"]),
    (["gi", "create", "99", "-i", "0"], ["'99'", "15 (1g.20gb)"]),
    (["gi", "create", "1g.10gb", "-i", "7"], ["'7'", "valid indices: 0..1"]),
    (["gi", "create", "", "-i", "0"], ["no GPU instance profile given"]),
    (["gi", "destroy", "-i", "0"], ["--gi IDS or --all"]),
    (["gi", "destroy", "-i", "0", "--gi", "5"], ["no GPU instance 5", "existing GPU instance IDs: 2, 7"]),
    (["gi", "destroy", "-i", "0", "--gi", "x"], ["--gi must be comma-separated"]),
    (["ci", "create", "9c.9g", "-i", "0", "--gi", "2"], ["'9c.9g'", "0 (1c.3g.40gb)", "2* (3g.40gb)"]),
    (["ci", "destroy", "-i", "0", "--gi", "2", "--ci", "4"], ["no compute instance 4", "existing: 0"]),
    (["ci", "destroy", "-i", "0", "--ci", "0"], ["--ci needs --gi"]),
    (["ci", "profiles", "-i", "0", "--gi", "8"], ["no GPU instance 8"]),
])
def test_bad_input_is_one_line_exit_2_and_changes_nothing(enabled, argv, expect):
    cli = enabled
    before = snapshot(cli)
    r = cli(*argv)
    assert r.code == 2, (r.out, r.err)
    line = one_error_line(r)
    for e in expect:
        assert e in line
    assert snapshot(cli) == before


def test_gi_create_on_gpu_with_mig_disabled_is_bad_input(cli):
    cli("mode", "enable", "-i", "0")
    r = cli("gi", "create", "1g.10gb")
    assert r.code == 2
    line = one_error_line(r)
    assert "GPU 1 (MIG mode disabled)" in line and "MIG-enabled GPUs: 0" in line
    assert cli("gi", "list", "--json").json() == {"gpu_instances": []}  # not even GPU 0 got one


def test_insufficient_resources_names_occupied_and_free_placements(enabled):
    cli = enabled
    r = cli("gi", "create", "4g.40gb", "-i", "0")
    assert r.code == 1
    line = one_error_line(r)
    assert "4g.40gb" in line and "Insufficient Resources" in line
    assert "occupied: GI 2 3g.40gb at 4:4, GI 7 1g.10gb at 0:1" in line
    assert "free placements for 4g.40gb: none" in line
    assert cli("gi", "create", "1g.10gb", "--placement", "5", "-i", "1").code == 0
    fit = cli("gi", "create", "3g.40gb", "--placement", "4", "-i", "1")
    assert fit.code == 1
    line = one_error_line(fit)
    assert "occupied: GI 12 1g.10gb at 5:1" in line and "free placements for 3g.40gb: 0:4 (try --placement 0)" in line


def test_multi_create_stops_at_first_failure_and_hints_order(cli):
    """nvidia-smi semantics: `-cgi 19,19,14,9` creates three GIs, then fails; largest first fits."""
    cli("mode", "enable", "-i", "0")
    r = cli("gi", "create", "19,19,14,9", "-i", "0")
    assert r.code == 1
    assert r.out.count("Created GPU instance") == 3
    line = one_error_line(r)
    assert "3g.40gb" in line and "hint" in line and "3g.40gb,2g.20gb,1g.10gb,1g.10gb" in line
    assert len(cli("gi", "list", "--json").json()["gpu_instances"]) == 3
    assert cli("gi", "destroy", "--all", "-i", "0").code == 0
    ok = cli("gi", "create", "9,14,19,19", "-i", "0")
    assert ok.code == 0, ok.err


def test_gi_create_refused_while_whole_gpu_client(cli):
    cli("mode", "enable", "-i", "0")
    cli("sim", "add-client", os.getpid(), "-i", "0")
    before = snapshot(cli)
    r = cli("gi", "create", "1g.10gb", "-i", "0")
    assert r.code == 1 and f"PID {os.getpid()}" in one_error_line(r)
    assert snapshot(cli) == before


def test_gi_destroy_destroys_cis_first_and_refuses_busy(enabled):
    cli = enabled
    pid = os.getpid()
    assert cli("sim", "add-client", pid, "-i", "0", "--gi", "7", "--ci", "0").code == 0
    before = snapshot(cli)
    r = cli("gi", "destroy", "--all", "-i", "0")
    assert r.code == 3
    line = one_error_line(r)
    assert f"GPU instance 7: process PID {pid}" in line and "nothing was destroyed" in line
    assert snapshot(cli) == before
    ok = cli("gi", "destroy", "--gi", "2", "-i", "0")
    assert ok.code == 0, ok.err
    assert ok.out.splitlines() == ["Destroyed compute instance 0 from GPU 0 GPU instance 2",
                                   "Destroyed GPU instance 2 from GPU 0"]
    assert [g["gi_id"] for g in cli("gi", "list", "--json").json()["gpu_instances"]] == [7]
    busy_ci = cli("ci", "destroy", "--all", "-i", "0")
    assert busy_ci.code == 3 and f"PID {pid}" in one_error_line(busy_ci)


def test_ci_create_default_named_and_destroy(cli):
    cli("mode", "enable", "-i", "0")
    cli("gi", "create", "3g.40gb", "-i", "0")
    d = cli("ci", "create", "-i", "0")  # no --gi: every GI without a CI; no profile: the default one
    assert d.code == 0, d.err
    assert re.match(r"Created compute instance 0 on GPU 0 GPU instance 2: MIG 3g\.40gb \(CI profile 2\), MIG-", d.out)
    again = cli("ci", "create", "-i", "0")
    assert again.code == 2 and "already has one" in one_error_line(again)
    assert cli("ci", "destroy", "--gi", "2", "--ci", "0", "-i", "0").code == 0
    r = cli("ci", "create", "1c.3g.40gb,0", "MIG 1c.3g.40gb", "--gi", "2", "-i", "0", "--json")
    assert r.code == 0, r.err
    assert [(c["ci_id"], c["placement"]["start"]) for c in r.json()["created"]] == [(0, 0), (1, 1), (2, 2)]
    full = cli("ci", "create", "1c.3g.40gb", "--gi", "2", "-i", "0")
    assert full.code == 1
    line = one_error_line(full)
    assert "Insufficient Resources" in line and "existing compute instances: CI 0" in line
    gone = cli("ci", "destroy", "--gi", "2", "--all", "-i", "0", "--json")
    assert gone.code == 0 and len(gone.json()["destroyed"]) == 3
    assert cli("ci", "list", "--json").json() == {"compute_instances": []}


def test_a30_flow(cli):
    spec = "1xA30"
    assert cli("mode", "enable", sim=spec).code == 0
    r = cli("gi", "create", "2g.12gb,1g.6gb,1g.6gb", "-C", "--json", sim=spec)
    assert r.code == 0, r.err
    assert [c["profile"] for c in r.json()["created"]] == ["2g.12gb", "1g.6gb", "1g.6gb"]
    devs = cli("gpus", "--json", sim=spec).json()["gpus"][0]["mig_devices"]
    assert [d["profile"] for d in devs] == ["2g.12gb", "1g.6gb", "1g.6gb"]
    full = cli("gi", "create", "1g.6gb", sim=spec)
    assert full.code == 1 and "free placements for 1g.6gb: none" in one_error_line(full)


@pytest.mark.parametrize("args, wrong", [
    (("gi", "create", "1g.10gb", "-i", "\uff10"), "no GPU matches"),          # full-width 0: was GPU 0
    (("gi", "create", "\u0661", "-i", "0"), "unknown GPU instance profile"),  # Arabic-Indic 1 (refused before too)
    (("gi", "destroy", "-i", "0", "-gi", "\u0661"), "--gi must be comma-separated non-negative integers"),
    (("ci", "create", "-i", "0", "-gi", "2", "\u0660"), "unknown compute instance profile"),  # was CI profile 0
    (("mode", "disable", "-i", "\u0661"), "no GPU matches"),
], ids=["gpu", "gi-profile", "gi-id", "ci-profile", "mode"])
def test_digits_are_ascii_digits(enabled, args, wrong):
    """str.isdigit() also takes other scripts' digits and int() reads them: `gi create 1g.10gb -i ０` created
    an instance on GPU 0, `gi destroy -gi ١` meant GI 1, `ci create ٠` CI profile 0. Now they are what they
    look like, unknown names, and nothing changes."""
    before = snapshot(enabled)
    line = one_error_line(enabled(*args))
    assert wrong in line, line
    assert snapshot(enabled) == before
