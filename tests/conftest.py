"""Suite-wide isolation: every test session gets its own migctl state dir and no inherited sim settings."""

from __future__ import annotations

import os
import tempfile

import pytest


@pytest.fixture(scope="session", autouse=True)
def _isolated_state_dir():
    saved = {k: os.environ.get(k) for k in ("MIGCTL_STATE_DIR", "MIGCTL_SIM", "MIGCTL_SIM_STATE", "MIGCTL_BACKEND")}
    with tempfile.TemporaryDirectory(prefix="migctl-test-") as d:
        os.environ["MIGCTL_STATE_DIR"] = d
        for k in ("MIGCTL_SIM", "MIGCTL_SIM_STATE", "MIGCTL_BACKEND"):
            os.environ.pop(k, None)
        yield d
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
