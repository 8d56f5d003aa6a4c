"""Error paths and messages of ``migctl smi`` (nvidia-smi's words, %2d spacing, exit codes)."""

from __future__ import annotations

import io
import os
from collections.abc import Iterator

import pytest

import migctl.sim as sim
from migctl.device import Node, open_node
from migctl.smi import run_smi

A30 = "4xA30@545.23.08"
H100 = "1xH100-80GB"
BUS0 = "00000000:17:00.0"


@pytest.fixture
def fresh() -> Iterator[object]:
    """``make(spec)`` -> an in-memory simulated node."""

    def make(spec: str) -> Node:
        sim.install(spec, state_path=None)
        return open_node(spec)

    yield make
    sim.uninstall()


def smi(node: Node, *words: str) -> tuple[int, list[str]]:
    out = io.StringIO()
    code = run_smi(node, list(words), out, clock=lambda: "Thu Jan  1 00:00:00 2026")
    return code, out.getvalue().splitlines()


def mig_on(node: Node, gpu: str = "0") -> None:
    assert smi(node, "-i", gpu, "-mig", "1") == (0, [f"Enabled MIG Mode for GPU {node.gpu(int(gpu)).bus_id}", "All done."])


def test_insufficient_resources_h100(fresh) -> None:
    node = fresh(H100)
    mig_on(node)
    code, lines = smi(node, "mig", "-cgi", "19,19,14,9")
    assert code == 255
    assert len(lines) == 5
    assert all(x.startswith("Successfully created GPU instance ID ") for x in lines[:3])
    assert lines[0].endswith(" on GPU  0 using profile MIG 1g.10gb (ID 19)")
    assert lines[2].endswith(" on GPU  0 using profile MIG 2g.20gb (ID 14)")
    assert lines[3:] == [
        "Unable to create a GPU instance on GPU  0 using profile 9: Insufficient Resources",
        "Failed to create GPU instances: Insufficient Resources",
    ]
    # the profile token is echoed as typed
    code, lines = smi(node, "mig", "-cgi", "MIG 3g.40gb")
    assert (code, lines) == (255, [
        "Unable to create a GPU instance on GPU  0 using profile MIG 3g.40gb: Insufficient Resources",
        "Failed to create GPU instances: Insufficient Resources",
    ])


@pytest.mark.parametrize("token", ["7g.40gb", "MIG 9g.1gb", "99"])
def test_invalid_argument_for_unknown_profile(fresh, token: str) -> None:
    node = fresh(A30)
    mig_on(node)
    code, lines = smi(node, "mig", "-cgi", token)
    assert (code, lines) == (2, [
        f"Unable to create a GPU instance on GPU  0 using profile {token}: Invalid Argument",
        "Failed to create GPU instances: Invalid Argument",
    ])


def test_create_by_id_short_and_full_name(fresh) -> None:
    node = fresh(A30)
    mig_on(node)
    code, lines = smi(node, "mig", "-i", "0", "-cgi", "MIG 1g.6gb,1g.6gb,14", "-C")
    assert code == 0
    assert len(lines) == 6
    assert all(" using profile MIG 1g.6gb (ID 14)" in x for x in lines[0::2])
    assert all(" using profile MIG 1g.6gb (ID  0)" in x for x in lines[1::2])


