"""Slurm: GRES generation (unit) and `migctl slurm reconfigure` against a real slurmctld + slurmd on loopback.

The fixture installs Slurm 22.05 from Debian's packages with scripts/install-slurm.sh when it is missing
(root + apt) and starts/stops the daemons itself. It never skips silently: without Slurm it fails, unless
MIGCTL_SKIP_SLURM_TESTS=1 is set explicitly.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from slurm_cluster import NODE, Cluster, free_port_pair

from conftest import SimEnv, make_env
from migctl.integrations import slurm as S

ROOT = Path(__file__).resolve().parents[2]
HELPER = Path(__file__).resolve().with_name("slurm_cluster.py")

CONFIG = """version: v1
mig-configs:
  mixed:
    - devices: all
      mig-enabled: true
      mig-devices: {"3g.40gb": 1, "1g.10gb": 2}
  all-1g.10gb:
    - devices: all
      mig-enabled: true
      mig-devices: {"1g.10gb": 7}
  all-7g:
    - devices: all
      mig-enabled: true
      mig-devices: {"7g.80gb": 1}
"""


# ------------------------------------------------------------------------------------------ unit
def test_slurm_type_naming_follows_gpu_nvml() -> None:
    assert S.slurm_type("NVIDIA A100-SXM4-40GB", 3, 19968, "full") == "nvidia_a100_3g.20gb"
    assert S.slurm_type("A100-SXM4-40GB", 3, 19968, "full") == "a100_3g.20gb"
    assert S.slurm_type("NVIDIA H100 80GB HBM3", 1, 9984, "full") == "nvidia_h100_80gb_hbm3_1g.10gb"
    # Slurm rounds MiB/1024: the H100 7g.80gb (81152 MiB) is 7g.79gb to slurmd
    assert S.slurm_type("NVIDIA H100 80GB HBM3", 7, 81152) == "7g.79gb"
    assert S.slurm_type("NVIDIA H100 80GB HBM3", 3, 40448) == "3g.40gb"  # 39.5 rounds up


def test_cap_minors_match_mig_minors_layout() -> None:
    assert S.cap_minors(0, 0, 0) == (3, 4)
    assert S.cap_minors(31, 14, 7)[1] == 4322
    table = {"gpu0/gi7/access": 66, "gpu0/gi7/ci0/access": 67}
    assert S.cap_minors(0, 7, 0, table) == (66, 67) == S.cap_minors(0, 7, 0)


def test_gres_conf_and_node_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env = make_env(tmp_path, monkeypatch, "1xH100-80GB")
    env.layout(0, ["3g.40gb", "1g.10gb", "1g.10gb"])
    n = env.node()
    entries = S.gres_entries(n, minors={})
    assert S.gres_value(entries) == "gpu:3g.40gb:1,gpu:1g.10gb:2" or S.gres_value(entries) == "gpu:1g.10gb:2,gpu:3g.40gb:1"
    for e, d in zip(entries, n.gpu(0).mig_devices(), strict=True):
        gi, ci = S.cap_minors(0, d.gi_id, d.ci_id)
        assert e.files == ("/dev/nvidia0", f"/dev/nvidia-caps/nvidia-cap{gi}", f"/dev/nvidia-caps/nvidia-cap{ci}")
    conf = tmp_path / "slurm.conf"
    conf.write_text("ClusterName=x\nNodeName=gpu01 CPUs=8 Gres=gpu:old:1 State=UNKNOWN\nNodeName=gpu02 CPUs=8\n")
    gres = tmp_path / "gres.conf"
    gres.write_text("# site lines stay\nNodeName=gpu02 Name=gpu File=/dev/nvidia0\n")
    r = env.migctl("slurm", "gres", "--node", "gpu01", "--gres-conf", str(gres), "--slurm-conf", str(conf))
    assert r.returncode == 0, r.stderr
    text = conf.read_text().splitlines()
    assert text[1].startswith("NodeName=gpu01 CPUs=8 Gres=gpu:") and "old" not in text[1] and "State=UNKNOWN" in text[1]
    assert text[2] == "NodeName=gpu02 CPUs=8"
    g = gres.read_text()
    assert g.startswith("# site lines stay\nNodeName=gpu02 Name=gpu File=/dev/nvidia0\n# BEGIN migctl node=gpu01\n")
    assert "NodeName=gpu01 AutoDetect=nvml" in g and g.count("MultipleFiles=/dev/nvidia0,") == 3
    env.migctl("slurm", "gres", "--node", "gpu01", "--gres-conf", str(gres), "--slurm-conf", str(conf))
    assert gres.read_text() == g  # idempotent: the block is replaced, not appended
    r = env.migctl("slurm", "gres", "--node", "nope", "--gres-conf", str(gres), "--slurm-conf", str(conf))
    assert r.returncode == 2 and "no line 'NodeName=nope" in r.stderr


# ------------------------------------------------------------------------------------------ real Slurm
@pytest.fixture(scope="module")
def slurm_installed() -> None:
    if os.environ.get("MIGCTL_SKIP_SLURM_TESTS") == "1":
        pytest.skip("MIGCTL_SKIP_SLURM_TESTS=1")
    if not all(shutil.which(b) or Path("/usr/sbin", b).exists() for b in ("slurmctld", "slurmd", "scontrol", "munged")):
        r = subprocess.run([str(ROOT / "scripts" / "install-slurm.sh")], capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, f"scripts/install-slurm.sh failed:\n{r.stdout}\n{r.stderr}"


@pytest.fixture
def cluster(slurm_installed: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
            request: pytest.FixtureRequest) -> Iterator[tuple[Cluster, SimEnv]]:
    env = make_env(tmp_path, monkeypatch, "1xH100-80GB")
    cfg = tmp_path / "config.yaml"
    cfg.write_text(CONFIG)
    from migctl.reconcile import apply_config

    apply_config(str(cfg), "mixed", node=env.node())
    # a short private directory, not tmp_path: slurmstepd's Unix socket paths under SlurmdSpoolDir must fit in
    # 108 bytes, and pytest-xdist's tmp_path (.../popen-gw0/test_reconfigure_against_real_0/...) did not
    d = Path(tempfile.mkdtemp(prefix="slurm-"))
    request.addfinalizer(lambda: shutil.rmtree(d, ignore_errors=True))
    c = Cluster(d, port=free_port_pair())
    c.prepare(gpus=1)
    env.env["SLURM_CONF"] = str(c.conf)
    monkeypatch.setenv("SLURM_CONF", str(c.conf))
    r = env.migctl("slurm", "gres", "--node", NODE, "--gres-conf", str(c.gres_conf), "--slurm-conf", str(c.conf),
                   "--autodetect", "off", "--dev-prefix", str(c.d / "dev"))
    assert r.returncode == 0, r.stderr
    c.start()
    try:
        c.wait_state("IDLE")
        yield c, env
    finally:
        c.stop()


def _srun(c: Cluster, gres: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["srun", "-N1", "-n1", f"--gres={gres}", "-t", "1", "printenv", "CUDA_VISIBLE_DEVICES"],
                          env=c.env, capture_output=True, text=True, timeout=timeout)


def _reconfigure_args(env: SimEnv, c: Cluster, label: str) -> list[str]:
    restart = f"{sys.executable} {HELPER} restart {c.d}"
    return ["slurm", "reconfigure", NODE, "-f", str(env.tmp / "config.yaml"), "-c", label,
            "--gres-conf", str(c.gres_conf), "--slurm-conf", str(c.conf), "--autodetect", "off",
            "--dev-prefix", str(c.d / "dev"), "--slurmctld-restart", f"{restart} slurmctld",
            "--slurmd-restart", f"{restart} slurmd", "--timeout", "60", "--drain-timeout", "60"]


def _reconfigure(env: SimEnv, c: Cluster, label: str) -> subprocess.CompletedProcess[str]:
    return env.migctl(*_reconfigure_args(env, c, label), timeout=180)


def test_reconfigure_against_real_slurm(cluster: tuple[Cluster, SimEnv]) -> None:
    c, env = cluster
    info = c.scontrol_state()
    assert "gpu:3g.40gb:1" in info and "gpu:1g.10gb:2" in info
    r = _srun(c, "gpu:3g.40gb:1")
    assert r.returncode == 0 and r.stdout.strip() != "", r.stderr
    # a running job: reconfigure drains and waits for it. The job runs until the test releases it, which the test
    # does only once the node is draining and reconfigure is seen waiting with the layout unchanged
    release = c.d / "release-job"
    job = subprocess.run(["sbatch", "--parsable", "--gres=gpu:1g.10gb:1", "-o", "/dev/null", "--wrap",
                          f"for i in $(seq 1200); do [ -e {release} ] && exit 0; sleep 0.1; done; exit 1"],
                         env=c.env, capture_output=True, text=True, timeout=30)
    assert job.returncode == 0, job.stderr
    job_id = job.stdout.strip().split(";")[0]

    def job_state() -> str:
        return subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T %r"], env=c.env, capture_output=True,
                              text=True, timeout=30).stdout.strip()

    deadline = time.monotonic() + 60
    while not job_state().startswith("RUNNING"):
        assert time.monotonic() < deadline, (job_state(), c.scontrol_state(), c.tail("slurmd.log", 40))
        time.sleep(0.1)
    proc = env.popen(*_reconfigure_args(env, c, "all-1g.10gb"))
    try:
        while "DRAIN" not in c.scontrol_state():
            assert proc.poll() is None and time.monotonic() < deadline + 60, c.scontrol_state()
            time.sleep(0.1)
        time.sleep(0.5)
        assert proc.poll() is None  # still waiting for the running job
        assert len(env.node().gpu(0).mig_devices()) == 3  # nothing applied while the job runs
        release.touch()
        _, err = proc.communicate(timeout=180)
    finally:
        release.touch()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err + c.tail("slurmctld.log") + c.tail("slurmd.log")
    info = c.wait_state("IDLE")
    assert "Gres=gpu:1g.10gb:7" in info
    assert len(env.node().gpu(0).mig_devices()) == 7
    r = _srun(c, "gpu:1g.10gb:1")
    assert r.returncode == 0 and r.stdout.strip() != "", r.stderr
    r = _srun(c, "gpu:3g.40gb:1")
    assert r.returncode != 0  # that type is gone

    # failure: a process on a MIG device that must go -> apply refuses; the layout is unchanged, so the node
    # is resumed (not left drained) and the GRES files are as they were
    gres_before, conf_before = c.gres_conf.read_text(), c.conf.read_text()
    holder = env.popen("run", "--profile", "1g.10gb", "--", "sh", "-c", "echo up; sleep 60")
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "up"
        r = _reconfigure(env, c, "all-7g")
        assert r.returncode != 0 and "layout unchanged; node resumed" in r.stderr, r.stderr
        info = c.wait_state("IDLE")
        assert "DRAIN" not in info, info
        assert len(env.node().gpu(0).mig_devices()) == 7  # nothing was destroyed
        assert c.gres_conf.read_text() == gres_before and c.conf.read_text() == conf_before
    finally:
        holder.kill()
        holder.wait()

    # a NodeName slurm.conf lacks, a bad label: refused before anything is drained or applied
    for node_name, label, what in ((NODE + "x", "all-7g", "no line 'NodeName="), (NODE, "nope", "nope")):
        restart = f"{sys.executable} {HELPER} restart {c.d}"
        r = env.migctl("slurm", "reconfigure", node_name, "-f", str(env.tmp / "config.yaml"), "-c", label,
                       "--gres-conf", str(c.gres_conf), "--slurm-conf", str(c.conf), "--autodetect", "off",
                       "--dev-prefix", str(c.d / "dev"), "--slurmctld-restart", f"{restart} slurmctld",
                       "--slurmd-restart", f"{restart} slurmd", "--timeout", "60", timeout=120)
        assert r.returncode == 2 and what in r.stderr, r.stderr
        info = c.scontrol_state()
        assert "DRAIN" not in info and "IDLE" in info, info
    assert len(env.node().gpu(0).mig_devices()) == 7


# ------------------------------------------------------------------------------------------ file hardening
def test_slurm_conf_line_syntax() -> None:
    set_ = S.set_node_gres
    # a trailing comment stays a comment; Gres= goes into the line, not into the comment
    assert set_("NodeName=a CPUs=8 # site note\n", "a", "gpu:x:1") == "NodeName=a Gres=gpu:x:1 CPUs=8 # site note\n"
    # a Gres= on a continuation line is replaced, the continuation kept
    assert set_("NodeName=a CPUs=8 \\\n  Gres=gpu:old:1 State=UNKNOWN\n", "a", "gpu:x:1") == \
        "NodeName=a CPUs=8 \\\n  Gres=gpu:x:1 State=UNKNOWN\n"
    # quoted values are kept as written
    assert set_('NodeName=a Features="f1 f2" Gres=gpu:o:1\n', "a", "gpu:x:1") == \
        'NodeName=a Features="f1 f2" Gres=gpu:x:1\n'
    # a commented-out Gres= is neither read as the node's Gres nor rewritten; a real one is added
    assert set_("NodeName=a CPUs=1 # Gres=gpu:old:1\n", "a", "gpu:x:1") == "NodeName=a Gres=gpu:x:1 CPUs=1 # Gres=gpu:old:1\n"
    assert set_("# NodeName=a Gres=gpu:old:1\nNodeName=a CPUs=1\n", "a", "gpu:x:1").endswith("NodeName=a Gres=gpu:x:1 CPUs=1\n")
    with pytest.raises(S.SlurmError, match="no line 'NodeName=a"):
        set_("# NodeName=a CPUs=1\nNodeName=b\n", "a", "gpu:x:1")
    with pytest.raises(S.SlurmError, match="more than one"):
        set_("NodeName=a\nNodeName=a\n", "a", "gpu:x:1")


def test_gres_files_are_validated_then_written_atomically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env = make_env(tmp_path, monkeypatch, "1xH100-80GB")
    env.layout(0, ["3g.40gb"])
    etc = tmp_path / "etc"
    etc.mkdir()
    real = tmp_path / "real-slurm.conf"
    real.write_text("NodeName=gpu01 CPUs=8\n")
    os.chmod(real, 0o600)
    os.chown(real, 1, 1)  # daemon:daemon
    conf = etc / "slurm.conf"
    conf.symlink_to(real)
    gres = etc / "gres.conf"
    gres.write_text("# site\n")
    os.chmod(gres, 0o640)
    # another user plants a symlink at the old, predictable temp name: it must not be followed
    victim = tmp_path / "victim"
    victim.write_text("root only\n")
    (etc / ".gres.conf.migctl.tmp").symlink_to(victim)

    # validation first: an unknown NodeName changes neither file
    r = env.migctl("slurm", "gres", "--node", "nope", "--gres-conf", str(gres), "--slurm-conf", str(conf))
    assert r.returncode == 2 and "no line 'NodeName=nope" in r.stderr
    assert gres.read_text() == "# site\n" and real.read_text() == "NodeName=gpu01 CPUs=8\n"

    r = env.migctl("slurm", "gres", "--node", "gpu01", "--gres-conf", str(gres), "--slurm-conf", str(conf))
    assert r.returncode == 0, r.stderr
    assert conf.is_symlink() and real.read_text().startswith("NodeName=gpu01 Gres=gpu:3g.40gb:1 CPUs=8")
    st = real.stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (1, 1, 0o600)
    assert gres.stat().st_mode & 0o777 == 0o640 and "# BEGIN migctl node=gpu01" in gres.read_text()
    assert victim.read_text() == "root only\n"
    assert (tmp_path / "real-slurm.conf.migctl.bak").read_text() == "NodeName=gpu01 CPUs=8\n"
    assert (etc / "gres.conf.migctl.bak").read_text() == "# site\n"
    assert not list(etc.glob("*.migctl-tmp"))


def _gres_node(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, profiles: list[str], slurm_conf: str) -> tuple:
    """A simulated 1xH100-80GB holding ``profiles`` on GPU 0, and a slurm.conf with ``slurm_conf``."""
    env = make_env(tmp_path, monkeypatch, "1xH100-80GB")
    env.layout(0, profiles)
    conf = tmp_path / "slurm.conf"
    conf.write_text(slurm_conf)
    return env, conf


def test_a_gres_conf_that_is_not_one_or_another_users_symlink_is_not_edited(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """--gres-conf naming a file that is not gres.conf (a typo, or a symlink to /etc/passwd) is refused before
    anything is written; so is a symlink owned by another user. Before, both got the node's block appended
    and were rewritten (a symlink's target replaced), with a backup."""
    env, conf = _gres_node(tmp_path, monkeypatch, ["3g.40gb"], "NodeName=gpu01 CPUs=8\n")
    passwd = tmp_path / "passwd"
    passwd.write_text("root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1::/usr/sbin:/usr/sbin/nologin\n")
    link = tmp_path / "gres.conf"
    link.symlink_to(passwd)
    r = env.migctl("slurm", "gres", "--node", "gpu01", "--gres-conf", str(link), "--slurm-conf", str(conf))
    assert r.returncode == 2, r.stdout + r.stderr
    assert (f"gres.conf {link}: line 1 is not gres.conf syntax (root:x:0:0:root:/root:/bin/bash); expected "
            "Key=Value words, comments or blank lines; refusing to edit it") in r.stderr
    assert passwd.read_text().startswith("root:x:0:0") and "migctl" not in passwd.read_text()
    assert conf.read_text() == "NodeName=gpu01 CPUs=8\n" and not list(tmp_path.glob("*.migctl.bak"))
    # a real gres.conf, linked by another user (UID 1, daemon): not followed either
    real = tmp_path / "real-gres.conf"
    real.write_text("# site\nAutoDetect=nvml\nname=gpu File=/dev/nvidia0 \\\n  Type=a100\n")
    link.unlink()
    link.symlink_to(real)
    os.lchown(link, 1, 1)
    r = env.migctl("slurm", "gres", "--node", "gpu01", "--gres-conf", str(link), "--slurm-conf", str(conf))
    assert r.returncode == 2 and f"gres.conf {link} is a symlink owned by UID 1; refusing to follow it" in r.stderr
    assert "migctl" not in real.read_text()
    os.lchown(link, 0, 0)  # root's own link is followed, and that file's syntax passes
    r = env.migctl("slurm", "gres", "--node", "gpu01", "--gres-conf", str(link), "--slurm-conf", str(conf))
    assert r.returncode == 0, r.stderr
    assert link.is_symlink() and "# BEGIN migctl node=gpu01" in real.read_text()


def test_simulated_node_never_writes_the_hosts_slurm_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env = make_env(tmp_path, monkeypatch, "1xH100-80GB")
    env.env.pop("SLURM_CONF", None)
    r = env.migctl("slurm", "gres", "--node", "gpu01")
    assert r.returncode == 2 and "simulated node" in r.stderr
    assert env.migctl("slurm", "gres", "--node", "gpu01", "--print").returncode == 0


def test_a_restart_command_that_leaves_a_daemon_running_is_not_waited_for(tmp_path: Path) -> None:
    """`--slurmd-restart 'slurmd -D &'` (no systemd) left slurmd holding the output pipe: the reconfiguration
    waited for --timeout, said "timed out" after a restart that had worked, and left the node drained. Its
    output now goes to a file; the command's own failure still ends with the last line it printed."""
    import os
    import signal

    from migctl.integrations.slurm import SlurmError, _run_shell

    pid = tmp_path / "pid"
    _run_shell(f"sleep 120 & echo $! > {pid}", "restarting slurmd", 60)
    try:
        os.kill(int(pid.read_text()), 0)  # returned while the daemon it started still runs
    finally:
        os.kill(int(pid.read_text()), signal.SIGKILL)
    with pytest.raises(SlurmError, match=r"restarting slurmd \(echo starting; echo no such unit >&2; exit 5\) "
                                         r"exited 5: no such unit$"):
        _run_shell("echo starting; echo no such unit >&2; exit 5", "restarting slurmd", 60)
    with pytest.raises(SlurmError, match=r"restarting slurmd \(sleep 30\) did not finish within 0.5 s; killed"):
        _run_shell("sleep 30", "restarting slurmd", 0.5)


@pytest.mark.parametrize("args, wrong", [
    (["--dev-prefix", "/dev\nName=x"], "--dev-prefix '/dev\\nName=x': not a device directory"),
    (["--dev-prefix", "a b"], "--dev-prefix 'a b': not a device directory"),
    (["--autodetect", "yes"], "--autodetect 'yes': valid: nvml (real MIG nodes) or off"),
    (["--node", "n#1"], "--node 'n#1': not a Slurm node name"),
    (["--node", "a b"], "--node 'a b': not a Slurm node name"),
], ids=["dev-prefix-newline", "dev-prefix-space", "autodetect", "node-comment", "node-space"])
def test_what_goes_into_slurm_lines_is_checked_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str],
                                                     wrong: str) -> None:
    """`--dev-prefix` with a newline wrote lines of its own into gres.conf (`Name=x/nvidia0,...`), a space split
    `MultipleFiles=`, `--autodetect yes` wrote `AutoDetect=yes`, and `--print` printed `NodeName=n#1` (a comment
    from '#'). Now one line, exit 2, files untouched."""
    env, conf = _gres_node(tmp_path, monkeypatch, ["1g.10gb"], "ClusterName=x\nNodeName=gpu01 CPUs=8 State=UNKNOWN\n")
    gres = tmp_path / "gres.conf"
    gres.write_text("# site\n")
    before = (conf.read_text(), gres.read_text())
    for extra in ([], ["--print"]):
        a = ["--node", "gpu01", *args] if "--node" not in args else args
        r = env.migctl("slurm", "gres", *a, "--gres-conf", str(gres), "--slurm-conf", str(conf), *extra)
        assert r.returncode == 2 and r.stdout == "", (r.stdout, r.stderr)
        assert r.stderr.count("\n") == 1 and wrong in r.stderr, r.stderr
    assert (conf.read_text(), gres.read_text()) == before
