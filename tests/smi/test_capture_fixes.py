"""The differences between migctl smi and real captures that issue 8 lists, each pinned by a test.

Most are also covered by the capture replay (tests/fixtures/captures); these tests name the rule directly.
"""

from __future__ import annotations

import re
from typing import Any


def _bar1_totals(output: str) -> list[int]:
    """BAR1 totals of the MIG devices table (second line of each GI's first row)."""
    return [int(m.group(1)) for m in re.finditer(r"^\|\s{18}\|\s+0MiB /\s+(\d+)MiB", output, re.M)]


def test_mig_device_bar1_scales_with_memory_slices(smi_cli: Any) -> None:
    # A30 (4 memory slices, 32768 MiB BAR1): 2-slice GI 16383, 1-slice GI 8191 (capture a30-r535-vn-notes)
    spec = "1xA30@535.183.01"
    assert smi_cli(spec, "-mig", "1")[0] == 0
    assert smi_cli(spec, "mig", "-cgi", "5,14", "-C")[0] == 0
    code, out = smi_cli(spec)
    assert code == 0
    assert _bar1_totals(out) == [16383, 8191]
    # H100 NVL (8 memory slices, 131072 MiB): 4-, 2- and 1-slice GIs (capture h100-nvl-r560-azure)
    spec = "1xH100-NVL@560.35.03"
    assert smi_cli(spec, "-mig", "1")[0] == 0
    assert smi_cli(spec, "mig", "-cgi", "9,15,19", "-C")[0] == 0
    code, out = smi_cli(spec)
    assert code == 0
    assert sorted(_bar1_totals(out)) == [16383, 32767, 65535]


def test_destroy_in_lgi_order(smi_cli: Any) -> None:
    """-dci / -dgi go in -lgi order (profile order, then GI ID), not by ascending GI ID."""
    spec = "1xH100-80GB@550.54.15"
    assert smi_cli(spec, "-mig", "1")[0] == 0
    code, out = smi_cli(spec, "mig", "-cgi", "19,9", "-C")
    assert code == 0, out
    code, lgi = smi_cli(spec, "mig", "-lgi")
    order = [int(m.group(1)) for m in re.finditer(r"^\|\s+0\s+MIG \S+\s+\d+\s+(\d+)\s", lgi, re.M)]
    assert order == [13, 1]  # 1g.10gb (profile 19, listed first by -lgip) before 3g.40gb
    code, out = smi_cli(spec, "mig", "-dci")
    assert code == 0
    assert [int(x) for x in re.findall(r"GPU instance ID +(\d+)$", out, re.M)] == order
    code, out = smi_cli(spec, "mig", "-dgi")
    assert code == 0
    assert out.splitlines() == [f"Successfully destroyed GPU instance ID {g:2d} from GPU  0" for g in order]


def test_persistence_mode_and_mig_warning(smi_cli: Any) -> None:
    spec = "1xH100-PCIE@570.169"
    code, out = smi_cli(spec, "-pm", "1")
    assert code == 0
    assert re.fullmatch(r"Persistence mode is already Enabled for GPU \S+\.\nAll done\.\n", out)  # GH200 capture
    code, out = smi_cli(spec, "-pm", "0")
    assert code == 0
    assert re.fullmatch(r"Disabled persistence mode for GPU \S+\.\nAll done\.\n", out)
    code, out = smi_cli(spec, "-i", "0", "-mig", "1")
    lines = out.splitlines()
    assert code == 0
    assert lines[0].startswith("Enabled MIG Mode for GPU ") and lines[1] == "" and lines[-1] == "All done."
    assert lines[2].startswith("Warning: persistence mode is disabled on device ")
    code, out = smi_cli(spec, "-i", "0")
    assert re.search(r"^\|   0  NVIDIA H100 PCIe +Off \|", out, re.M), out
    assert smi_cli(spec, "-pm", "ENABLED")[0] == 0
    code, out = smi_cli(spec, "-i", "0", "-mig", "0")
    assert out.splitlines()[1] == "All done."  # no warning with persistence mode on
    assert smi_cli(spec, "-pm", "2")[0] == 2


def test_lgip_memory_depends_on_driver_branch(smi_cli: Any) -> None:
    """H100 on R525 shows 9.62 / 19.50 / 39.25 / 79.00 GiB; later drivers 9.75 / 19.62 / 39.50 / 79.25."""
    shown = {}
    for driver in ("525.85.12", "550.54.15"):
        spec = f"1xH100-80GB@{driver}"
        assert smi_cli(spec, "-mig", "1")[0] == 0
        code, out = smi_cli(spec, "mig", "-lgip")
        assert code == 0
        shown[driver] = re.findall(r"\d+/\d+\s+(\d+\.\d\d)\s", out)
    assert shown["525.85.12"] == ["9.62", "9.62", "19.50", "19.50", "39.25", "39.25", "79.00"]
    assert shown["550.54.15"] == ["9.75", "9.75", "19.62", "19.62", "39.50", "39.50", "79.25"]


def test_h100_2g_gi_offers_ci_profile_7(smi_cli: Any) -> None:
    spec = "1xH100-80GB"
    assert smi_cli(spec, "-mig", "1")[0] == 0
    assert smi_cli(spec, "mig", "-cgi", "14")[0] == 0
    code, out = smi_cli(spec, "mig", "-lcip")
    assert code == 0
    rows = re.findall(r"^\|\s+0\s+\d+\s+MIG (\S+)\s+(\d+)(\*?)\s+(\d+/\d+)\s+(\d+)", out, re.M)
    assert ("1c.2g.20gb", "7", "", "1/1", "26") in rows
    assert ("2g.20gb", "1", "*", "1/1", "32") in rows
    code, out = smi_cli(spec, "mig", "-cci", "7")
    assert code == 0 and "using profile MIG 1c.2g.20gb (ID  7)" in out


def test_a100_pcie_boards_are_their_own_models(smi_cli: Any) -> None:
    code, out = smi_cli("1xA100-PCIE-40GB@535.183.01", "-L")
    assert code == 0 and out.startswith("GPU 0: NVIDIA A100-PCIE-40GB (UUID: GPU-")
    code, out = smi_cli("1xA100-PCIE-40GB@535.183.01")
    assert re.search(r"\d+W / 250W \|\s+\d+MiB / 40960MiB \|", out), out
    code, out = smi_cli("1xA100-80GB-PCIE@515.86.01")
    assert "|   0  NVIDIA A100 80G...   On  |" in out  # the 79-column table cuts the name at 18 characters
    assert re.search(r"\d+W / 300W \|\s+\d+MiB / 81920MiB \|", out), out