def test_in_use_destroying_gi_with_cis_and_ci_with_process(fresh) -> None:
    node = fresh(A30)
    mig_on(node)
    assert smi(node, "mig", "-cgi", "5", "-C")[0] == 0
    assert smi(node, "mig", "-dgi") == (255, [
        "Unable to destroy GPU instance ID  1 from GPU  0: In use by another client",
        "Failed to destroy GPU instances: In use by another client",
    ])
    assert node.sim.add_client(0, os.getpid(), 1, 0) == 0
    assert smi(node, "mig", "-dci", "-gi", "1", "-ci", "0") == (255, [
        "Unable to destroy compute instance ID  0 from GPU  0 GPU instance ID  1: In use by another client",
        "Failed to destroy compute instances: In use by another client",
    ])
    node.sim.remove_client(0, os.getpid())
    assert smi(node, "mig", "-dci") == (0, ["Successfully destroyed compute instance ID  0 from GPU  0 GPU instance ID  1"])
    assert smi(node, "mig", "-dgi", "-gi", "1") == (0, ["Successfully destroyed GPU instance ID  1 from GPU  0"])
    assert smi(node, "mig", "-lgi") == (6, ["No GPU instances found: Not Found"])
    assert smi(node, "mig", "-lci") == (6, ["No compute instances found: Not Found"])
    assert smi(node, "mig", "-dgi") == (6, ["No GPU instances found: Not Found"])
    assert smi(node, "mig", "-dci") == (6, ["No compute instances found: Not Found"])


def test_pending_mig_mode_when_busy_then_reset(fresh) -> None:
    node = fresh(A30)
    assert node.sim.add_client(0, os.getpid()) == 0
    code, lines = smi(node, "-i", "0", "-mig", "1")
    assert code == 0
    assert lines == [
        f"Warning: MIG mode is in pending enable state for GPU {BUS0}:In use by another client",
        f"{BUS0} is currently being used by one or more other processes (e.g. CUDA application or a monitoring "
        "application such as another instance of nvidia-smi). Please first kill all processes using the device "
        "and retry the command or reboot the system to make MIG mode effective.",
        "All done.",
    ]
    query = ("-i", "0", "--query-gpu=pci.bus_id,mig.mode.current,mig.mode.pending", "--format=csv")
    assert smi(node, *query) == (0, ["pci.bus_id, mig.mode.current, mig.mode.pending", f"{BUS0}, Disabled, Enabled"])
    code, lines = smi(node, "--gpu-reset", "-i", "0")
    assert code == 255
    assert lines[:2] == ["The following GPUs could not be reset:", f"  GPU {BUS0}: In use by another client"]
    node.sim.remove_client(0, os.getpid())
    assert smi(node, "--gpu-reset", "-i", "0") == (0, [f"GPU {BUS0} was successfully reset.", "All done."])
    assert smi(node, *query[:2], "--query-gpu", "mig.mode.current", "--format=csv,noheader") == (0, ["Enabled"])


def test_not_supported(fresh) -> None:
    """A GPU without MIG (the simulator's ``~nomig``) next to MIG-capable ones."""
    node = fresh("1xA30,1xA30~nomig@545.23.08")
    bus1 = node.gpu(1).bus_id
    assert smi(node, "-i", "1", "-mig", "1") == (0, [
        f"Unable to enable MIG Mode for GPU {bus1}: Not Supported",
        "Treating as warning and moving on.",
        "All done.",
    ])
    assert smi(node, "-i", "1", "--query-gpu=mig.mode.current", "--format=csv") == (0, ["mig.mode.current", "[N/A]"])
    only = fresh("1xA30~nomig@545.23.08")
    assert smi(only, "mig", "-lgip") == (6, ["No MIG-supported devices found."])


def test_mig_disabled_and_bad_arguments(fresh) -> None:
    node = fresh("1xA30@580.159.04")
    # MIG disabled: nvidia-smi 580.159.04 still lists the profiles (NVML answers profile info and remaining
    # capacity with MIG off) and exits 0 from the instance listings (our H200 capture, docs/real-gpu.md)
    code, lines = smi(node, "mig", "-lgip")
    assert code == 0 and any("MIG 4g.24gb" in x and " 1/1 " in x for x in lines), lines
    assert smi(node, "mig", "-lgi") == (0, ["No MIG-enabled devices found."])
    assert smi(node, "mig", "-lci") == (0, ["No MIG-enabled devices found."])
    node = fresh(A30)  # 545.23.08: refuses profile info with MIG off (the simulator's bound)
    assert smi(node, "mig", "-lgip") == (0, ["No MIG-enabled devices found."])
    invalid = "Invalid combination of input arguments. Please run 'nvidia-smi -h' for help."
    assert smi(node, "mig", "-bogus") == (2, [invalid])
    assert smi(node, "-mig", "2") == (2, [invalid])
    assert smi(node, "--query-gpu=nope", "--format=csv") == (2, ['Field "nope" is not a valid field to query.'])
    assert smi(node, "-i", "9", "-L") == (6, ["No devices were found"])


