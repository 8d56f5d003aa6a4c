"""Read-only verbs: gpus, catalog, profiles, placements, gi/ci list, mode (show); text and --json."""

from __future__ import annotations

import re

import pytest
from cli_helpers import MIXED, one_error_line


def test_gpus_lists_every_gpu_like_nvidia_smi_L(cli):
    r = cli("gpus")
    assert r.code == 0, r.err
    lines = r.out.splitlines()
    assert re.match(r"GPU 0: NVIDIA H100 80GB HBM3 \(UUID: GPU-[0-9a-f-]{36}\)  0000[0-9A-F]{4}:[0-9A-F]{2}:00\.0  MIG Disabled$",
                    lines[0])
    assert lines[1].startswith("GPU 1: NVIDIA H100 80GB HBM3")
    assert len(lines) == 2


def test_gpus_json_keys_and_mig_devices_after_readme_flow(cli):
    assert cli("mode", "enable").code == 0
    r = cli("gi", "create", "3g.40gb,2g.20gb,1g.10gb", "-C", "-i", "0")
    assert r.code == 0, r.err
    data = cli("gpus", "--json").json()
    assert data["backend"] == "sim" and data["driver_version"]
    g0, g1 = data["gpus"]
    assert set(g0) == {"index", "name", "uuid", "bus_id", "model", "mig_capable", "mig_current", "mig_pending",
                       "mig_devices", "catalog_differences", "orphan_gis"}  # issue 8: NVML vs catalog, [] when they agree
    assert g0["catalog_differences"] == [] and g0["orphan_gis"] == []
    assert g0["model"] == "H100-80GB" and g0["mig_current"] is True and g0["mig_pending"] is True
    assert [d["profile"] for d in g0["mig_devices"]] == ["3g.40gb", "2g.20gb", "1g.10gb"]
    assert [d["index"] for d in g0["mig_devices"]] == [0, 1, 2]
    assert [d["memory_mib"] for d in g0["mig_devices"]] == [40448, 20096, 9984]
    assert all(d["uuid"].startswith("MIG-") for d in g0["mig_devices"])
    assert g1["mig_devices"] == []
    text = cli("gpus", "-i", "0").out
    assert re.search(r"^  MIG 3g\.40gb     Device  0: \(UUID: MIG-[0-9a-f-]{36}\)  GI  2  CI 0  40448 MiB", text, re.M)
    assert "GPU 1" not in text


def test_gpu_selection_by_uuid_and_bus_id(cli):
    cli("mode", "enable", "-i", "1")  # writes the state file (UUIDs are fixed from then on)
    g1 = cli("gpus", "--json").json()["gpus"][1]
    assert [g["index"] for g in cli("gpus", "--json", "-i", g1["uuid"]).json()["gpus"]] == [1]
    assert [g["index"] for g in cli("gpus", "--json", "-i", g1["bus_id"]).json()["gpus"]] == [1]


def test_catalog_lists_models_without_a_node(cli, monkeypatch):
    import migctl.device

    def no_node(*a, **k):
        raise AssertionError("catalog must not open a node")

    monkeypatch.setattr(migctl.device, "open_node", no_node)
    r = cli("catalog", sim=None)
    assert r.code == 0, r.err
    assert re.search(r"^H100-80GB\s+NVIDIA H100 80GB HBM3\s+Hopper\s+81559\s+132\s+7/8", r.out, re.M)
    assert re.search(r"^A30\s+NVIDIA A30", r.out, re.M)
    models = cli("catalog", "--json", sim=None).json()["models"]
    keys = [m["key"] for m in models]
    assert "H100-80GB" in keys and "A30" in keys
    h100 = next(m for m in models if m["key"] == "H100-80GB")
    assert h100["memory_slices"] == 8 and "0x2330" in h100["pci_device_ids"]


def test_catalog_model_profiles_marks_unconfirmed_and_sources(cli):
    r = cli("catalog", "h100-80gb", sim=None)
    assert r.code == 0, r.err
    assert re.search(r"^9\s+3_SLICE\s+3g\.40gb\s+40448\s+39\.50\s+60\s+3\s+3\s+0\s+3\s+0\s+2\s+\{0,4\}:4", r.out, re.M)
    assert re.search(r"^3g\.40gb \(9\)\s+0\s+1c\.3g\.40gb", r.out, re.M)
    assert re.search(r"^\s+2\*\s+3g\.40gb\s+60", r.out, re.M)  # the default CI profile
    assert re.search(r"^1g\.20gb \(15\)\s+7\*", r.out, re.M)  # Hopper 1g.20gb: default CI ID 7
    assert "?" in r.out and "UNCONFIRMED" in r.out  # derived CI values are marked, with the legend
    assert "Sources:" not in r.out
    src = cli("catalog", "A30", "--sources", sim=None)
    assert "Sources:" in src.out and "seed003" in src.out
    data = cli("catalog", "A30", "--json", sim=None).json()
    p0 = next(p for p in data["gi_profiles"] if p["id"] == 0)
    assert p0["name"] == "4g.24gb" and "memory_mib" in p0["unconfirmed"] and p0["source"]
    assert [c["id"] for c in p0["ci_profiles"] if c["default"]] == [3]


def test_catalog_unknown_model_is_one_line_listing_models(cli):
    r = cli("catalog", "Z9000", sim=None)
    assert r.code == 2
    line = one_error_line(r)
    assert "'Z9000'" in line and "H100-80GB" in line and "A30" in line


