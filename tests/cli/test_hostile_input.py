"""Hostile input files: alias bombs, deep nesting, devices, FIFOs, huge files, broken journals and state paths.

Every case must end in one ``migctl: error:`` line, a non-zero exit and no change; none may hang or grow
without bound (the suite's timeout and the file limits make a regression fail, not stall).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cli_helpers import one_error_line


def billion_laughs() -> str:
    """552-byte-class YAML: 9 levels of 9 aliases each (~387 million nodes once expanded) under unknown keys."""
    text = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
    prev = "a"
    for name in "bcdefghi":
        text += f"{name}: &{name} [" + ",".join(["*" + prev] * 9) + "]\n"
        prev = name
    return text + "version: v1\nmig-configs: {x: [{devices: all, mig-enabled: false}]}\n"


def _hostile_files(tmp: Path) -> dict[str, Path]:
    bomb = tmp / "bomb.yaml"
    bomb.write_text(billion_laughs())
    deep = tmp / "deep.yaml"
    deep.write_text("[" * 100_000)
    fifo = tmp / "fifo.yaml"
    os.mkfifo(fifo)
    big = tmp / "big.yaml"
    with big.open("wb") as f:
        f.truncate(64 * 1024 * 1024)  # sparse: 64 MiB of NUL bytes, above the 16 MiB limit
    return {"bomb": bomb, "deep": deep, "fifo": fifo, "big": big, "dev": Path("/dev/zero"), "dir": tmp}


EXPECT = {"bomb": "aliases", "deep": "nested", "fifo": "FIFO", "big": "too large", "dev": "device",
          "dir": "directory"}


@pytest.mark.parametrize("kind", list(EXPECT))
def test_config_file_inputs_are_bounded(cli, tmp_path: Path, kind: str) -> None:
    files = _hostile_files(tmp_path)
    bad = files[kind]
    good = tmp_path / "ok.yaml"
    good.write_text("version: v1\nmig-configs:\n  all-disabled:\n    - devices: all\n      mig-enabled: false\n")
    runs = [
        ("validate", "-f", bad),
        ("apply", "-f", bad, "-c", "x"),
        ("apply", "-f", good, "-c", "all-disabled", "-k", bad, "--dry-run"),
        ("k8s", "export", "-f", bad, "-c", "x"),
        ("restore", "-f", bad),
        ("batch", bad),
        ("plan", bad),
        ("plan", bad, "--live"),
        ("k8s", "plan", bad, "--dry-run"),
        ("catalog", f"file:{bad}"),
    ]
    for args in runs:
        r = cli(*args)
        assert r.code != 0, args
        line = one_error_line(r)
        if not (kind == "bomb" and args[0] == "restore"):  # restore reads JSON: the bomb is invalid JSON there
            assert EXPECT[kind] in line, (args, line)
        assert len(line) < 400, (args, line)


def test_a_long_flat_yaml_file_is_refused_where_it_crosses_the_node_limit(cli, tmp_path: Path) -> None:
    """A valid-looking file of a million list items (4 MB, under the size limit) is refused at the item that
    crosses the 100,000-node limit, not after parsing all of it (which took over a minute and 860 MB for a
    200,000-job batch file before the count ran while composing)."""
    flat = tmp_path / "flat.yaml"
    flat.write_text("- x\n" * 1_000_000)
    for args in (("validate", "-f", flat), ("batch", flat)):
        line = one_error_line(r := cli(*args))
        assert r.code == 2 and "flat.yaml:100000: YAML has more than 100000 nodes" in line, (args, line)


@pytest.mark.parametrize("damage", ["garbage", "pages"])
def test_a_damaged_jobs_database_is_one_line(tmp_path: Path, damage: str) -> None:
    """A jobs database that is not SQLite at all, or whose pages are damaged, gives one line naming the file
    and what to do, exit 2, for the verbs that use it; apply refuses an unreadable one too (it cannot tell
    what is leased)."""
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    env = {**os.environ, "MIGCTL_STATE_DIR": str(state), "MIGCTL_SIM": "1xA30",
           "MIGCTL_SIM_STATE": str(state / "sim.json")}

    def migctl(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "migctl.cli.main", *args], env=env, text=True,
                              capture_output=True, timeout=120)

    assert migctl("mode", "enable", "-i", "0").returncode == 0
    db = state / "jobs.sqlite"
    if damage == "garbage":
        db.write_bytes(os.urandom(5000))
    else:
        for k in range(8):
            assert migctl("submit", "--name", f"j{k}", "--", "true").returncode == 0
        data = bytearray(db.read_bytes())
        for i in range(4096, len(data), 7):  # every page after the first
            data[i] = 0xAB
        db.write_bytes(bytes(data))
        for extra in ("-wal", "-shm"):
            (state / f"jobs.sqlite{extra}").unlink(missing_ok=True)
    cfg = tmp_path / "c.yaml"
    cfg.write_text("version: v1\nmig-configs:\n  a:\n    - devices: all\n      mig-enabled: true\n"
                   "      mig-devices: {2g.12gb: 2}\n")
    before = migctl("gpus", "--json").stdout
    verbs = [("jobs",), ("run", "--no-wait", "--", "true"), ("submit", "--", "true")]
    if damage == "garbage":  # (with damaged job pages the lease table may still read, and apply may go on)
        verbs.append(("apply", "-f", str(cfg), "-c", "a"))
    for args in verbs:
        r = migctl(*args)
        assert r.returncode == 2, (args, r.stderr)
        line = [ln for ln in r.stderr.splitlines() if ln.startswith("migctl: error:")]
        assert len(line) == 1 and "Traceback" not in r.stderr, (args, r.stderr)
        assert f"the jobs database {db} cannot be used" in line[0] and "Move it aside" in line[0], (args, line)
    assert migctl("gpus", "--json").stdout == before  # nothing applied


def test_sim_state_refuses_devices_fifos_dirs_and_missing_parents(cli, tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo.json")
    for path, what in (("/dev/zero", "regular file"), (tmp_path / "fifo.json", "regular file"),
                       (tmp_path, "regular file")):
        for args in (("sim", "status"), ("sim", "reset-state"), ("gpus",)):
            r = cli("--sim-state", str(path), *args)
            assert r.code != 0 and what in one_error_line(r), (path, args, r.err)
    missing = tmp_path / "no" / "such" / "state.json"
    r = cli("--sim-state", str(missing), "sim", "status")
    assert r.code != 0 and "does not exist" in one_error_line(r)
    assert not (tmp_path / "no").exists()


@pytest.mark.parametrize("column, value, expected", [
    ("cmd", "x", "job 1 has a damaged 'cmd' (not a JSON list)"),
    ("cmd", "[1]", "job 1 has a damaged 'cmd' (not a list of strings)"),
    ("env", "x", "job 1 has a damaged 'env' (not a JSON object)"),
    ("gpus", -1, "job 1 has a damaged 'gpus' (not a JSON list)"),
    ("gpus", '["a"]', "job 1 has a damaged 'gpus' (not a list of GPU indices)"),
    ("time_limit", "x", "job 1 has a damaged 'time_limit' ('x' is not a time limit"),
    ("created", "x", "job 1 has a damaged 'created' (not a time)"),  # (a traceback from `jobs` until 2026-12-03)
])
def test_a_damaged_job_row_is_one_line(cli, tmp_path: Path, column: str, value: object, expected: str) -> None:
    """A readable database with a job row holding what migctl never writes (edited by hand with sqlite3):
    `cancel` names the job and the field, exit 2 (each was a traceback: JSONDecodeError, TypeError,
    ValueError); `jobs` lists the other jobs and warns about that row in the same words, exit 0."""
    import sqlite3

    assert cli("mode", "enable", "-i", "0").code == 0
    assert cli("submit", "--profile", "1g.10gb", "--time-limit", "1h", "--", "true").code == 0
    conn = sqlite3.connect(tmp_path / "jobs.sqlite")
    with conn:
        conn.execute(f"UPDATE jobs SET {column}=?", (value,))  # noqa: S608 (a column name from the list above)
    conn.close()
    r = cli("cancel", "1")
    assert r.code == 2, r
    line = one_error_line(r)
    assert expected in line and "delete that row with sqlite3, or move the database aside" in line, line
    for args in (("jobs",), ("jobs", "--json")):
        r = cli(*args)
        assert r.code == 0, (args, r)
        line, = r.err.strip().splitlines()
        assert line.startswith("migctl: warning:") and expected in line and "delete that row" in line, (args, line)
    assert cli("jobs", "--json").json()["jobs"] == []
    conn = sqlite3.connect(tmp_path / "jobs.sqlite")
    assert conn.execute("SELECT state FROM jobs").fetchall() == [("queued",)]  # `cancel` changed nothing
    conn.close()


def _journal(cli, tmp_path: Path) -> Path:
    """Make a real journal by applying a config, then return the path where a pending journal would live."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text("version: v1\nmig-configs:\n  a:\n    - devices: all\n      mig-enabled: true\n"
                   "      mig-devices: {1g.10gb: 7}\n")
    assert cli("apply", "-f", cfg, "-c", "a", "-q").code == 0
    last = list(tmp_path.glob("apply-*.last.json"))
    assert len(last) == 1
    return last[0].with_name(last[0].name.replace(".last.json", ".journal.json"))


