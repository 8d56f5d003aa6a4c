"""nvidia-smi argument syntax."""

from __future__ import annotations

import pytest

from migctl.smi.args import SmiUsageError, parse


def test_mig_subcommand_forms() -> None:
    a = parse(["mig", "-cgi", "MIG 1g.6gb, 14,2g.12gb", "-C", "-i", "0"])
    assert (a.mig_subcommand, a.action, a.profiles, a.default_ci, a.gpu) == (
        True, "cgi", ["MIG 1g.6gb", "14", "2g.12gb"], True, "0")
    a = parse(["mig", "-cci", "-gi", "1,2"])
    assert (a.action, a.profiles, a.gi_ids) == ("cci", [], [1, 2])
    a = parse(["mig", "--destroy-compute-instance", "--compute-instance-id=0,1", "--gpu-instance-id", "1"])
    assert (a.action, a.ci_ids, a.gi_ids) == ("dci", [0, 1], [1])


def test_top_level_forms() -> None:
    a = parse(["-i", "0", "-mig", "1"])
    assert (a.action, a.mig_mode, a.gpu) == ("mig-mode", 1, "0")
    a = parse(["--query-gpu=pci.bus_id,mig.mode.current", "--format=csv,noheader"])
    assert (a.action, a.query_fields, a.csv_format) == ("query", ["pci.bus_id", "mig.mode.current"], ["csv", "noheader"])
    assert parse([]).action is None
    assert parse(["--gpu-reset", "--id=1"]).gpu == "1"


@pytest.mark.parametrize("argv", [
    ["mig"], ["mig", "-lgi", "-lci"], ["-lgip"], ["mig", "-L"], ["-mig"], ["-mig", "x"], ["mig", "-gi", "a", "-lgi"],
    ["--query-gpu=index"], ["mig", "-lgi", "-C"], ["--bogus"],
])
def test_rejected(argv: list[str]) -> None:
    with pytest.raises(SmiUsageError):
        parse(argv)