def test_profiles_free_total_from_nvml(cli):
    r = cli("profiles", "-i", "0")
    assert r.code == 0
    assert re.search(r"MIG 3g\.40gb\s+9\s+-/2\s+40448\s+39\.50", r.out)
    assert "disabled" in r.err  # Free is unknown until MIG mode is on; the note says how to enable it
    cli("mode", "enable", "-i", "0")
    cli("gi", "create", "3g.40gb", "-i", "0")
    data = cli("profiles", "-i", "0", "--json").json()["gpus"][0]
    by_name = {p["name"]: p for p in data["profiles"]}
    assert data["mig_enabled"] is True
    assert (by_name["3g.40gb"]["free"], by_name["3g.40gb"]["total"]) == (1, 2)
    assert (by_name["1g.10gb"]["free"], by_name["1g.10gb"]["total"]) == (4, 7)
    assert by_name["7g.80gb"]["free"] == 0
    assert [pl["start"] for pl in by_name["3g.40gb"]["placements"]] == [0, 4]
    assert re.search(r"MIG 3g\.40gb\s+9\s+1/2", cli("profiles", "-i", "0").out)


def test_placements_shows_free_ones_and_occupancy(cli):
    cli("mode", "enable", "-i", "0")
    cli("gi", "create", "3g.40gb", "-i", "0")  # the driver puts the first 3g at 4:4
    r = cli("placements", "-i", "0")
    assert r.code == 0
    assert "[ .  .  .  .  2  2  2  2 ]" in r.out
    assert re.search(r"MIG 3g\.40gb\s+9\s+\{0,4\}:4\s+\{0\}:4", r.out)
    assert re.search(r"MIG 7g\.80gb\s+0\s+\{0\}:8\s+none", r.out)
    data = cli("placements", "-i", "0", "--json").json()["gpus"][0]
    assert data["memory_slices"] == 8
    assert data["occupied"] == [{"gi_id": 2, "profile_id": 9, "profile": "3g.40gb", "placement": {"start": 4, "size": 4}}]
    p1g = next(p for p in data["profiles"] if p["id"] == 19)
    assert [pl["start"] for pl in p1g["placements"] if pl["free"]] == [0, 1, 2, 3]


def test_gi_and_ci_list_json(cli):
    assert cli("gi", "list", "--json").json() == {"gpu_instances": []}
    assert "No GPU instances found." in cli("gi", "list").out
    cli("mode", "enable")
    cli("gi", "create", "2g.20gb", "-C", "-i", "1")
    gis = cli("gi", "list", "--json").json()["gpu_instances"]
    assert gis == [{"gpu": 1, "gi_id": 5, "profile_id": 14, "profile": "2g.20gb", "placement": {"start": 4, "size": 2},
                    "memory_mib": 20096, "sms": 32, "compute_instances": [0]}]
    cis = cli("ci", "list", "--json").json()["compute_instances"]
    assert len(cis) == 1
    assert {k: cis[0][k] for k in ("gpu", "gi_id", "ci_id", "profile_id", "profile", "mig_device")} == {
        "gpu": 1, "gi_id": 5, "ci_id": 0, "profile_id": 1, "profile": "2g.20gb", "mig_device": 0}
    assert cis[0]["uuid"].startswith("MIG-")
    text = cli("ci", "list").out
    assert re.search(r"1\s+5\s+0\s+MIG 2g\.20gb\s+1\s+0:2\s+0\s+MIG-", text)


def test_ci_profiles_marks_default_and_counts_free(cli):
    cli("mode", "enable", "-i", "0")
    cli("gi", "create", "3g.40gb", "-i", "0")
    r = cli("ci", "profiles", "-i", "0", "--gi", "2")
    assert r.code == 0, r.err
    assert re.search(r"0\s+2\s+MIG 1c\.3g\.40gb\s+0\s+3/3\s+20", r.out)
    assert re.search(r"0\s+2\s+MIG 3g\.40gb\s+2\*\s+1/1\s+60", r.out)
    cli("ci", "create", "1c.3g.40gb", "-i", "0", "--gi", "2")  # at 0:1, where the only 2c placement starts
    data = cli("ci", "profiles", "-i", "0", "--gi", "2", "--json").json()["gpu_instances"][0]
    free = {p["name"]: (p["free"], p["total"], p["default"]) for p in data["profiles"]}
    assert free == {"1c.3g.40gb": (2, 3, False), "2c.3g.40gb": (0, 1, False), "3g.40gb": (0, 1, True)}


def test_mode_show(cli):
    r = cli("mode", "--json", sim=MIXED)
    assert r.json() == {"gpus": [
        {"index": 0, "bus_id": "00000000:17:00.0", "mig_capable": True, "mig_current": False, "mig_pending": False},
        {"index": 1, "bus_id": "00000000:35:00.0", "mig_capable": True, "mig_current": False, "mig_pending": False},
    ]}
    assert re.search(r"0\s+00000000:17:00\.0\s+Disabled\s+Disabled", cli("mode", sim=MIXED).out)


@pytest.mark.parametrize("argv", [
    ["gpus", "--json"], ["profiles", "--json"], ["placements", "--json"], ["gi", "list", "--json"],
    ["ci", "list", "--json"], ["ci", "profiles", "--json"], ["mode", "--json"], ["sim", "status", "--json"],
    ["sim", "clients", "--json"],
])
def test_every_listing_emits_parseable_json(cli, argv):
    cli("mode", "enable", "-i", "0", sim=MIXED)
    cli("gi", "create", "1g.10gb", "-C", "-i", "0", sim=MIXED)
    r = cli(*argv, sim=MIXED)
    assert r.code == 0, r.err
    assert isinstance(r.json(), dict)
