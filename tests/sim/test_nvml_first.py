"""NVML first (issue 8, item 1): on a GPU the catalog does not know, migctl works from what the driver reports;
the simulator runs such a model from a model file named in the spec; `catalog --from-node` writes that file back.
Also: a pending MIG disable is cancelled by apply when the config says enabled."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import pytest
import yaml

import migctl.sim as sim
from migctl.catalog import all_models, load_model
from migctl.catalog.loader import load_model_file
from migctl.device.model import catalog_yaml
from migctl.reconcile import apply_config, assert_config


def unknown_model_file(tmp_path: Path) -> Path:
    """A GPU the catalog does not ship: the H100-80GB's data under another name and PCI id."""
    raw = yaml.safe_load((resources.files("migctl.catalog") / "data" / "h100-80gb.yaml").read_text())
    raw.update(key="X900", name="NVIDIA X900 Test Part", pci_device_ids=[0x7777], aliases=[])
    path = tmp_path / "x900.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def cfg(devices: dict[str, int]) -> dict:
    return {"version": "v1", "mig-configs": {"x": [{"devices": "all", "mig-enabled": True, "mig-devices": devices}]}}


@pytest.mark.parametrize("model", [m.key for m in all_models()])
def test_nvml_model_equals_catalog_on_every_shipped_model(node_factory, model):
    """What NVML reports on the simulator agrees with the catalog: no differences, same profiles and placements."""
    gpu = node_factory(f"1x{model}").gpu(0)
    gpu.set_mig_mode(True)
    assert gpu.catalog_differences() == []
    assert gpu.model is not None and gpu.model.key == model
    cat = load_model(model)
    got = {(p.id, p.name, p.slices, p.placements, p.max_instances) for p in gpu.model.gi_profiles}
    drv = tuple(int(x) for x in gpu.node.driver_version.split("."))
    want = {(p.id, p.name, p.slices, p.placements, p.max_instances) for p in cat.profiles_on(drv)}
    assert got == want


def test_unknown_gpu_works_fully_from_nvml(node_factory, tmp_path):
    path = unknown_model_file(tmp_path)
    node = node_factory(f"2xfile:{path}")
    gpu = node.gpu(0)
    assert gpu.catalog_model is None and gpu.name == "NVIDIA X900 Test Part"
    gpu.set_mig_mode(True)
    assert gpu.model is not None and gpu.model.key == "X900-TEST-PART"
    diff = gpu.catalog_differences()
    assert len(diff) == 1 and "is not in migctl's catalog" in diff[0] and "catalog --from-node" in diff[0]
    # apply and assert work on it: MIG is not treated as "not capable" and a mismatch is reported
    r = apply_config(cfg({"3g.40gb": 1, "2g.20gb": 1, "1g.10gb": 2}), "x", node=node)
    assert r.applied and r.plan.counts()["instances_created"] == 8
    assert assert_config(cfg({"3g.40gb": 1, "2g.20gb": 1, "1g.10gb": 2}), "x", node=node) == []
    assert assert_config(cfg({"7g.80gb": 1}), "x", node=node) != []
    gi = node.gpu(0).gpu_instances()[0]
    assert gi.ci_profiles()  # CI profiles read from NVML for a live GI


def test_catalog_from_node_round_trips(node_factory, tmp_path):
    path = unknown_model_file(tmp_path)
    gpu = node_factory(f"1xfile:{path}").gpu(0)
    gpu.set_mig_mode(True)
    out = tmp_path / "from-node.yaml"
    out.write_text(catalog_yaml(gpu))
    back = load_model_file(str(out))
    src = load_model_file(str(path))
    assert back.key == "X900-TEST-PART" and back.pci_device_ids == (0x7777,)
    assert {(p.id, p.name, p.memory_mib, p.placements, p.sms, p.max_instances) for p in back.gi_profiles} == \
        {(p.id, p.name, p.memory_mib, p.placements, p.sms, p.max_instances) for p in src.gi_profiles}


def test_bad_model_file_is_a_clear_spec_error(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("key: X\nname: Y\n")
    with pytest.raises(sim.SpecError, match="model file .* missing or has a bad field"):
        sim.parse_spec(f"1xfile:{bad}")
    with pytest.raises(sim.SpecError, match="cannot read model file"):
        sim.parse_spec(f"1xfile:{tmp_path / 'nope.yaml'}")


def test_apply_cancels_a_pending_disable(node_factory):
    node = node_factory("1xH100-80GB")
    conf = cfg({"3g.40gb": 2})
    apply_config(conf, "x", node=node)
    import subprocess
    import sys

    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        node.sim.add_client(0, p.pid)
        node.gpu(0).set_mig_mode(False)
        assert node.gpu(0).mig_mode() == (1, 0)  # disable pending: a reset would wipe the layout
        diff = assert_config(conf, "x", node=node)
        assert diff and "disable pending" in diff[0]
        r = apply_config(conf, "x", node=node)
        assert r.applied and any("cancel the pending MIG disable" in op["desc"] for op in r.plan.ops)
        assert node.gpu(0).mig_mode() == (1, 1)
        assert assert_config(conf, "x", node=node) == []
    finally:
        p.kill()
        p.wait()


def test_planner_plans_an_unknown_gpu_from_nvml(tmp_path):
    """`plan --live` and `plan --apply` on GPUs the catalog does not ship: planned from the model NVML describes."""
    import os
    import subprocess
    import sys

    path = unknown_model_file(tmp_path)
    wl = tmp_path / "wl.yaml"
    wl.write_text("workloads:\n  - {name: a, profile: 2g.20gb, count: 3}\n")
    env = {**os.environ, "MIGCTL_SIM": f"2xfile:{path}", "MIGCTL_SIM_STATE": str(tmp_path / "sim.json"),
           "MIGCTL_STATE_DIR": str(tmp_path / "state")}

    def migctl(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "migctl", *args], env=env, capture_output=True, text=True,
                              timeout=120)

    assert migctl("mode", "enable").returncode == 0
    r = migctl("plan", str(wl), "--live", "--json")
    assert r.returncode == 0, r.stderr
    r = migctl("plan", str(wl), "--apply")
    assert r.returncode == 0, r.stderr
    gpus = json.loads(migctl("gpus", "--json").stdout)["gpus"]
    assert sorted(d["profile"] for g in gpus for d in g["mig_devices"]) == ["2g.20gb"] * 3
