"""Table layouts of newer drivers, checked against lines of real transcripts.

Fixture lines come from public transcripts (H100 PCIe on driver 570.169, full-text index idx:52712584324;
an H100 80GB ``-lgi`` from the same driver generation, idx:57375608180); see docs/smi.md.
"""

from __future__ import annotations

import io

import pytest

import migctl.sim as sim
from migctl.catalog import Placement
from migctl.device import open_node
from migctl.smi import render as R
from migctl.smi import run_smi

SUMMARY_570 = [
    "+-----------------------------------------------------------------------------------------+",
    "| NVIDIA-SMI 570.169                Driver Version: 570.169        CUDA Version: 12.8     |",
    "|-----------------------------------------+------------------------+----------------------+",
    "| GPU  Name                 Persistence-M | Bus-Id          Disp.A | Volatile Uncorr. ECC |",
    "| Fan  Temp   Perf          Pwr:Usage/Cap |           Memory-Usage | GPU-Util  Compute M. |",
    "|                                         |                        |               MIG M. |",
    "|=========================================+========================+======================|",
    "|   0  NVIDIA H100 PCIe               Off |   00000000:01:00.0 Off |                   On |",
    "| N/A   40C    P0             54W /  350W |     102MiB /  81559MiB |     N/A      Default |",
    "|                                         |                        |              Enabled |",
    "+-----------------------------------------+------------------------+----------------------+",
]

MIG_DEVICES_570 = [
    "+-----------------------------------------------------------------------------------------+",
    "| MIG devices:                                                                            |",
    "+------------------+----------------------------------+-----------+-----------------------+",
    "| GPU  GI  CI  MIG |                     Memory-Usage |        Vol|        Shared         |",
    "|      ID  ID  Dev |                       BAR1-Usage | SM     Unc| CE ENC  DEC  OFA  JPG |",
    "|                  |                                  |        ECC|                       |",
    "|==================+==================================+===========+=======================|",
    "|  0    7   0   0  |              15MiB /  9984MiB    | 14      0 |  1   0    1    0    1 |",
    "|                  |                 0MiB / 16383MiB  |           |                       |",
    "+------------------+----------------------------------+-----------+-----------------------+",
]

PROCESSES_570 = [
    "+-----------------------------------------------------------------------------------------+",
    "| Processes:                                                                              |",
    "|  GPU   GI   CI              PID   Type   Process name                        GPU Memory |",
    "|        ID   ID                                                               Usage      |",
    "|=========================================================================================|",
    "|  No running processes found                                                             |",
    "+-----------------------------------------------------------------------------------------+",
]

LGI_WIDE = [
    "+---------------------------------------------------------+",
    "| GPU instances:                                          |",
    "| GPU   Name               Profile  Instance   Placement  |",
    "|                            ID       ID       Start:Size |",
    "|=========================================================|",
    "|   0  MIG 2g.20gb           14        3          0:2     |",
    "+---------------------------------------------------------+",
    "|   0  MIG 3g.40gb            9        2          4:4     |",
    "+---------------------------------------------------------+",
]


def test_summary_wide_layout_matches_570() -> None:
    layout = R.layout_for("570.169")
    assert layout.summary_wide and layout.mig_wide
    g = R.GpuSummary(
        index=0, name="NVIDIA H100 PCIe", persistence="Off", bus_id="00000000:01:00.0", display="Off", ecc="On",
        fan="N/A", temp="40C", perf="P0", power="54W", power_cap="350W", mem_used_mib=102, mem_total_mib=81559,
        util="N/A", compute_mode="Default", mig_mode="Enabled",
    )
    lines = R.summary_header("570.169", "12.8", True) + R.summary_gpu(g, True)
    assert lines == SUMMARY_570


def test_mig_devices_and_processes_wide_match_570() -> None:
    row = R.MigDeviceRow(
        gpu=0, gi_id=7, ci_id=0, dev=0, first_in_gi=True, last_in_gi=True, mem_used_mib=15, mem_total_mib=9984,
        bar1_used_mib=0, bar1_total_mib=16383, sms=14, ecc="0", ce=1, enc=0, dec=1, ofa=0, jpeg=1,
    )
    assert R.mig_devices_table([row], True) == MIG_DEVICES_570
    assert R.processes_table([], True) == PROCESSES_570


