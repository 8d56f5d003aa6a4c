"""Declarative configs: mig-parted v1 files (plus migctl's ``placements``), hooks files, generated configs.

Heavy dependencies (pydantic, yaml) are imported lazily, on first load.
"""

from migctl.config.hooks import HookError, Hooks, load_hooks
from migctl.config.loader import ConfigError, YamlDoc, parse_yaml
from migctl.config.parted import (
    Desired,
    Entry,
    MigConfig,
    WantCI,
    WantGI,
    load_config,
    resolve_key,
    split_profile,
)

__all__ = [
    "ConfigError",
    "Desired",
    "Entry",
    "HookError",
    "Hooks",
    "MigConfig",
    "WantCI",
    "WantGI",
    "YamlDoc",
    "load_config",
    "load_hooks",
    "parse_yaml",
    "resolve_key",
    "split_profile",
]
