"""Config loading: every compat file, errors with FILE:LINE and valid choices, placements, hooks, fuzz."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest

from migctl.catalog import all_models
from migctl.config import ConfigError, load_config, load_hooks
from migctl.config.parted import resolve_key

from .helpers import COMPAT

CONFIG_FILES = sorted(p for p in COMPAT.glob("*.yaml") if "hooks" not in p.name)
HOOK_FILES = sorted(COMPAT.glob("*hooks*.yaml"))


def test_compat_fixtures_present() -> None:
    assert len(CONFIG_FILES) == 6 and len(HOOK_FILES) == 2


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: p.name)
def test_every_compat_config_loads(path) -> None:
    cfg = load_config(path)
    assert "all-disabled" in cfg.labels or "all-disabled-dgx-station-80" in cfg.labels
    assert all(e for e in cfg.entries.values())


@pytest.mark.parametrize("path", HOOK_FILES, ids=lambda p: p.name)
def test_every_compat_hooks_file_loads(path) -> None:
    hooks = load_hooks(path)
    assert "apply-start" in hooks.hooks


def _targets(entry) -> list:
    """Catalog models an entry targets: its filter's models, or every model offering all its profiles."""
    if entry.filters:
        return entry.models()
    keys = list(entry.raw.mig_devices or {})
    return [m for m in all_models() if all(not isinstance(resolve_key(m, k), str) for k in keys)]


@functools.cache
def _loaded(path: Path):
    """Each compat file parsed and validated once (test_every_compat_config_loads covers the loading; the
    apply test below applies the loaded config, as apply does after loading the file)."""
    return load_config(path)


def _cases():
    for path in CONFIG_FILES:
        cfg = _loaded(path)
        for label, entries in cfg.entries.items():
            models = {m.key for e in entries for m in _targets(e)}
            for key in sorted(models):
                yield pytest.param(path, label, key, id=f"{path.stem[:20]}-{label}-{key}")


@pytest.mark.parametrize(("path", "label", "model"), list(_cases()))
def test_every_compat_config_applies_or_is_refused(mknode, path, label, model) -> None:
    """Each config applies on the simulated hardware it targets, or is refused with a clear reason."""
    from migctl.reconcile import apply_config, assert_config

    node, _ = mknode(f"2x{model}")
    cfg = _loaded(path)
    try:
        apply_config(cfg, label, node=node)
    except ConfigError as e:
        msg = str(e)
        assert str(path) in msg and any(s in msg for s in ("does not exist on", "do not fit", "not MIG-capable", "does not have", "matches no GPU")), msg
        return
    assert assert_config(cfg, label, node=node) == []


def write(tmp_path, text: str):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


BASE = "version: v1\nmig-configs:\n  x:\n    - devices: all\n"


@pytest.mark.parametrize(
    ("body", "line", "needle"),
    [
        ("      mig-enabled: true\n      mig-devices:\n        \"1x.11gb\": 7\n", 7, "'1x.11gb' is not a MIG profile name"),
        ("      mig-enabled: true\n      mig-devices:\n        \"\u0661g.10gb\": 1\n", 7,
         "'\u0661g.10gb' is not a MIG profile name"),  # (was: "does not exist on H100-80GB")
        ("      device-filter: \"0x233010DE\"\n      mig-enabled: true\n      mig-devices:\n        \"1g.5gb\": 1\n",
         8, "does not exist on H100-80GB (valid: 1g.10gb"),
        ("      mig-enabled: true\n      color: red\n", 6, "unknown field 'color' (valid: devices, device-filter"),
        ("      mig-enabled: maybe\n", 5, "must be true or false"),
        ("      device-filter: \"0x2330\"\n      mig-enabled: true\n      mig-devices:\n        \"3g.40gb\": 3\n",
         4, "do not fit on one H100-80GB"),
        ("      mig-enabled: true\n      mig-devices: {\"1g.10gb\": 2}\n      placements: {\"1g.10gb\": [0]}\n",
         7, "1 placement(s) for '1g.10gb' but mig-devices asks for 2"),
        ("      device-filter: bogus\n      mig-enabled: false\n", 5, "is not a PCI device id"),
        ("      mig-enabled: true\n      mig-devices:\n        \"1g.10gb\": 1\n        \"1g.10gb\": 2\n", 8, "duplicate key"),
    ],
)
def test_errors_name_file_line_and_valid_choices(tmp_path, body, line, needle) -> None:
    p = write(tmp_path, BASE + body)
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert str(e.value).startswith(f"{p}:{line}:"), str(e.value)
    assert needle in str(e.value)
    assert e.value.exit_code == 2


def test_version_and_top_level(tmp_path) -> None:
    with pytest.raises(ConfigError, match=r":1: unsupported version 'v2' \(valid: v1\)"):
        load_config(write(tmp_path, "version: v2\nmig-configs: {}\n"))
    with pytest.raises(ConfigError, match=r"unknown field 'extra' \(valid: version, mig-configs\)"):
        load_config(write(tmp_path, "version: v1\nmig-configs: {}\nextra: 1\n"))


def test_configmap_lines_are_relative_to_outer_file(tmp_path) -> None:
    text = (
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: m\ndata:\n  config.yaml: |\n"
        "    version: v1\n    mig-configs:\n      a:\n        - devices: all\n          mig-enabled: true\n"
        "          mig-devices: {\"9g.1gb\": 1}\n"
    )
    with pytest.raises(ConfigError, match=r"c.yaml:12: 'g9.1gb' is not a MIG profile name"):
        load_config(write(tmp_path, text.replace("9g.1gb", "g9.1gb")))
    cfg = load_config(write(tmp_path, text))  # valid syntax, no catalog GPU has it: a warning (mig-parted loads it)
    assert any(":12: profile '9g.1gb' is not offered" in w for w in cfg.warnings)


