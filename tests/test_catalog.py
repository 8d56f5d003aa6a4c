"""The hardware catalog against the real tables of shared/reference/mig-hardware.md.

Each table below is copied from a real ``nvidia-smi mig -lgip`` / ``-lgipp`` transcript as recorded in
mig-hardware.md (section given per table). Columns: ID, name, max instances, memory GiB as printed,
SM, DEC, ENC, CE, JPEG, OFA, placements (``{starts}:size`` or None where the reference records none).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from migctl.catalog import all_models, load_model, memory_size_gb, model_by_pci_id, profile_name
from migctl.catalog.model import parse_driver

ALL_KEYS = {
    "A30",
    "A100-40GB",
    "A100-80GB",
    "A100-40GB-PCIE",
    "A100-80GB-PCIE",
    "H100-80GB",
    "H100-PCIE",
    "H100-NVL",
    "H100-96GB",
    "H200",
    "GH200-144GB",
    "B200",
    "GB200",
    "B300",
    "GB300",
    "RTX-PRO-6000",
}

EIGHT_SLICE = [
    "A100-40GB",
    "A100-80GB",
    "H100-80GB",
    "H100-PCIE",
    "H100-NVL",
    "H100-96GB",
    "H200",
    "GH200-144GB",
    "B200",
    "GB200",
]

# Canonical 8-slice -lgipp (mig-hardware §1)
P1 = "{0,1,2,3,4,5,6}:1"
PREV2 = "{0,2,4,6}:2"
P2 = "{0,2,4}:2"
P3 = "{0,4}:4"
P4 = "{0}:4"
P7 = "{0}:8"

# (id, name, max, GiB, SM, DEC, ENC, CE, JPEG, OFA, placements)
A30 = [  # §3.1, seed 003 (driver 545.23.08)
    (14, "1g.6gb", 4, "5.81", 14, 1, 0, 1, 0, 0, "{0,1,2,3}:1"),
    (21, "1g.6gb+me", 1, "5.81", 14, 1, 0, 1, 1, 1, "{0,1,2,3}:1"),
    (5, "2g.12gb", 2, "11.69", 28, 2, 0, 2, 0, 0, "{0,2}:2"),
    (6, "2g.12gb+me", 1, "11.69", 28, 2, 0, 2, 1, 1, "{0,2}:2"),
    (0, "4g.24gb", 1, "23.44", 56, 4, 0, 4, 1, 1, "{0}:4"),
]
A100_40 = [  # §3.2 (9.75 / 19.62 / 39.50 driver set)
    (19, "1g.5gb", 7, "4.75", 14, 0, 0, 1, 0, 0, P1),
    (20, "1g.5gb+me", 1, "4.75", 14, 1, 0, 1, 1, 1, P1),
    (15, "1g.10gb", 4, "9.75", 14, 1, 0, 1, 0, 0, PREV2),
    (14, "2g.10gb", 3, "9.75", 28, 1, 0, 2, 0, 0, P2),
    (9, "3g.20gb", 2, "19.62", 42, 2, 0, 3, 0, 0, P3),
    (5, "4g.20gb", 1, "19.62", 56, 2, 0, 4, 0, 0, P4),
    (0, "7g.40gb", 1, "39.50", 98, 5, 0, 7, 1, 1, P7),
]
A100_80 = [  # §3.3 (newer driver)
    (19, "1g.10gb", 7, "9.75", 14, 0, 0, 1, 0, 0, P1),
    (20, "1g.10gb+me", 1, "9.75", 14, 1, 0, 1, 1, 1, P1),
    (15, "1g.20gb", 4, "19.50", 14, 1, 0, 1, 0, 0, PREV2),
    (14, "2g.20gb", 3, "19.50", 28, 1, 0, 2, 0, 0, P2),
    (9, "3g.40gb", 2, "39.50", 42, 2, 0, 3, 0, 0, P3),
    (5, "4g.40gb", 1, "39.50", 56, 2, 0, 4, 0, 0, P4),
    (0, "7g.80gb", 1, "79.25", 98, 5, 0, 7, 1, 1, P7),
]
H100_80 = [  # §3.4, seed 000, idx:8225626544
    (19, "1g.10gb", 7, "9.75", 16, 1, 0, 1, 1, 0, P1),
    (20, "1g.10gb+me", 1, "9.75", 16, 1, 0, 1, 1, 1, P1),
    (15, "1g.20gb", 4, "19.62", 26, 1, 0, 1, 1, 0, PREV2),
    (14, "2g.20gb", 3, "19.62", 32, 2, 0, 2, 2, 0, P2),
    (9, "3g.40gb", 2, "39.50", 60, 3, 0, 3, 3, 0, P3),
    (5, "4g.40gb", 1, "39.50", 64, 4, 0, 4, 4, 0, P4),
    (0, "7g.80gb", 1, "79.25", 132, 7, 0, 8, 7, 1, P7),
]
H100_PCIE = [  # §3.5 (driver 570.169); placements not recorded
    (19, "1g.10gb", 7, "9.75", 14, 1, 0, 1, 1, 0, None),
    (20, "1g.10gb+me", 1, "9.75", 14, 1, 0, 1, 1, 1, None),
    (15, "1g.20gb", 4, "19.62", 14, 1, 0, 1, 1, 0, None),
    (14, "2g.20gb", 3, "19.62", 30, 2, 0, 2, 2, 0, None),
    (9, "3g.40gb", 2, "39.50", 46, 3, 0, 3, 3, 0, None),
    (5, "4g.40gb", 1, "39.50", 62, 4, 0, 4, 4, 0, None),
    (0, "7g.80gb", 1, "79.25", 114, 7, 0, 8, 7, 1, None),
]
H100_NVL = [  # §3.6 (driver 560.35.03)
    (19, "1g.12gb", 7, "10.75", 16, 1, 0, 1, 1, 0, P1),
    (20, "1g.12gb+me", 1, "10.75", 16, 1, 0, 1, 1, 1, P1),
    (15, "1g.24gb", 4, "21.62", 26, 1, 0, 1, 1, 0, PREV2),
    (14, "2g.24gb", 3, "21.62", 32, 2, 0, 2, 2, 0, P2),
    (9, "3g.47gb", 2, "46.38", 60, 3, 0, 3, 3, 0, P3),
    (5, "4g.47gb", 1, "46.38", 64, 4, 0, 4, 4, 0, P4),
    (0, "7g.94gb", 1, "93.12", 132, 7, 0, 8, 7, 1, P7),
]
H100_96 = [  # §3.7 (GH200, S20); placements not recorded
    (19, "1g.12gb", 7, "11.00", 16, 1, 0, 1, 1, 0, None),
    (20, "1g.12gb+me", 1, "11.00", 16, 1, 0, 1, 1, 1, None),
    (15, "1g.24gb", 4, "23.00", 26, 1, 0, 1, 1, 0, None),
    (14, "2g.24gb", 3, "23.00", 32, 2, 0, 2, 2, 0, None),
    (9, "3g.48gb", 2, "46.50", 60, 3, 0, 3, 3, 0, None),
    (5, "4g.48gb", 1, "46.50", 64, 4, 0, 4, 4, 0, None),
    (0, "7g.96gb", 1, "93.00", 132, 7, 0, 8, 7, 1, None),
]
H200 = [  # the project's own H200 capture, driver 580.159.04 (catalog source H200-dev); §3.8 (S12, an older
    # driver) shows 32.25 / 69.50 / 139.75 GiB for the 35gb, 71gb and 141gb rows
    (19, "1g.18gb", 7, "16.00", 16, 1, 0, 1, 1, 0, "{0,1,2,3,4,5,6}:1"),
    (20, "1g.18gb+me", 1, "16.00", 16, 1, 0, 1, 1, 1, "{0,1,2,3,4,5,6}:1"),
    (15, "1g.35gb", 4, "32.50", 26, 1, 0, 1, 1, 0, "{0,2,4,6}:2"),
    (14, "2g.35gb", 3, "32.50", 32, 2, 0, 2, 2, 0, "{0,2,4}:2"),
    (9, "3g.71gb", 2, "69.75", 60, 3, 0, 3, 3, 0, "{0,4}:4"),
    (5, "4g.71gb", 1, "69.75", 64, 4, 0, 4, 4, 0, "{0}:4"),
    (0, "7g.141gb", 1, "140.00", 132, 7, 0, 8, 7, 1, "{0}:8"),
]
GH200_144_FIRST4 = [  # §3.9 (S13), first four rows only
    (19, "1g.18gb", 7, "17.50", 16, 1, 0, 1, 1, 0, None),
    (20, "1g.18gb+me", 1, "17.50", 16, 1, 0, 1, 1, 1, None),
    (15, "1g.36gb", 4, "35.25", 26, 1, 0, 1, 1, 0, None),
    (14, "2g.36gb", 3, "35.25", 32, 2, 0, 2, 2, 0, None),
]
B200_FIRST4 = [  # §3.10 (S14, Mar 2025 driver), first four rows only
    (19, "1g.23gb", 7, "20.50", 18, 1, 0, 2, 1, 0, None),
    (20, "1g.23gb+me", 1, "20.50", 18, 1, 0, 2, 1, 1, None),
    (15, "1g.45gb", 4, "44.25", 30, 1, 0, 2, 1, 0, None),
    (14, "2g.45gb", 3, "44.25", 36, 2, 0, 4, 2, 0, None),
]
GB200_FIRST4 = [  # §3.11 (S15, Aug 2025 driver), first four rows only
    (19, "1g.23gb", 7, "22.00", 18, 1, 0, 2, 1, 0, None),
    (20, "1g.23gb+me", 1, "22.00", 18, 1, 0, 2, 1, 1, None),
    (15, "1g.47gb", 4, "45.50", 32, 1, 0, 2, 1, 0, None),
    (14, "2g.47gb", 3, "45.50", 38, 2, 0, 4, 2, 0, None),
]
RTX_PRO_6000 = [  # §3.13 (S16), with its exact -lgipp
    (14, "1g.24gb", 4, "23.62", 46, 1, 1, 1, 1, 0, "{0,3,6,9}:3"),
    (21, "1g.24gb+me", 1, "23.62", 46, 1, 1, 1, 1, 1, "{0,3,6,9}:3"),
    (47, "1g.24gb+gfx", 4, "23.62", 46, 1, 1, 1, 1, 0, "{0,3,6,9}:3"),
    (65, "1g.24gb+me.all", 1, "23.62", 46, 4, 4, 1, 4, 1, "{0,3,6,9}:3"),
    (67, "1g.24gb-me", 4, "23.62", 46, 0, 0, 1, 0, 0, "{0,3,6,9}:3"),
    (5, "2g.48gb", 2, "47.38", 94, 2, 2, 2, 2, 0, "{0,6}:6"),
    (35, "2g.48gb+gfx", 2, "47.38", 94, 2, 2, 2, 2, 0, "{0,6}:6"),
    (64, "2g.48gb+me.all", 1, "47.38", 94, 4, 4, 2, 4, 1, "{0,6}:6"),
    (66, "2g.48gb-me", 2, "47.38", 94, 0, 0, 2, 0, 0, "{0,6}:6"),
    (0, "4g.96gb", 1, "95.12", 188, 4, 4, 4, 4, 1, "{0}:12"),
    (32, "4g.96gb+gfx", 1, "95.12", 188, 4, 4, 4, 4, 1, "{0}:12"),
]

# Models whose table above is complete (every -lgip row, in -lgip order).
FULL_TABLES = {
    "A30": A30,
    "A100-40GB": A100_40,
    "A100-80GB": A100_80,
    "H100-80GB": H100_80,
    "H100-PCIE": H100_PCIE,
    "H100-NVL": H100_NVL,
    "H100-96GB": H100_96,
    "H200": H200,
    "RTX-PRO-6000": RTX_PRO_6000,
}
PARTIAL_TABLES = {"GH200-144GB": GH200_144_FIRST4, "B200": B200_FIRST4, "GB200": GB200_FIRST4}

ROWS = [(key, row) for key, table in {**FULL_TABLES, **PARTIAL_TABLES}.items() for row in table]


def lgipp(p) -> str:
    return "{" + ",".join(str(s) for s in p.placement_starts) + "}:" + str(p.placement_size)


def test_every_model_loads():
    models = all_models()
    assert {m.key for m in models} == ALL_KEYS
    assert len(models) == len(ALL_KEYS)
    for m in models:
        assert load_model(m.key) is m
        assert m.gi_profiles, m.key


@pytest.mark.parametrize("key", sorted(FULL_TABLES))
def test_full_table_ids_and_order(key):
    m = load_model(key)
    assert [(p.id, p.name) for p in m.gi_profiles] == [(r[0], r[1]) for r in FULL_TABLES[key]]


@pytest.mark.parametrize("key", sorted(PARTIAL_TABLES))
def test_partial_table_first_rows(key):
    m = load_model(key)
    rows = PARTIAL_TABLES[key]
    assert [(p.id, p.name) for p in m.gi_profiles[: len(rows)]] == [(r[0], r[1]) for r in rows]
    assert len(m.gi_profiles) == 7


@pytest.mark.parametrize(("key", "row"), ROWS, ids=[f"{k}-{r[1]}" for k, r in ROWS])
def test_profile_row_matches_real_lgip(key, row):
    pid, name, max_inst, gib, sm, dec, enc, ce, jpeg, ofa, placements = row
    p = load_model(key).profile(pid)
    assert p is not None
    assert p.name == name
    assert p.max_instances == max_inst
    assert "%.2f" % (p.memory_mib / 1024) == gib
    assert (p.sms, p.dec, p.enc, p.ce, p.jpeg, p.ofa) == (sm, dec, enc, ce, jpeg, ofa)
    if placements is not None:
        assert lgipp(p) == placements


def test_rtx_pro_6000_lgipp_exact():
    m = load_model("RTX-PRO-6000")
    lines = [
        f"GPU  0 Profile ID {p.id:2d} Placement{'s:' if len(p.placement_starts) > 1 else ' :'} {lgipp(p)}"
        for p in m.gi_profiles
    ]
    assert lines == [
        "GPU  0 Profile ID 14 Placements: {0,3,6,9}:3",
        "GPU  0 Profile ID 21 Placements: {0,3,6,9}:3",
        "GPU  0 Profile ID 47 Placements: {0,3,6,9}:3",
        "GPU  0 Profile ID 65 Placements: {0,3,6,9}:3",
        "GPU  0 Profile ID 67 Placements: {0,3,6,9}:3",
        "GPU  0 Profile ID  5 Placements: {0,6}:6",
        "GPU  0 Profile ID 35 Placements: {0,6}:6",
        "GPU  0 Profile ID 64 Placements: {0,6}:6",
        "GPU  0 Profile ID 66 Placements: {0,6}:6",
        "GPU  0 Profile ID  0 Placement : {0}:12",
        "GPU  0 Profile ID 32 Placement : {0}:12",
    ]
    assert (m.memory_slices, m.compute_slices, m.memory_mib, m.sms) == (12, 4, 97887, 188)


@pytest.mark.parametrize("key", EIGHT_SLICE)
def test_eight_slice_grid_and_canonical_placements(key):
    m = load_model(key)
    assert (m.memory_slices, m.compute_slices) == (8, 7)
    expected = {19: P1, 20: P1, 15: PREV2, 14: P2, 9: P3, 5: P4, 0: P7}
    assert {p.id: lgipp(p) for p in m.gi_profiles} == expected
    assert [p.index_name for p in m.gi_profiles] == [
        "1_SLICE",
        "1_SLICE_REV1",
        "1_SLICE_REV2",
        "2_SLICE",
        "3_SLICE",
        "4_SLICE",
        "7_SLICE",
    ]
    assert [p.max_instances for p in m.gi_profiles] == [7, 1, 4, 3, 2, 1, 1]


def test_h100_nvl_names():
    m = load_model("H100-NVL")
    assert [p.name for p in m.gi_profiles] == [
        "1g.12gb",
        "1g.12gb+me",
        "1g.24gb",
        "2g.24gb",
        "3g.47gb",
        "4g.47gb",
        "7g.94gb",
    ]
    assert m.memory_mib == 95830
    assert [p.memory_mib for p in m.gi_profiles if p.id in (19, 15, 9)] == [11008, 22144, 47488]


def test_names_of_models_without_full_real_table():
    # names from real lgip rows plus mig-parted config-default (S6) for the rest
    assert [p.name for p in load_model("GH200-144GB").gi_profiles] == [
        "1g.18gb",
        "1g.18gb+me",
        "1g.36gb",
        "2g.36gb",
        "3g.72gb",
        "4g.72gb",
        "7g.144gb",
    ]
    assert [p.name for p in load_model("B200").gi_profiles] == [
        "1g.23gb",
        "1g.23gb+me",
        "1g.45gb",
        "2g.45gb",
        "3g.90gb",
        "4g.90gb",
        "7g.180gb",
    ]
    assert [p.name for p in load_model("GB200").gi_profiles] == [
        "1g.23gb",
        "1g.23gb+me",
        "1g.47gb",
        "2g.47gb",
        "3g.93gb",
        "4g.93gb",
        "7g.186gb",
    ]


def test_go_nvlib_naming_checks_from_reference():
    # mig-hardware §2.3 "Checks"
    assert memory_size_gb(81559, 81559) == 80
    assert profile_name(1, 9984, 81559) == "1g.10gb"
    assert profile_name(1, 20096, 81559) == "1g.20gb"
    assert profile_name(3, 40448, 81559) == "3g.40gb"
    assert memory_size_gb(95830, 95830) == 94
    assert profile_name(1, 11008, 95830) == "1g.12gb"
    assert profile_name(3, 47488, 95830) == "3g.47gb"
    assert memory_size_gb(97887, 97887) == 96
    assert profile_name(1, 24192, 97887) == "1g.24gb"
    assert profile_name(1, 5952, 24576) == "1g.6gb"
    assert profile_name(3, 40192, 81920, ci_slices=1) == "1c.3g.40gb"


def test_every_name_reproduces_the_rule():
    for m in all_models():
        for p in m.gi_profiles:
            assert profile_name(p.slices, p.memory_mib, m.memory_mib, p.suffix) == p.name, (m.key, p.name)
            for v in p.variants:
                if v.memory_mib is not None:
                    # a driver variant must not change the profile's name
                    assert profile_name(p.slices, v.memory_mib, m.memory_mib, p.suffix) == p.name, (
                        m.key,
                        p.name,
                    )
            for ci in p.ci_profiles:
                assert ci.name == profile_name(
                    p.slices, p.memory_mib, m.memory_mib, p.suffix, ci_slices=ci.slices
                )


def test_every_value_has_a_source():
    for m in all_models():
        assert m.sources and all(str(v).strip() for v in m.sources.values()), m.key
        assert m.name and m.architecture
        for p in m.gi_profiles:
            assert p.source.strip(), (m.key, p.name)
            for ci in p.ci_profiles:
                assert ci.source.strip(), (m.key, p.name, ci.name)


def test_unconfirmed_entries_name_real_fields():
    model_fields = {"name", "memory_mib", "sms", "power_cap_w", "bar1_mib", "pci_device_ids", "aliases"}
    gi_fields = {
        "id",
        "memory_mib",
        "sms",
        "ce",
        "dec",
        "enc",
        "jpeg",
        "ofa",
        "max_instances",
        "placements",
        "min_driver",
    }
    ci_fields = {"id", "sms", "max_instances", "placements"}
    for m in all_models():
        assert m.unconfirmed <= model_fields, (m.key, m.unconfirmed)
        for p in m.gi_profiles:
            assert p.unconfirmed <= gi_fields, (m.key, p.name, p.unconfirmed)
            for ci in p.ci_profiles:
                assert ci.unconfirmed <= ci_fields, (m.key, p.name, ci.name)


def test_filled_values_are_marked_unconfirmed():
    gh = load_model("GH200-144GB")
    for pid in (9, 5, 0):
        assert {"id", "memory_mib", "sms"} <= gh.profile(pid).unconfirmed
    for key in ("B200", "GB200"):
        m = load_model(key)
        for pid in (9, 5, 0):
            assert {"memory_mib", "sms"} <= m.profile(pid).unconfirmed, key
        for pid in (19, 20, 15, 14):
            assert "memory_mib" not in m.profile(pid).unconfirmed
    assert not any("placements" in p.unconfirmed for p in load_model("H200").gi_profiles)  # H200-dev -lgipp
    for key in ("H100-96GB", "H100-PCIE", "B200", "GB200", "GH200-144GB"):
        assert all("placements" in p.unconfirmed for p in load_model(key).gi_profiles), key
    for key in ("H100-96GB", "GH200-144GB", "B200", "GB200"):
        assert "memory_mib" in load_model(key).unconfirmed, key
    # totals measured on real hardware are not marked (H200: nvidia-smi tables with MIG disabled)
    for key in ("A100-80GB", "H100-NVL", "H100-PCIE", "RTX-PRO-6000", "H200"):
        assert "memory_mib" not in load_model(key).unconfirmed, key
    assert load_model("H200").memory_mib == 143771


PCI = {  # mig-hardware §8
    "A100-40GB": [0x20B0, 0x20B1, 0x20F6],
    "A100-40GB-PCIE": [0x20F1],
    "A100-80GB": [0x20B2, 0x20F3, 0x20F5],
    "A100-80GB-PCIE": [0x20B5],
    "A30": [0x20B7],
    "H100-80GB": [0x2330, 0x2331, 0x2322, 0x2324],
    "H100-NVL": [0x2321, 0x233A],
    "H100-96GB": [0x2342, 0x233D],
    "H200": [0x2335, 0x233B],
    "GH200-144GB": [0x2348],
    "B200": [0x2901],
    "GB200": [0x2941],
    "RTX-PRO-6000": [0x2BB5],
}


@pytest.mark.parametrize("key", sorted(PCI))
def test_pci_ids(key):
    m = load_model(key)
    assert sorted(m.pci_device_ids) == sorted(PCI[key])
    for dev in PCI[key]:
        assert model_by_pci_id(dev) is m
        assert model_by_pci_id((dev << 16) | 0x10DE) is m


def test_pci_index_agrees_with_the_parsed_files_and_spares_parsing_the_others(monkeypatch):
    from importlib import resources

    from migctl.catalog import loader

    root = resources.files("migctl.catalog") / "data"
    for f in loader._data_files():
        ids = loader.pci_ids_in_text((root / f).read_text(encoding="utf-8"))
        assert ids == loader._load_file(f).pci_device_ids, f
    assert loader.pci_ids_in_text("key: X\npci_device_ids: [0x20B5, 8373]  # src\n") == (0x20B5, 8373)
    for odd in ("pci_device_ids:\n  - 0x20B5\n", "pci_device_ids: [0x20B5]\npci_device_ids: [1]\n",
                "pci_device_ids: [zz]\n"):
        assert loader.pci_ids_in_text(odd) is None  # such a file would be parsed in full
    parsed: list[str] = []
    real = loader._load_file

    def spy(f: str):
        parsed.append(f)
        return real(f)

    monkeypatch.setattr(loader, "_load_file", spy)
    m = model_by_pci_id(0x2335)
    assert m is not None and m.key == "H200"
    assert parsed == ["h200.yaml"]  # the other files were not parsed


def test_pci_ids_not_from_go_nvml_mocks():
    # §8/§10: the go-nvml mocks use H200 0x2333 and B200 0x2B00; neither is real
    assert model_by_pci_id(0x2333) is None
    assert model_by_pci_id(0x2B00) is None
    assert load_model("H200").pci_device_id_full == 0x233510DE
    assert load_model("B200").pci_device_id_full == 0x290110DE


@pytest.mark.parametrize(
    ("key", "pid"),
    [
        ("H100-80GB", 15),
        ("H100-PCIE", 15),
        ("H100-NVL", 15),
        ("H100-96GB", 15),
        ("H200", 15),
        ("GH200-144GB", 15),
        ("B200", 15),
        ("GB200", 15),
    ],
)
def test_rev2_default_ci_is_7(key, pid):
    p = load_model(key).profile(pid)
    assert p.index_name == "1_SLICE_REV2"
    assert p.placement_size == 2
    assert p.default_ci.id == 7
    assert p.default_ci.slices == 1
    assert p.default_ci.sms == p.sms


def test_plain_1g_default_ci_is_0():
    for m in all_models():
        for p in m.gi_profiles:
            if p.index_name == "1_SLICE":
                assert p.default_ci.id == 0, (m.key, p.name)


def test_a100_3g20gb_ci_split():
    p = load_model("A100-40GB").profile("3g.20gb")
    got = [(ci.name, ci.id, ci.max_instances, ci.sms, ci.is_default) for ci in p.ci_profiles]
    assert got == [
        ("1c.3g.20gb", 0, 3, 14, False),
        ("2c.3g.20gb", 1, 1, 28, False),
        ("3g.20gb", 2, 1, 42, True),
    ]
    assert all(not ci.unconfirmed or ci.unconfirmed == {"placements"} for ci in p.ci_profiles)


def test_a100_other_real_ci_profiles():
    a40 = load_model("A100-40GB")
    assert [(ci.name, ci.id, ci.max_instances, ci.sms) for ci in a40.profile("4g.20gb").ci_profiles] == [
        ("1c.4g.20gb", 0, 4, 14),
        ("2c.4g.20gb", 1, 2, 28),
        ("4g.20gb", 3, 1, 56),
    ]
    assert a40.profile("4g.20gb").default_ci.id == 3
    assert [(ci.name, ci.id, ci.max_instances, ci.sms) for ci in a40.profile("2g.10gb").ci_profiles] == [
        ("1c.2g.10gb", 0, 2, 14),
        ("2g.10gb", 1, 1, 28),
    ]
    assert a40.profile("2g.10gb").default_ci.id == 1
    four_c = a40.profile("7g.40gb").ci_profile(3)
    assert (four_c.name, four_c.sms) == ("4c.7g.40gb", 56)
    assert a40.profile("7g.40gb").default_ci.id == 4
    a80 = load_model("A100-80GB")
    assert [(ci.name, ci.id, ci.max_instances, ci.sms) for ci in a80.profile("3g.40gb").ci_profiles] == [
        ("1c.3g.40gb", 0, 3, 14),
        ("2c.3g.40gb", 1, 1, 28),
        ("3g.40gb", 2, 1, 42),
    ]
    assert a80.profile("4g.40gb").default_ci.placements[0].size == 4


def test_a30_and_rtx_real_ci_profiles():
    a30 = load_model("A30").profile("2g.12gb")
    assert [(ci.name, ci.id, ci.max_instances, ci.sms, ci.is_default) for ci in a30.ci_profiles] == [
        ("1c.2g.12gb", 0, 2, 14, False),
        ("2g.12gb", 1, 1, 28, True),
    ]
    rtx = load_model("RTX-PRO-6000")
    assert rtx.profile("1g.24gb").default_ci.id == 0
    assert rtx.profile("2g.48gb").default_ci.id == 1


def test_driver_history():
    a40 = load_model("A100-40GB")
    assert a40.profile("1g.10gb").min_driver == (525, 0, 0)
    assert a40.profile("1g.5gb+me").min_driver == (470, 0, 0)
    assert a40.profile("1g.10gb", driver=(470, 57, 2)) is None
    assert [p.name for p in a40.profiles_on((520, 61, 5))] == [
        "1g.5gb",
        "1g.5gb+me",
        "2g.10gb",
        "3g.20gb",
        "4g.20gb",
        "7g.40gb",
    ]
    a80 = load_model("A100-80GB")
    old = parse_driver("515.86.01")
    new = parse_driver("580.65.06")
    r550 = parse_driver("550.54.14")  # capture a100-80gb-sxm-r550-cn-notes: 9.50 / 39.25 / 78.75 GiB
    assert ["%.2f" % (p.memory_on(r550) / 1024) for p in a80.profiles_on(r550)] == [
        "9.50", "9.50", "19.50", "19.50", "39.25", "39.25", "78.75"]
    assert "1g.20gb" not in [p.name for p in a80.profiles_on(old)]  # absent from the real driver-515 lgip
    assert "%.2f" % (a80.profile("1g.10gb").memory_on(old) / 1024) == "9.50"
    assert "%.2f" % (a80.profile("1g.10gb").memory_on(new) / 1024) == "9.75"
    assert "%.2f" % (a80.profile("7g.80gb").memory_on(old) / 1024) == "79.00"
    assert "%.2f" % (a80.profile("7g.80gb").memory_on(new) / 1024) == "79.25"
    assert a80.profile("3g.40gb").memory_on(old) == 40192  # real MIG device on driver 515
    b200 = load_model("B200")
    assert b200.profile("4g.90gb").min_driver is not None
    assert b200.profile("3g.90gb").min_driver is None


def test_real_mig_device_memory():
    # mig-hardware §0.6 / §3.x: MIG device MiB recorded from real nvidia-smi
    assert load_model("A30").profile("1g.6gb").memory_mib == 5952
    assert load_model("A30").profile("2g.12gb").memory_mib == 11968
    assert load_model("H100-PCIE").profile("1g.10gb").memory_mib == 9984
    assert load_model("H100-80GB").profile("3g.40gb").memory_mib == 40448
    assert load_model("B200").profile("1g.23gb").memory_mib == 20992
    assert load_model("RTX-PRO-6000").profile("1g.24gb").memory_mib == 24192


def test_model_names_and_aliases():
    assert load_model("H100-PCIE").name == "NVIDIA H100 PCIe"
    assert load_model("H100-NVL").name == "NVIDIA H100 NVL"
    assert load_model("H200").name == "NVIDIA H200"
    assert load_model("RTX-PRO-6000").name == "NVIDIA RTX PRO 6000 Blackwell Server Edition"
    assert load_model("A100-40GB").name == "NVIDIA A100-SXM4-40GB"
    assert load_model("GH200").key == "H100-96GB"
    assert load_model("gh200-96gb").key == "H100-96GB"
    assert load_model("GH200-144GB").key == "GH200-144GB"
    assert load_model("A800-40GB").key == "A100-40GB"
    assert load_model("A800-80GB").key == "A100-80GB"
    assert load_model("H800-NVL").key == "H100-NVL"


def test_sms_totals():
    expected = {
        "A100-40GB": 108,
        "A100-80GB": 108,
        "H100-PCIE": 114,
        "H100-NVL": 132,
        "H100-96GB": 132,
        "H200": 132,
        "B200": 148,
    }
    for key, sms in expected.items():
        assert load_model(key).sms == sms, key
    for key in ("A100-40GB", "A100-80GB"):
        assert load_model(key).profile(0).sms == 98  # MIG uses at most 7 x 14


def _mig_parted_config() -> dict:
    path = Path(__file__).resolve().parent / "fixtures" / "compat" / "mig-parted" / "deployments_systemd_config-default.yaml"
    return yaml.safe_load(path.read_text())


def test_mig_parted_device_filtered_configs_are_valid_for_the_catalog():
    """Every config-default entry with a device-filter names profiles the matching model offers, within max."""
    cfg = _mig_parted_config()
    checked = 0
    for entries in cfg["mig-configs"].values():
        for entry in entries:
            filt = entry.get("device-filter")
            if not filt:
                continue
            for dev in [filt] if isinstance(filt, str) else filt:
                m = model_by_pci_id(int(dev, 16))
                if m is None:
                    continue  # B300, GB300, H20, PG506-96GB: not in the catalog
                for name, count in (entry.get("mig-devices") or {}).items():
                    p = m.profile(name)
                    assert p is not None, (dev, m.key, name)
                    assert count <= p.max_instances, (dev, m.key, name, count)
                    checked += 1
    assert checked >= 40


# B300 and GB300: names, counts and PCI ids from NVIDIA/mig-parted deployments/systemd/config-default.yaml
# @bd7160f (Apache-2.0; copied here as values), minimum drivers from the newer MIG User Guide table.
NAMES_AND_COUNTS = {
    "B300": (0x3182, (580, 82, 7), [("1g.34gb", 7), ("1g.34gb+me", 1), ("1g.67gb", 4), ("2g.67gb", 3),
                                    ("3g.135gb", 2), ("4g.135gb", 1), ("7g.269gb", 1)]),
    "GB300": (0x31C2, (595, 58, 3), [("1g.35gb", 7), ("1g.35gb+me", 1), ("1g.70gb", 4), ("2g.70gb", 3),
                                     ("3g.139gb", 2), ("4g.139gb", 1), ("7g.278gb", 1)]),
}


@pytest.mark.parametrize("key", sorted(NAMES_AND_COUNTS))
def test_b300_gb300_names_counts_and_unconfirmed_marks(key):
    pci, min_driver, rows = NAMES_AND_COUNTS[key]
    m = load_model(key)
    assert m.pci_device_ids == (pci,) and m.min_driver == min_driver
    assert [(p.name, p.max_instances) for p in m.gi_profiles] == rows
    assert model_by_pci_id((pci << 16) | 0x10DE) is m
    for p in m.gi_profiles:  # everything but names and counts is by analogy and must say so
        assert {"id", "memory_mib", "sms", "placements"} <= p.unconfirmed, p.name