def test_lgi_wide() -> None:
    rows = [R.GIRow(0, "2g.20gb", 14, 3, Placement(0, 2)), R.GIRow(0, "3g.40gb", 9, 2, Placement(4, 4))]
    assert R.lgi_table(rows, True).splitlines() == LGI_WIDE


@pytest.mark.parametrize(("driver", "summary", "mig"), [
    ("470.57.02", False, False), ("545.23.08", False, False), ("550.127.05", True, False),
    ("565.57.01", True, False), ("570.169", True, True), ("580.65.06", True, True),
])
def test_layout_thresholds(driver: str, summary: bool, mig: bool) -> None:
    layout = R.layout_for(driver)
    assert (layout.summary_wide, layout.mig_wide) == (summary, mig)


@pytest.mark.parametrize(("driver", "old", "mig_header_new", "pid_wide"), [
    ("450.80.02", True, False, False), ("515.86.01", True, False, False), ("535.183.01", False, False, False),
    ("545.23.08", False, False, False), ("550.54.14", False, False, False), ("560.35.03", False, True, False),
    ("570.169", False, True, True), ("610.43.02", False, True, True),
])
def test_layout_thresholds_by_branch(driver: str, old: bool, mig_header_new: bool, pid_wide: bool) -> None:
    """Each pair of neighbouring rows is backed by real captures (tests/fixtures/captures, docs/smi.md)."""
    layout = R.layout_for(driver)
    assert (layout.summary_old, layout.mig_header_new, layout.proc_pid_wide) == (old, mig_header_new, pid_wide)


@pytest.mark.parametrize(("driver", "plus"), [("570.169", False), ("575.64.05", False), ("580.65.05", True),
                                              ("580.159.04", True)])
def test_banner_rule_turns_to_plus_from_580(driver: str, plus: bool) -> None:
    """Public tables of nvidia-smi 575.64.05 and 580.65.05 (docs/smi.md), and our own 580.159.04 capture."""
    assert R.layout_for(driver).banner_plus is plus
    assert R.summary_header(driver, "13.0", True, plus=plus)[2][0] == ("+" if plus else "|")


def test_default_table_on_current_driver_is_wide() -> None:
    """``migctl smi`` on a simulated H100 with the default (current) driver: 91-column tables, widths consistent."""
    sim.install("1xH100-80GB", state_path=None)
    try:
        node = open_node("1xH100-80GB")
        out = io.StringIO()
        for words in (["-mig", "1"], ["mig", "-cgi", "19", "-C"], []):
            out = io.StringIO()
            assert run_smi(node, words, out, clock=lambda: "Thu Jan  1 00:00:00 2026") == 0
        lines = out.getvalue().splitlines()
        assert lines[0] == "Thu Jan  1 00:00:00 2026       "
        assert lines[1:8] == R.summary_header(node.driver_version, "13.0", True, plus=True)  # 580+
        assert lines[3].startswith("+----") and lines[3].endswith("-+")
        assert {len(x) for x in lines[1:] if x} == {91}
        assert "| MIG devices:" + " " * 76 + "|" in lines
    finally:
        sim.uninstall()


def test_processes_table_marks_mps_clients_and_sorts_by_pid(client) -> None:
    """A real 580.159.04 table with two MPS clients (docs/real-gpu.md): the clients' Type is ``M+C``, the MPS
    server's ``C``, right-aligned under "Type"; rows in PID order (NVML listed the server first)."""
    node_sim = sim.install("1xH200@580.159.04", state_path=None)
    try:
        a, server, b = sorted((client(), client(), client()), key=lambda p: p.pid)
        assert node_sim.add_client(0, server.pid, name="nvidia-cuda-mps-server") == 0
        assert node_sim.add_client(0, b.pid, mps=True) == 0
        assert node_sim.add_client(0, a.pid, mps=True) == 0
        node = open_node("1xH200@580.159.04")
        out = io.StringIO()
        assert run_smi(node, [], out, clock=lambda: "Thu Jan  1 00:00:00 2026") == 0
        rows = [x for x in out.getvalue().splitlines() if "N/A  N/A" in x]
        assert [int(x.split()[4]) for x in rows] == [a.pid, server.pid, b.pid]
        [header] = [x for x in out.getvalue().splitlines() if "PID   Type" in x]
        end = header.index("Type") + 4  # as in the real table: Type's last letter above the kind's last letter
        assert [x[end - 4:end] for x in rows] == [" M+C", "   C", " M+C"], rows
        assert {len(x) for x in rows} == {91}
    finally:
        sim.uninstall()
