"""``migctl doctor``: read-only node checks, each with a status and what to do; exit 1 only on a failure."""

from __future__ import annotations

import json
import os
from pathlib import Path

from cli_helpers import H100

from migctl.doctor import mount_fs_type, run

A100X2 = "2xA100-40GB"


def checks(cli, *extra: str, sim: str = A100X2) -> tuple[int, dict[tuple[str, int | None], dict]]:
    r = cli("doctor", "--json", *extra, sim=sim)
    data = json.loads(r.out)
    assert data["ok"] == (r.code == 0) and r.code in (0, 1), r
    return r.code, {(c["check"], c["gpu"]): c for c in data["checks"]}


def test_a_clean_node_passes_and_reads_nothing_into_being(cli, tmp_path, monkeypatch):
    fresh = tmp_path / "not-yet"
    monkeypatch.setenv("MIGCTL_STATE_DIR", str(fresh))
    monkeypatch.setenv("MIGCTL_SIM_STATE", str(tmp_path / "sim.json"))  # (by default it lives in the state dir)
    code, c = checks(cli, sim=A100X2)
    assert code == 0
    assert c[("backend", None)]["status"] == "info" and "simulated node 2xA100-40GB" in c[("backend", None)]["detail"]
    assert c[("state-dir", None)]["status"] == "info" and "does not exist yet" in c[("state-dir", None)]["detail"]
    assert not fresh.exists()  # doctor creates nothing
    assert {c[("mig-mode", i)]["status"] for i in (0, 1)} == {"ok"}
    assert c[("model", 0)]["detail"] == "NVIDIA A100-SXM4-40GB (A100-40GB)"
    r = cli("doctor", sim=A100X2)
    assert r.code == 0 and "state-dir" in r.out and r.out.rstrip().splitlines()[-1] == "4 ok, 2 info"


def test_what_gets_in_the_way_of_a_change_is_named_with_what_to_do(cli):
    assert cli("sim", "set", "ampere-activation=reset", sim=A100X2).code == 0
    assert cli("mode", "enable", "-i", "1", sim=A100X2).code == 0
    assert cli("reset", "-i", "1", sim=A100X2).code == 0
    assert cli("sim", "add-holder", "nv-hostengine", "-i", "0", sim=A100X2).code == 0
    assert cli("mode", "enable", "-i", "0", sim=A100X2).code == 0  # pending: the reset it needs is refused
    assert cli("gi", "create", "-i", "1", "1g.5gb", sim=A100X2).code == 0  # no compute instance: an orphan
    assert cli("submit", "--profile", "1g.5gb", "--", "true", sim=A100X2).code == 0  # and no worker
    code, c = checks(cli)
    assert code == 0  # warnings only
    holders = c[("device-holders", None)]
    assert holders["status"] == "info" and "on GPU 0: nv-hostengine (DCGM's host engine" in holders["detail"]
    mode = c[("mig-mode", 0)]
    assert mode["status"] == "warn" and "enabled pending" in mode["detail"] and "migctl reset -i 0" in mode["detail"]
    assert "held open by nv-hostengine" in mode["detail"]
    assert c[("mig-mode", 1)]["status"] == "ok"
    orphan = c[("orphan-instances", 1)]
    assert orphan["status"] == "warn" and "migctl recover" in orphan["detail"]
    queue = c[("queue", None)]
    assert queue["status"] == "warn" and "1 job(s) waiting" in queue["detail"] and "migctl worker" in queue["detail"]
    assert ("privileges", None) not in c
    assert cli("sim", "set", "caller=user", sim=A100X2).code == 0
    c = checks(cli)[1]
    assert c[("privileges", None)]["status"] == "info" and "need root" in c[("privileges", None)]["detail"]