@pytest.mark.parametrize("change", [
    {"old": {}}, {"old": "oops"}, {"old": {"0": {"mig": True, "gis": [{"profile": 5}]}}},
    {"old": {"9": {"mig": False, "gis": []}}}, {"format": "x"}, {"next": -1}, None,
])
def test_recover_validates_the_journal_before_acting(cli, tmp_path: Path, change: dict | None) -> None:
    path = _journal(cli, tmp_path)
    data = json.loads(path.with_name(path.name.replace(".journal.json", ".last.json")).read_text())
    data["phase"], data["next"] = "forward", 3
    if change is None:
        text = "[" * 50_000  # deeper than any decoder should follow
    else:
        data.update(change)
        text = json.dumps(data)
    path.write_text(text)
    before = cli("gpus", "--json").out
    r = cli("recover")
    assert r.code == 2, r
    assert "journal" in one_error_line(r) and "nothing was changed" in r.err
    assert path.exists(), "a journal that could not be validated must be kept"
    assert cli("gpus", "--json").out == before


def _set(path: tuple, value: object):
    def change(layout: dict) -> None:
        for key in path[:-1]:
            layout = layout[key]
        layout[path[-1]] = value
    return change


def _append(path: tuple, value: object):
    def change(layout: dict) -> None:
        for key in path:
            layout = layout[key]
        layout.append(value)
    return change


