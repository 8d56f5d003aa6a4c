"""mig-parted hooks v1 files: ``apply-start``, ``pre-apply-mode``, ``pre-apply-config``, ``apply-exit``.

Each hook is a list of ``{command, args, envs, workdir}``; every ``MIG_PARTED_*`` setting of the apply is
passed in the environment (as mig-parted does). A non-zero exit aborts the apply; ``apply-exit`` always
runs (its own failure is reported but cannot undo a finished apply).
"""

from __future__ import annotations

import os
import subprocess
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

        A hook's output goes to an unnamed private temporary file, and only its last line is read back (for
        the error). With pipes, a hook that left a process in the background (``cmd &``, a daemon it
        started) held the apply until that process exited, even past ``timeout``, and a chatty hook's output
        was all kept in memory."""
        import tempfile

        for i, h in enumerate(self.hooks.get(name, [])):
            full_env = {**os.environ, **env, **h.envs}
            what = f"hook {name}[{i}] ({h.command})"
            with tempfile.TemporaryFile() as out:
                try:
                    proc = subprocess.Popen([h.command, *h.args], cwd=h.workdir or None, env=full_env,
                                            stdin=subprocess.DEVNULL, stdout=out, stderr=out)
                except (OSError, ValueError) as e:
                    raise HookError(f"{what} could not run: {e}") from None
                try:
                    rc = proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                    raise HookError(f"{what} did not finish within {timeout:g} s; killed") from None
                if rc != 0:
                    raise HookError(f"{what} exited {rc}: {_last_line(out)}")


def _last_line(f: Any, tail: int = 4096) -> str:
    """The last non-empty line among the last ``tail`` bytes of ``f``, printable."""
    from migctl.inputs import printable

    size = f.seek(0, os.SEEK_END)
    f.seek(max(0, size - tail))
    lines = [x.strip() for x in f.read().decode("utf-8", "replace").splitlines() if x.strip()]
    return printable(lines[-1]) if lines else ""


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
