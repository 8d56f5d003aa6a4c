"""pydantic v2 models of the mig-parted v1 config and hooks files (imported lazily by the loader).

Extra fields are forbidden, as mig-parted rejects them; the one addition is migctl's optional per-entry
``placements`` (profile key -> list of start memory slices, one per instance).
"""

from __future__ import annotations

from typing import Literal, Union

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr

ENTRY_FIELDS = ("devices", "device-filter", "mig-enabled", "mig-devices", "placements")
TOP_FIELDS = ("version", "mig-configs")
HOOK_NAMES = ("apply-start", "pre-apply-mode", "pre-apply-config", "apply-exit")
HOOK_FIELDS = ("command", "args", "envs", "workdir")


class DeviceEntry(BaseModel):
    """One element of a ``mig-configs.<label>`` list."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)

    devices: Union[Literal["all"], list[StrictInt]]  # noqa: UP007
    device_filter: Union[StrictStr, list[StrictStr], None] = Field(default=None, alias="device-filter")  # noqa: UP007
    mig_enabled: StrictBool = Field(alias="mig-enabled")
    mig_devices: Union[dict[StrictStr, StrictInt], None] = Field(default=None, alias="mig-devices")  # noqa: UP007
    placements: Union[dict[StrictStr, list[StrictInt]], None] = None  # noqa: UP007


class ConfigFile(BaseModel):
    """A whole mig-parted v1 config file."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)

    version: Literal["v1"]
    mig_configs: dict[StrictStr, list[DeviceEntry]] = Field(alias="mig-configs")


class Hook(BaseModel):
    """One hook command (mig-parted hooks v1)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    command: StrictStr
    args: list[StrictStr] = Field(default_factory=list)
    envs: dict[StrictStr, StrictStr] = Field(default_factory=dict)
    workdir: Union[StrictStr, None] = None  # noqa: UP007


class HooksFile(BaseModel):
    """A mig-parted hooks v1 file."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)

    version: Literal["v1"]
    hooks: dict[Literal["apply-start", "pre-apply-mode", "pre-apply-config", "apply-exit"], list[Hook]] = Field(
        default_factory=dict
    )