def test_unknown_profile_is_refused_at_apply_with_valid_names(tmp_path, mknode) -> None:
    from migctl.reconcile import apply_config

    from .helpers import layouts

    node, _ = mknode("1xH100-80GB")
    before = layouts(node)
    p = write(tmp_path, BASE + "      mig-enabled: true\n      mig-devices:\n        \"1g.11gb\": 7\n")
    with pytest.raises(ConfigError, match=r"c.yaml:4: GPU 0 \(H100-80GB\): profile '1g.11gb' does not exist on "
                       r"H100-80GB \(valid: 1g.10gb, 1g.10gb\+me"):
        apply_config(p, "x", node=node)
    assert layouts(node) == before


def test_placements_extension_and_ci_split_keys(mknode) -> None:
    from migctl.reconcile import apply_config

    from .helpers import layouts

    node, _ = mknode("1xH100-80GB")
    cfg = {"version": "v1", "mig-configs": {"p": [{
        "devices": [0], "mig-enabled": True, "mig-devices": {"1g.10gb": 2, "1c.3g.40gb": 1},
        "placements": {"1g.10gb": [0, 1], "1c.3g.40gb": [4]}}]}}
    apply_config(cfg, "p", node=node)
    lay = layouts(node)[0]
    assert [(g["profile"], g["start"]) for g in lay["gis"]] == [("1g.10gb", 0), ("1g.10gb", 1), ("3g.40gb", 4)]
    assert lay["gis"][2]["cis"][0]["profile"] == "1c.3g.40gb"


def test_unmatched_gpus_are_left_alone(mknode) -> None:
    from migctl.reconcile import apply_config

    from .helpers import layouts

    node, _ = mknode("2xH100-80GB,1xA30")
    before = layouts(node)
    cfg = load_config(COMPAT / "gpu-operator_default-mig-parted-config.yaml")
    apply_config(cfg, "all-balanced", node=node)  # per-model entries with device-filter
    assert all(lay["mig"] for lay in layouts(node).values())
    one = {"version": "v1", "mig-configs": {"a30": [
        {"device-filter": "0x20B710DE", "devices": "all", "mig-enabled": True, "mig-devices": {"4g.24gb": 1}}]}}
    before = layouts(node)
    apply_config(one, "a30", node=node)
    after = layouts(node)
    assert after[0] == before[0] and after[1] == before[1] and after[2] != before[2]


def test_hooks_errors(tmp_path) -> None:
    p = tmp_path / "h.yaml"
    p.write_text("version: v1\nhooks:\n  before-all:\n    - command: /bin/true\n")
    with pytest.raises(ConfigError, match=r"h.yaml:3: unknown hook 'before-all' \(valid: apply-start"):
        load_hooks(p)


@pytest.mark.parametrize("hook, why", [
    ('command: /bin/sh\n      args: ["-c", "echo a\\0b"]', r"h.yaml:5: hooks.apply-start.0.args must not contain a NUL"),
    ('command: "/bin/\\0sh"', r"h.yaml:4: hooks.apply-start.0.command must not contain a NUL"),
    ('command: ""', r"h.yaml:4: hooks.apply-start.0.command must not be empty"),
    ('command: /bin/true\n      envs: {"A=B": x}', r"h.yaml:5: hooks.apply-start.0.envs 'A=B': a variable's name must"),
    ('command: /bin/true\n      envs: {"": x}', r"h.yaml:5: hooks.apply-start.0.envs '': a variable's name must"),
    ('command: /bin/true\n      envs: {A: "\\0"}', r"h.yaml:5: hooks.apply-start.0.envs 'A': .* its value without NUL"),
    ('command: /bin/true\n      workdir: "/\\0"', r"h.yaml:5: hooks.apply-start.0.workdir must not contain a NUL"),
], ids=["nul-arg", "nul-command", "empty-command", "eq-in-name", "empty-name", "nul-value", "nul-workdir"])
def test_a_hook_exec_cannot_run_is_refused_when_the_file_is_read(tmp_path, hook, why) -> None:
    """These were a ValueError traceback from subprocess at the hook's turn (``migctl apply -k``), or a fatal
    "ValueError: embedded null byte" from the drop-in."""
    p = tmp_path / "h.yaml"
    p.write_text(f"version: v1\nhooks:\n  apply-start:\n    - {hook}\n")
    with pytest.raises(ConfigError, match=why):
        load_hooks(p)
    p.write_text('version: v1\nhooks:\n  apply-start:\n    - command: /bin/true\n      workdir: ""\n')
    assert load_hooks(p) is not None  # an empty workdir is the current directory, as in mig-parted


def test_device_filter_subsystem_suffix_is_compared_with_the_gpu():
    """``device-filter: 0xDDDD10DE:0xSSSSVVVV`` matches only GPUs with that subsystem id."""
    from types import SimpleNamespace

    from migctl.config.parted import load_config

    def entry(flt: str):
        cfg = {"version": "v1", "mig-configs": {"x": [
            {"devices": "all", "device-filter": flt, "mig-enabled": True, "mig-devices": {"1g.10gb": 1}}]}}
        return load_config(cfg).entries_for("x")[0]

    gpu = SimpleNamespace(index=0, pci_device_id=0x233010DE, pci_subsystem_id=0x16C110DE)
    assert entry("0x233010DE").matches(gpu)
    assert entry("0x233010DE:0x16C110DE").matches(gpu)
    assert not entry("0x233010DE:0x17EE10DE").matches(gpu)
    assert not entry("0x20B010DE").matches(gpu)
