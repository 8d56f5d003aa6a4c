"""mig-parted hooks v1 files: ``apply-start``, ``pre-apply-mode``, ``pre-apply-config``, ``apply-exit``.

Each hook is a list of ``{command, args, envs, workdir}``; every ``MIG_PARTED_*`` setting of the apply is
passed in the environment (as mig-parted does). A non-zero exit aborts the apply; ``apply-exit`` always
runs (its own failure is reported but cannot undo a finished apply).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from migctl.config.loader import ConfigError, parse_yaml, pydantic_message, read_text


class HookError(RuntimeError):
    """A hook exited non-zero (or could not be started)."""


@dataclass
class Hooks:
    """A loaded hooks file."""

    file: str
    hooks: dict[str, list[Any]]

    def run(self, name: str, env: dict[str, str], timeout: float | None = 600) -> None:
        """Run every command of hook ``name`` in order; raise HookError on the first failure.

        A hook's output goes to an unnamed private temporary file and only its last line is read back, for
        the error (:func:`migctl.proc.run_to_file`). With pipes, a hook that left a process in the background
        held the apply until that process exited, or failed it at the time limit although the hook had exited
        0, and a chatty hook's output was all kept in memory."""
        from migctl.proc import run_or_raise

        for i, h in enumerate(self.hooks.get(name, [])):
            run_or_raise([h.command, *h.args], timeout, f"hook {name}[{i}] ({h.command})", HookError,
                         cwd=h.workdir or None, env={**os.environ, **env, **h.envs})


def load_hooks(source: str | Path | dict[str, Any] | Hooks | None) -> Hooks | None:
    """Load a hooks v1 file (path or dict); None stays None."""
    if source is None or isinstance(source, Hooks):
        return source
    from pydantic import ValidationError

    from migctl.config.schema import HooksFile

    if isinstance(source, dict):
        import yaml

        doc = parse_yaml(yaml.safe_dump(source, sort_keys=False), "<hooks>", unwrap=False)
    else:
        doc = parse_yaml(read_text(source), str(source), unwrap=False)
    if not isinstance(doc.data, dict):
        raise ConfigError(f"{doc.where(())}: expected a mapping with version and hooks")
    try:
        model = HooksFile.model_validate(doc.data)
    except ValidationError as e:
        raise ConfigError(pydantic_message(doc, e.errors()[0], "hooks")) from None
    return Hooks(doc.file, {k: list(v) for k, v in model.hooks.items()})
