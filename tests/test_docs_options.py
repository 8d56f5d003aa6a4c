"""Every option the README and docs/ show next to a `migctl VERB` exists on that verb: a renamed or removed
option cannot stay documented. (`migctl smi ...` takes nvidia-smi's own arguments and is left out.)"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# `migctl` followed by words (the verb path), then the rest of the line up to a closing backtick or the end
_USE = re.compile(r"(?:^|[`\s$(])migctl((?:\s+(?:--sim(?:-state)?[ =]\S+))?(?:\s+[a-z][a-z0-9-]*)+)([^`\n]*)")
_OPT = re.compile(r"(?<![\w-])(--?[a-zA-Z][\w-]*)")


def _docs() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def _uses() -> list[tuple[str, int, list[str], set[str], set[str]]]:
    """(file, line, verb path, options named, options the verb has) for each `migctl VERB` on a line."""
    from migctl.cli.main import _command

    root = _command()
    common = {o for p in root.params for o in (*p.opts, *p.secondary_opts)} | {"--help"}
    out = []
    for f in _docs():
        for n, line in enumerate(f.read_text(encoding="utf-8").splitlines(), 1):
            for m in _USE.finditer(line):
                cmd, path = root, []
                for w in (w for w in m.group(1).split() if not w.startswith("--") and not re.match(r"\d+x", w)):
                    if w not in getattr(cmd, "commands", {}):
                        break
                    cmd, path = cmd.commands[w], [*path, w]
                if not path or path[0] == "smi" or hasattr(cmd, "commands"):
                    continue
                named = set(_OPT.findall((m.group(1) + m.group(2)).split(" -- ")[0]))
                has = common | {o for p in cmd.params for o in (*p.opts, *p.secondary_opts)}
                out.append((f.relative_to(ROOT).as_posix(), n, path, named, has))
    return out


def test_documented_options_exist() -> None:
    uses = _uses()
    assert len(uses) > 100  # the docs show the verbs; a pattern that found none would check nothing
    wrong = [f"{f}:{n}: migctl {' '.join(p)}: {sorted(named - has)}" for f, n, p, named, has in uses if named - has]
    assert wrong == []


def test_the_check_finds_an_option_that_does_not_exist(tmp_path, monkeypatch) -> None:
    """The check itself: a doc naming `migctl gpus --colour` is reported."""
    doc = tmp_path / "docs"
    doc.mkdir()
    (doc / "x.md").write_text("Run `migctl gpus --json --colour red` to see them.\n", encoding="utf-8")
    (tmp_path / "README.md").write_text("`migctl gi create 1g.10gb -i 0 -C`\n", encoding="utf-8")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    found = {(f, tuple(p), frozenset(named - has)) for f, _, p, named, has in _uses()}
    assert found == {("docs/x.md", ("gpus",), frozenset({"--colour"})), ("README.md", ("gi", "create"), frozenset())}