@pytest.mark.parametrize("argv", [["-q"], ["-q", "-i", "0"], ["-x", "-q"], ["topo", "-m"], ["dmon", "-c", "1"],
                                  ["--query-accounted-apps=pid", "--format=csv"], ["-pl", "300"]])
def test_real_nvidia_smi_options_outside_the_mig_subset_say_so(fresh, argv: list[str]) -> None:
    """A script's `nvidia-smi -q` is valid nvidia-smi: it used to get the bad-syntax line, as if mistyped.
    Now one line names it as not implemented here and what is (exit 3, nvidia-smi's "not available")."""
    code, lines = smi(fresh(A30), *argv)
    assert code == 3 and len(lines) == 1, lines
    assert lines[0].startswith(f"migctl smi: nvidia-smi {argv[0].split('=')[0]} is not implemented here; supported:")


def test_cci_default_and_by_name(fresh) -> None:
    node = fresh(A30)
    mig_on(node)
    assert smi(node, "mig", "-cgi", "5,5")[0] == 0
    code, lines = smi(node, "mig", "-cci", "-gi", "1")
    assert (code, lines) == (0, [
        "Successfully created compute instance ID  0 on GPU  0 GPU instance ID  1 using profile MIG 2g.12gb (ID  1)"
    ])
    code, lines = smi(node, "mig", "-cci", "1c.2g.12gb", "-gi", "2")
    assert code == 0 and lines[0].endswith("GPU instance ID  2 using profile MIG 1c.2g.12gb (ID  0)")
    code, lines = smi(node, "mig", "-cci", "0", "-gi", "1")
    assert code == 255
    assert lines[-1] == "Failed to create compute instances: Insufficient Resources"
    assert smi(node, "mig", "-cci", "-gi", "7") == (6, ["Unable to find GPU instance ID  7 on GPU  0: Not Found"])


def test_a_leased_instance_is_in_use_before_its_first_cuda_call(fresh, tmp_path, monkeypatch) -> None:
    """`-dgi`, `-dci`, `-mig 0` and `--gpu-reset` answer a device leased by `migctl run` or the worker as the
    driver answers one with a CUDA context, though NVML does not list the leased command yet."""
    from migctl.jobs import LeaseManager, Request

    monkeypatch.setenv("MIGCTL_STATE_DIR", str(tmp_path))
    node = fresh(A30)
    mig_on(node)
    assert smi(node, "mig", "-i", "0", "-cgi", "5,14", "-C")[0] == 0
    lease = LeaseManager(node).try_acquire(Request(profile="2g.12gb", create=False), pid=os.getpid())
    assert lease is not None and node.gpu(0).processes() == []
    gi = node.find_mig_device(lease.uuid).gi_id
    assert smi(node, "mig", "-i", "0", "-dci", "-gi", str(gi)) == (255, [
        f"Unable to destroy compute instance ID  0 from GPU  0 GPU instance ID {gi:2d}: In use by another client",
        "Failed to destroy compute instances: In use by another client",
    ])
    other = next(x.id for x in node.gpu(0).gpu_instances() if x.id != gi)
    assert smi(node, "mig", "-i", "0", "-dci", "-gi", str(other))[0] == 0
    code, lines = smi(node, "mig", "-i", "0", "-dgi")  # -lgi order: 1g.6gb (profile 14) first
    assert code == 255 and lines == [f"Successfully destroyed GPU instance ID {other:2d} from GPU  0",
                                     f"Unable to destroy GPU instance ID {gi:2d} from GPU  0: In use by another client",
                                     "Failed to destroy GPU instances: In use by another client"]
    assert [x.id for x in node.gpu(0).gpu_instances()] == [gi]
    assert smi(node, "-i", "0", "-mig", "0") == (0, [
        f"Unable to disable MIG Mode for GPU {BUS0}: In use by another client", "Treating as warning and moving on.",
        "All done."])
    assert node.gpu(0).mig_mode() == (1, 1) and [x.id for x in node.gpu(0).gpu_instances()] == [gi]
    code, lines = smi(node, "--gpu-reset", "-i", "0")
    assert code == 255 and lines[:2] == ["The following GPUs could not be reset:", f"  GPU {BUS0}: In use by another client"]
    LeaseManager(node).release(lease)
    assert smi(node, "--gpu-reset", "-i", "0") == (0, [f"GPU {BUS0} was successfully reset.", "All done."])


