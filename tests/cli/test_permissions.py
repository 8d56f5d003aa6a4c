"""Files and permissions: a private state dir whatever the umask, no trust in other users' files, no stale
temp files, and queued jobs that run with their submitter's environment."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import pytest
from cli_helpers import one_error_line


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


@pytest.fixture
def loose_umask():
    old = os.umask(0)
    yield
    os.umask(old)


def test_state_dir_db_logs_and_journals_are_private_under_any_umask(cli, tmp_path: Path, monkeypatch,
                                                                    loose_umask) -> None:
    sd = tmp_path / "fresh" / "state"
    monkeypatch.setenv("MIGCTL_STATE_DIR", str(sd))
    from migctl import paths

    paths._ready.discard(str(sd))
    cfg = tmp_path / "c.yaml"
    cfg.write_text("version: v1\nmig-configs:\n  a:\n    - devices: all\n      mig-enabled: true\n"
                   "      mig-devices: {1g.10gb: 2}\n")
    assert cli("apply", "-f", cfg, "-c", "a", "-q").code == 0
    assert cli("submit", "--name", "secret", "--", "sh", "-c", "echo TOKEN=hunter2").code == 0
    assert cli("worker", "--until-idle", "-q").code == 0
    assert _mode(sd) == 0o700
    files = [p for p in sd.rglob("*") if p.is_file()]
    names = {p.name for p in files}
    assert "jobs.sqlite" in names and any(n.endswith(".log") for n in names)
    assert any(n.endswith(".last.json") for n in names) and any(n.endswith(".json") for n in names)
    for p in files:
        assert _mode(p) & 0o077 == 0, (p, oct(_mode(p)))
    for d in [p for p in sd.rglob("*") if p.is_dir()]:
        assert _mode(d) & 0o077 == 0, (d, oct(_mode(d)))


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create a directory owned by another user")
def test_state_dir_of_another_user_is_refused(cli, tmp_path: Path, monkeypatch) -> None:
    sd = tmp_path / "theirs"
    sd.mkdir(mode=0o700)
    os.chown(sd, 65534, 65534)
    monkeypatch.setenv("MIGCTL_STATE_DIR", str(sd))
    r = cli("jobs")
    assert r.code == 2 and "owned by uid 65534" in one_error_line(r)
    assert list(sd.iterdir()) == []


def test_world_writable_state_dir_and_foreign_db_are_refused(cli, tmp_path: Path, monkeypatch) -> None:
    sd = tmp_path / "open"
    sd.mkdir()
    os.chmod(sd, 0o777)
    monkeypatch.setenv("MIGCTL_STATE_DIR", str(sd))
    r = cli("jobs")
    assert r.code == 2 and "writable by group or others" in one_error_line(r)
    os.chmod(sd, 0o700)
    from migctl import paths

    paths._ready.discard(str(sd))
    (sd / "jobs.sqlite").touch()
    os.chmod(sd / "jobs.sqlite", 0o666)
    r = cli("jobs")
    assert r.code == 2 and "jobs database" in one_error_line(r)


def test_stale_temp_files_of_killed_writers_are_removed(cli, tmp_path: Path, monkeypatch) -> None:
    sd = tmp_path / "s"
    (sd / "sim").mkdir(parents=True, mode=0o700)
    os.chmod(sd, 0o700)
    old = time.time() - 3600
    stale = [sd / ".journal-abc123.tmp", sd / "sim" / ".state-xyz789.tmp"]
    fresh = sd / ".journal-fresh.tmp"
    for p in [*stale, fresh]:
        p.write_text("{")
    for p in stale:
        os.utime(p, (old, old))
    monkeypatch.setenv("MIGCTL_STATE_DIR", str(sd))
    from migctl import paths

    paths._ready.discard(str(sd))
    assert cli("gpus").code == 0
    assert not any(p.exists() for p in stale)
    assert fresh.exists()  # may belong to a writer that is still running


def test_queued_job_gets_the_submitters_environment_not_the_workers(cli, tmp_path: Path, monkeypatch) -> None:
    assert cli("mode", "enable").code == 0
    monkeypatch.setenv("SUBMITTER_ONLY", "from-submitter")
    monkeypatch.delenv("WORKER_SECRET", raising=False)
    out = tmp_path / "env.txt"
    assert cli("submit", "--", "sh", "-c", f'echo "$SUBMITTER_ONLY/${{WORKER_SECRET:-unset}}" > {out}').code == 0
    monkeypatch.delenv("SUBMITTER_ONLY")
    monkeypatch.setenv("WORKER_SECRET", "worker-credential")
    assert cli("worker", "--until-idle", "-q").code == 0
    assert out.read_text().strip() == "from-submitter/unset"


def test_a_relative_state_dir_is_refused(cli, tmp_path: Path, monkeypatch) -> None:
    """A relative MIGCTL_STATE_DIR was created under the working directory: a worker started elsewhere, or
    migctl called from a batch job with a cwd of its own, saw another queue and other leases. Now one line, for migctl and the drop-in,
    and nothing is created."""
    import subprocess
    import sys

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MIGCTL_STATE_DIR", "rel/state")
    r = cli("gpus")
    assert r.code == 2 and "MIGCTL_STATE_DIR 'rel/state' is not an absolute path" in one_error_line(r)
    p = subprocess.run([sys.executable, "-m", "migctl.parted", "export"], capture_output=True, text=True,
                       env={**os.environ, "MIGCTL_SIM": "1xA30"}, timeout=60)
    assert p.returncode == 1 and p.stderr.count("\n") == 1
    assert "level=fatal msg=\"MIGCTL_STATE_DIR 'rel/state' is not an absolute path" in p.stderr, p.stderr
    assert not (tmp_path / "rel").exists()


def test_a_full_disk_names_the_file_and_changes_nothing(cli, tmp_path: Path, monkeypatch) -> None:
    """A write that the disk refuses (ENOSPC from write or fsync names no file) says which file, one line;
    apply changes nothing when its journal cannot be written. (It said only 'No space left on device'.)"""
    import errno

    import migctl.paths

    assert cli("mode", "enable", "-i", "0").code == 0
    cfg = tmp_path / "c.yaml"
    cfg.write_text("version: v1\nmig-configs:\n  a:\n    - devices: all\n      mig-enabled: true\n"
                   "      mig-devices: {1g.10gb: 7}\n")
    real_fsync = os.fsync

    def full(fd: int) -> None:
        if os.readlink(f"/proc/self/fd/{fd}").endswith(".tmp"):  # the temp files of atomic writes
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    monkeypatch.setattr(migctl.paths.os, "fsync", full)
    before = cli("gi", "list", "--json").out
    r = cli("apply", "-f", cfg, "-c", "a", "-q")
    assert r.code != 0
    line = one_error_line(r)
    assert "No space left on device: " in line and ".journal.json" in line, line
    assert cli("gi", "list", "--json").out == before
    assert not [p for p in tmp_path.rglob("*.tmp")]  # no temp file left behind