# Each a checkpoint of GPU 0 (one 3g.40gb GI at 4 with its full CI) changed the way a damaged or hand-edited
# file would be. Before: the first four ended "refusing to destroy instances in use: GPU 0:  (stop them ...)"
# although nothing was in use; the CI cases destroyed the GI, created nothing and printed "restored".
@pytest.mark.parametrize("change, expected", [
    (_set(("gis", 0, "profile"), "9g.99gb"), "GI profile '9g.99gb' is not a profile of H100-80GB (valid: 1g.10gb"),
    (_set(("gis", 0, "start"), 1), "3g.40gb cannot start at memory slice 1 (valid starts: 0,4)"),
    (_append(("gis",), {"profile": "2g.20gb", "start": 4, "cis": []}), "memory slices 4:2 overlap 3g.40gb at 4:4"),
    (_append(("gis",), {"profile": "3g.40gb", "start": 4, "cis": []}), "overlap 3g.40gb at 4:4"),
    (_set(("gis", 0, "cis", 0, "profile"), "1g.10gb"), "compute instance profile '1g.10gb' is not one of 3g.40gb's"),
    (_set(("gis", 0, "cis", 0, "start"), 5), "compute instance 3g.40gb cannot start at compute slice 5 of a 3g.40gb"),
    (_append(("gis", 0, "cis"), {"profile": "2c.3g.40gb", "start": 0}), "do not fit in one 3g.40gb"),
    (_set(("mig",), 0), "damaged checkpoint: gpus[0].layout: expected a layout object with a boolean 'mig'"),
    (_set(("gis",), "x"), "damaged checkpoint: gpus[0].layout.gis: expected a list"),
], ids=["profile", "start", "overlap", "twice", "ci-profile", "ci-start", "ci-fit", "mig-0", "gis-str"])
def test_restore_refuses_a_checkpoint_the_gpu_cannot_hold(cli, tmp_path: Path, change, expected: str) -> None:
    assert cli("mode", "enable", "-i", "0").code == 0
    assert cli("gi", "create", "-i", "0", "3g.40gb", "--placement", "4", "-C").code == 0
    ck = tmp_path / "ck.json"
    assert cli("checkpoint", "-f", ck).code == 0
    data = json.loads(ck.read_text())
    change(data["gpus"][0]["layout"])
    ck.write_text(json.dumps(data))
    before = cli("gpus", "--json").out
    for args in (("restore", "-f", ck, "-q"), ("restore", "-f", ck, "--dry-run", "-q"),
                 ("restore", "-f", ck, "--force", "-q")):
        r = cli(*args)
        assert r.code == 2, (args, r)
        line = one_error_line(r)
        assert expected in line and "nothing was changed" in line, (args, line)
    assert cli("gpus", "--json").out == before