def test_changing_commands_wait_for_the_node_lock(fresh, tmp_path, monkeypatch) -> None:
    """-cgi, -cci, -dci, -dgi, -mig and --gpu-reset take the node lock that apply, run and the worker hold
    while they change instances; -lgi does not. (-cgi and -cci took no lock, so they could land in the
    middle of an apply or a reshape.)"""
    import migctl.smi.commands as C
    from migctl.paths import LockBusy, node_lock

    monkeypatch.setenv("MIGCTL_STATE_DIR", str(tmp_path))
    monkeypatch.setattr(C, "LOCK_WAIT_S", 0.1)
    node = fresh(A30)
    mig_on(node)
    assert smi(node, "mig", "-i", "0", "-cgi", "14", "-C")[0] == 0
    with node_lock(node, 0, what="migctl apply 'x'"):
        for words in (["mig", "-i", "0", "-cgi", "14"], ["mig", "-i", "0", "-cci", "-gi", "1"], ["mig", "-dci"],
                      ["mig", "-dgi"], ["-i", "0", "-mig", "0"], ["-i", "0", "--gpu-reset"]):
            with pytest.raises(LockBusy, match="migctl apply 'x'"):
                smi(node, *words)
        assert smi(node, "mig", "-lgi")[0] == 0
    assert len(node.gpu(0).gpu_instances()) == 1


def test_query_compute_apps_as_a_real_580_run_printed(fresh, client) -> None:
    """A real 580.159.04 run: ``--query-compute-apps=pid,process_name,used_memory --format=csv`` printed the header
    ``pid, process_name, used_gpu_memory [MiB]`` and one row per process in NVML's order; with no process, only
    the header (docs/real-gpu.md)."""
    node = fresh("1xH200@580.159.04")
    q = "--query-compute-apps=pid,process_name,used_memory"
    assert smi(node, q, "--format=csv") == (0, ["pid, process_name, used_gpu_memory [MiB]"])
    server, a = client(), client()
    assert node.sim.add_client(0, server.pid, used_mib=66, name="nvidia-cuda-mps-server") == 0
    assert node.sim.add_client(0, a.pid, used_mib=548, mps=True) == 0
    code, lines = smi(node, q, "--format=csv,noheader,nounits")
    assert code == 0 and [x.split(", ")[0::2] for x in lines] == [[str(server.pid), "66"], [str(a.pid), "548"]], lines
    code, lines = smi(node, "--query-compute-apps=gpu_uuid,used_gpu_memory", "--format=csv")
    assert lines[0] == "gpu_uuid, used_gpu_memory [MiB]" and lines[1] == f"{node.gpu(0).uuid}, 66 MiB"
    assert smi(node, "--query-compute-apps=nope", "--format=csv") == (2, ['Field "nope" is not a valid field to query.'])
    assert smi(node, q) == (2, ["Missing --format option. Please run 'nvidia-smi -h' for help."])
    invalid = "Invalid combination of input arguments. Please run 'nvidia-smi -h' for help."
    assert smi(node, "--query-compute-apps=", "--format=csv") == (2, [invalid])  # no field: not an empty table
    assert smi(node, "--query-gpu=,", "--format=csv") == (2, [invalid])
