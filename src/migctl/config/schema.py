"""pydantic v2 models of the mig-parted v1 config and hooks files (imported lazily by the loader).

Extra fields are forbidden, as mig-parted rejects them; the one addition is migctl's optional per-entry
``placements`` (profile key -> list of start memory slices, one per instance).
"""

from __future__ import annotations

from typing import Literal, Union

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationInfo,
    field_validator,
)

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

    # What exec cannot take is refused when the file is read, before the apply starts (it was a ValueError
    # from subprocess at the hook's turn): a NUL anywhere, an empty command, an environment variable's name
    # that is empty or holds '='. An empty workdir is the current directory, as in mig-parted.
    @field_validator("command", "workdir")
    @classmethod
    def _one_word(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v is not None and "\0" in v:
            raise ValueError("must not contain a NUL character")
        if v == "" and info.field_name == "command":
            raise ValueError("must not be empty")
        return v

    @field_validator("args")
    @classmethod
    def _args(cls, v: list[str]) -> list[str]:
        if any("\0" in a for a in v):
            raise ValueError("must not contain a NUL character")
        return v

    @field_validator("envs")
    @classmethod
    def _envs(cls, v: dict[str, str]) -> dict[str, str]:
        for k, x in v.items():
            if not k or "=" in k or "\0" in k or "\0" in x:
                raise ValueError(f"{k!r}: a variable's name must be non-empty without '=' or NUL, its value without NUL")
        return v


class HooksFile(BaseModel):
    """A mig-parted hooks v1 file."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)

    version: Literal["v1"]
    hooks: dict[Literal["apply-start", "pre-apply-mode", "pre-apply-config", "apply-exit"], list[Hook]] = Field(
        default_factory=dict
    )