# ------------------------------------------------------------------------------------------------ numbers
@pytest.mark.parametrize("args", [
    ("apply", "-f", "x.yaml", "-c", "a", "--lock-timeout", "nan"),
    ("apply", "-f", "x.yaml", "-c", "a", "--wait", "-1"),
    ("apply", "-f", "x.yaml", "-c", "a", "--wait", "inf"),
    ("restore", "-f", "x.json", "--lock-timeout", "-5"),
    ("recover", "--lock-timeout", "nan"),
    ("run", "--wait", "nan", "--", "true"),
    ("run", "--wait", "-1", "--", "true"),
    ("submit", "--priority", "99999999999999999999999", "--", "true"),
    ("cancel", "99999999999999999999"),
    ("cancel", "0"),
    ("logs", "99999999999999999999"),
    ("worker", "--poll", "-1", "--until-idle"),
    ("worker", "--poll", "0", "--until-idle"),
    ("plan", "x.yaml", "--time-limit", "nan"),
    ("plan", "x.yaml", "--seed", "-1"),
    ("slurm", "reconfigure", "--timeout", "nan"),
    ("run", "--gpu", "0,,0", "--", "true"),
    ("run", "--gpu", "", "--", "true"),
    ("run", "--profile", "", "--", "true"),
    ("jobs", "--state", "runing"),
    ("bench", "--lock-timeout", "nan", "--", "true"),  # was a traceback from filelock
])
def test_bad_numbers_and_values_get_one_line(cli, args: tuple[str, ...]) -> None:
    r = cli(*args)
    assert r.code == 2, (args, r)
    line = one_error_line(r)
    assert "valid" in line, line