def test_an_interrupted_apply_fails_until_recovered(cli, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("version: v1\nmig-configs:\n  a:\n    - devices: all\n      mig-enabled: true\n"
                   "      mig-devices: {1g.10gb: 7}\n")
    assert cli("apply", "-f", cfg, "-c", "a", "-q", sim=H100).code == 0
    (last,) = tmp_path.glob("apply-*.last.json")
    journal = last.with_name(last.name.replace(".last.json", ".journal.json"))
    journal.write_text(last.read_text())
    os.chmod(journal, 0o600)
    code, c = checks(cli, sim=H100)
    assert code == 1 and c[("apply-journal", None)]["status"] == "fail"
    assert "migctl recover" in c[("apply-journal", None)]["detail"]
    r = cli("doctor", sim=H100)
    assert r.code == 1 and "migctl cannot work safely until the failures are fixed" in r.out
    journal.unlink()
    assert checks(cli, sim=H100)[0] == 0


def test_a_state_dir_others_can_write_fails(cli, tmp_path, monkeypatch):
    (tmp_path / "state").mkdir(mode=0o700)
    monkeypatch.setenv("MIGCTL_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("MIGCTL_SIM_STATE", str(tmp_path / "sim.json"))
    assert checks(cli, sim=H100)[0] == 0
    os.chmod(tmp_path / "state", 0o777)
    code, c = checks(cli, sim=H100)
    assert code == 1 and c[("state-dir", None)]["status"] == "fail"
    assert "state dir" in c[("state-dir", None)]["detail"]


MOUNTS = """\
/dev/sda1 / ext4 rw,relatime 0 0
server:/export/home /home nfs4 rw,relatime 0 0
/dev/sdb1 /home/local\\040disk xfs rw 0 0
tmpfs /tmp tmpfs rw 0 0
"""


def test_the_state_dirs_file_system_comes_from_the_longest_mount_point():
    assert mount_fs_type(Path("/home/alice/.local/state/migctl"), MOUNTS) == "nfs4"
    assert mount_fs_type(Path("/home/local disk/migctl"), MOUNTS) == "xfs"  # \\040 is a space
    assert mount_fs_type(Path("/homework"), MOUNTS) == "ext4"  # /home is not a prefix of /homework
    assert mount_fs_type(Path("/var/lib/migctl"), MOUNTS) == "ext4"
    assert mount_fs_type(Path("/x"), "") is None
    assert mount_fs_type(Path("/mnt/données x/a"), "/dev/sda1 / ext4 rw 0 0\nsrv:/d /mnt/données\\040x nfs rw 0 0\n") == "nfs"
    assert mount_fs_type(Path("/mnt/a\\xq"), "/dev/sda1 / ext4 rw 0 0\nsrv:/d /mnt/a\\134xq nfs rw 0 0\n") == "nfs"


def test_a_state_dir_on_nfs_fails(tmp_path, monkeypatch):
    from migctl.device import open_node

    monkeypatch.setenv("MIGCTL_STATE_DIR", str(tmp_path))
    node = open_node("1xA30", str(tmp_path / "sim.json"))
    mounts = f"/dev/sda1 / ext4 rw 0 0\nserver:/x {tmp_path.resolve()} nfs rw 0 0\n"
    by = {c.name: c for c in run(node, tmp_path, mounts)}
    assert by["state-dir-fs"].status == "fail" and "on nfs" in by["state-dir-fs"].detail
    assert "MIGCTL_STATE_DIR=/var/lib/migctl" in by["state-dir-fs"].detail
    assert "state-dir-fs" not in {c.name for c in run(node, tmp_path, "/dev/sda1 / ext4 rw 0 0\n")}


def test_device_file_holders_are_read_from_proc(tmp_path):
    """The real node's holders (what a refused reset names, and doctor lists): processes with an NVIDIA device
    file open, from /proc/PID/fd, in PID order; other processes and unreadable entries are skipped."""
    from migctl.device.api import _holders_of_nvidia_devices

    proc = tmp_path / "proc"
    for pid, comm, targets in ((1203, "nvidia-persistenced", ["/dev/nvidia0", "/dev/nvidiactl"]),
                               (7, "bash", ["/dev/null", "/dev/pts/0"]), (40, "nv-hostengine", ["/dev/nvidia-caps/x"]),
                               (99, "python3", ["/dev/nvidia-uvm"])):
        (proc / str(pid) / "fd").mkdir(parents=True)
        (proc / str(pid) / "comm").write_text(comm + "\n")
        for fd, target in enumerate(targets):
            (proc / str(pid) / "fd" / str(fd)).symlink_to(target)
    (proc / "5" / "fd").mkdir(parents=True)  # gone before its comm could be read
    (proc / "5" / "fd" / "0").symlink_to("/dev/nvidia1")
    (proc / "self").mkdir()
    assert _holders_of_nvidia_devices(str(proc)) == [
        "nv-hostengine (PID 40)", "python3 (PID 99)", "nvidia-persistenced (PID 1203)"]
    assert _holders_of_nvidia_devices(str(tmp_path / "nothing")) == []


def test_a_process_name_cannot_style_or_escape_the_table(cli, monkeypatch):
    import migctl.doctor as doctor

    monkeypatch.setattr(doctor, "_device_holders", lambda node: {0: ["[red]x[/red]\x1b[2J"]})
    r = cli("doctor", sim="1xA30")
    assert r.code == 0 and "\x1b" not in r.out and "[red]x[/red]" in r.out


def test_a_driver_older_than_the_first_with_mig_on_a_model_fails():
    """The simulator refuses such a spec, so the check is driven with the one thing it reads of a real node."""
    from types import SimpleNamespace

    from migctl.catalog import load_model
    from migctl.doctor import node_checks

    def real(driver: str) -> SimpleNamespace:
        gpu = SimpleNamespace(index=0, catalog_model=load_model("B300"))
        return SimpleNamespace(sim=None, driver_version=driver, gpus=lambda: [gpu])

    old = {c.name: c for c in node_checks(real("570.86.15"), {})}
    assert old["driver"].status == "fail" and "older than the first with MIG on B300 (580.82.07)" in old["driver"].detail
    assert "driver" not in {c.name for c in node_checks(real("580.82.07"), {})}
    assert old["backend"].detail == "NVIDIA driver 570.86.15 through NVML"
    assert {old["nvidia-smi"].status, old["mps-control"].status} <= {"ok", "warn"}
