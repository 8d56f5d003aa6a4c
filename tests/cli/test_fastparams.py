"""migctl.cli.fastparams: plain values are coerced without pydantic, exactly as typer's own adapter does."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from migctl.cli import fastparams

assert fastparams.install()
from typer import _coercion, core  # noqa: E402  (after install: core.build_runtime_param is the wrapper)
from typer.models import OptionInfo  # noqa: E402

ANNOTATIONS: list[Any] = [bool, str, int, float, list[str]]


def _outcome(rp: Any, value: Any) -> tuple[str, str, str]:
    try:
        r = rp._coerce_value(value, param=None, ctx=None)
    except Exception as e:  # noqa: BLE001  (the error's type and text are what is compared)
        return ("error", type(e).__name__, str(e))
    if isinstance(r, float) and math.isnan(r):
        return ("value", "float", "nan")
    return ("value", type(r).__name__, repr(r))


def _both(annotation: Any, value: Any) -> tuple[tuple[str, str, str], tuple[str, str, str]]:
    d = _coercion.resolve_type_descriptor(annotation, OptionInfo())
    typer_own = _coercion.build_runtime_param(d)  # the module's function, which install() leaves alone
    ours = core.build_runtime_param(d)
    assert getattr(core.build_runtime_param, "migctl_fast", False)
    return _outcome(typer_own, value), _outcome(ours, value)


NUMBERISH = st.text(alphabet="0123456789-+._ eEinfa", max_size=24)
VALUES = st.one_of(NUMBERISH, st.text(max_size=12), st.integers(), st.floats(allow_nan=False), st.booleans(),
                   st.lists(st.one_of(st.text(max_size=5), st.integers()), max_size=3))


@settings(max_examples=300, deadline=None)
@given(value=VALUES, annotation=st.sampled_from(ANNOTATIONS))
def test_every_value_coerces_as_typers_adapter_does(value: Any, annotation: Any) -> None:
    ours, typer_own = _both(annotation, value)
    assert ours == typer_own, (annotation, value)


def test_plain_forms_and_edges() -> None:
    cases = {int: ["5", "-3", "0", "-0", "007", "+4", " 5", "1_000", "5.0", "abc", "", "9" * 19, "9" * 5000, "٣"],
             float: ["1", "1.5", "-0.25", "-0", "1e3", ".5", "nan", "inf", " 2", "1.", "0.1234567890123456789"],
             bool: ["yes", "0", "x", ""], str: ["a", ""], list[str]: [["a", "b"], ("a",), []]}
    for annotation, values in cases.items():
        for value in values:
            ours, typer_own = _both(annotation, value)
            assert ours == typer_own, (annotation, value)
    # the plain forms are answered here, the others are not
    assert fastparams.plain(int, "-12") == -12 and fastparams.plain(int, "007") is fastparams.MISS
    assert fastparams.plain(float, "0.5") == 0.5 and fastparams.plain(float, "1e3") is fastparams.MISS
    assert fastparams.plain(int, "٣") is fastparams.MISS  # a non-ASCII digit goes to typer


def test_a_listing_does_not_import_pydantic(tmp_path: Any) -> None:
    env = {**os.environ, "MIGCTL_STATE_DIR": str(tmp_path), "MIGCTL_SIM": "1xA30"}
    code = ("import sys\nfrom migctl.cli.main import main\ntry:\n    main(['gpus'])\nexcept SystemExit:\n    pass\n"
            "print('pydantic loaded' if 'pydantic' in sys.modules else 'pydantic not loaded')\n")
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "NVIDIA A30" in r.stdout and r.stdout.rstrip().endswith("pydantic not loaded"), r.stdout