@pytest.mark.parametrize("kind", ["directory", "long name", "missing directory", "fifo"])
def test_output_paths_are_refused_before_any_work(cli, tmp_path: Path, kind: str) -> None:
    """A bad output path is one line before anything runs: ``bench`` used to measure every size, then fail to
    write, and ``plan`` to solve first; ``checkpoint --file`` with a name over 255 bytes was a traceback
    (ENAMETOOLONG from a stat). Nothing changes (``plan --apply`` neither)."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    bad = {"directory": tmp_path, "long name": tmp_path / ("x" * 300), "missing directory": tmp_path / "no" / "f",
           "fifo": fifo}[kind]
    why = {"directory": "is a directory", "long name": "file name longer than", "missing directory": "does not exist",
           "fifo": "not a regular file"}[kind]
    assert cli("mode", "enable").code == 0
    before = cli("gpus", "--json").json()
    work = tmp_path / "w.yaml"
    work.write_text("fleet: [{model: H100-80GB, count: 1}]\nworkloads: [{name: a, profile: 1g.10gb, count: 1}]\n")
    for args in (("checkpoint", "--file", bad), ("bench", "--out", bad, "--", "true"),
                 ("bench", "--json-out", bad, "--", "true"), ("bench", "--plot", bad, "--", "true"),
                 ("plan", work, "--svg", bad, "--apply"), ("plan", work, "--config-out", bad, "--apply"),
                 ("gpus", "--svg", bad)):
        r = cli(*args)
        assert r.code == 2, (args, r)
        line = one_error_line(r)  # no progress line: nothing was measured
        assert why in line and "cannot write" in line, line
    assert cli("gpus", "--json").json() == before


def test_worker_with_bad_poll_leaves_no_job_running(cli) -> None:
    assert cli("mode", "enable").code == 0
    assert cli("submit", "--", "true").code == 0
    assert cli("worker", "--poll", "-1", "--until-idle").code == 2
    jobs = cli("jobs", "--all", "--json").json()
    assert [j["state"] for j in (jobs["jobs"] if isinstance(jobs, dict) else jobs)] == ["queued"]


# ------------------------------------------------------------------------------------------- text and bytes
def _migctl(tmp_path: Path, *args: bytes | str, cwd: Path | bytes | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "MIGCTL_STATE_DIR": str(tmp_path / "state"), "MIGCTL_SIM": "1xA30", "PYTHONIOENCODING": ""}
    env.pop("MIGCTL_SIM_STATE", None)
    return subprocess.run([sys.executable, "-m", "migctl", *args], capture_output=True, env=env, cwd=cwd,
                          timeout=120)


def test_non_utf8_arguments_and_cwd_are_one_line(tmp_path: Path) -> None:
    assert _migctl(tmp_path, "mode", "enable").returncode == 0
    for args in ((b"submit", b"--name", b"\xff\xfe", b"--", b"true"), (b"jobs", b"--state", b"\xff"),
                 (b"validate", b"-f", b"/nonexistent/\xff.yaml")):
        r = _migctl(tmp_path, *args)
        err = r.stderr.decode("utf-8")
        assert r.returncode == 2 and "Traceback" not in err, (args, err)
        assert len(err.strip().splitlines()) == 1 and err.startswith("migctl: error:"), err
    odd = tmp_path / os.fsdecode(b"dir\xff")
    odd.mkdir()
    r = _migctl(tmp_path, "submit", "--", "true", cwd=odd)
    err = r.stderr.decode()
    assert r.returncode == 2 and err.startswith("migctl: error:") and "UTF-8" in err, err


def test_job_names_with_escape_sequences_are_printed_escaped(cli) -> None:
    evil = "x\x1b]0;pwned\x07\x1b[2J\r\nfake"
    assert cli("mode", "enable").code == 0
    assert cli("submit", "--name", evil, "--", "true").code == 0
    r = cli("jobs")
    assert "\x1b" not in r.out and "\x07" not in r.out and "\r" not in r.out
    assert "\\x1b]0;pwned" in r.out


def test_error_lines_escape_what_they_quote(cli, tmp_path: Path) -> None:
    """An error quoting a config's labels printed them as they were: a label holding an escape sequence (or a
    newline) reached the terminal, and a newline made the error two lines. Every `migctl: error:` line now
    has its control characters escaped."""
    f = tmp_path / "c.yaml"
    f.write_text('version: v1\nmig-configs:\n  "a\\e[2J\\nb":\n    - devices: all\n      mig-enabled: false\n')
    r = cli("apply", "-f", str(f), "-c", "zz")
    assert r.code == 2 and "\x1b" not in r.err and r.err.count("\n") == 1, r.err
    assert r.err.startswith("migctl: error: ") and "(valid: a\\x1b[2J\\nb)" in r.err


@pytest.mark.parametrize("argv, wrong", [
    (("submit", "--tme-limit", "5m", "--", "true"), "no such option: --tme-limit (see 'migctl submit --help'; the "
                                                    "command goes after --)"),
    (("run", "--tme-limit", "5m", "--", "true"), "no such option: --tme-limit (see 'migctl run --help'"),
    (("bench", "--bogus", "--", "true"), "no such option: --bogus (see 'migctl bench --help'"),
    (("submit", "--", ""), "the command is empty"),
], ids=["submit", "run", "bench", "empty"])
def test_a_mistyped_option_is_not_taken_for_the_command(cli, argv: tuple[str, ...], wrong: str) -> None:
    """CMD keeps its own options, so an option of ours that does not exist became CMD: `submit --tme-limit 5m --
    true` queued the command `--tme-limit 5m -- true` (it failed when a worker started it), `run` said
    "command '--tme-limit' not found" with exit 127. `submit -- ''` queued an empty command."""
    assert cli("mode", "enable").code == 0
    r = cli(*argv)
    assert r.code == 2 and wrong in one_error_line(r)
    assert cli("jobs", "--all", "--json").json()["jobs"] == []
    r = cli("submit", "--", "true", "-x", "--y")  # after the command, options are the command's
    assert r.code == 0 and cli("jobs", "--json").json()["jobs"][0]["cmd"] == ["true", "-x", "--y"]
