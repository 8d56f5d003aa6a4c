"""CLI conventions and silent wrong results: --version, --sim after the verb, output files, refused combinations."""

from __future__ import annotations

from pathlib import Path

from cli_helpers import one_error_line


def test_version(cli) -> None:
    from migctl import __version__

    r = cli("--version", sim=None)
    assert r.code == 0 and r.out.strip() == f"migctl {__version__}"


def test_sim_is_accepted_after_the_verb(cli) -> None:
    before = cli("--sim", "1xA30", "gpus", "--json", sim=None)
    after = cli("gpus", "--json", "--sim", "1xA30", sim=None)
    assert before.code == after.code == 0 and before.out == after.out
    assert cli("gi", "list", "--sim=1xA30", sim=None).code in (0, 2)
    assert cli("mode", "enable", "--sim", "1xA30", sim=None).code == 0


def test_sim_in_a_run_command_is_left_to_the_command() -> None:
    from migctl.cli.main import hoist_global_options as h

    assert h(["gpus", "--sim", "1xA30"]) == ["--sim", "1xA30", "gpus"]
    assert h(["run", "-p", "1g.6gb", "--", "echo", "--sim", "x"]) == ["run", "-p", "1g.6gb", "--", "echo", "--sim", "x"]
    assert h(["run", "--sim", "1xA30", "echo", "--sim", "x"]) == ["--sim", "1xA30", "run", "echo", "--sim", "x"]
    assert h(["smi", "--sim", "x"]) == ["smi", "--sim", "x"]


def test_checkpoint_to_a_missing_directory_is_one_line(cli, tmp_path: Path) -> None:
    r = cli("checkpoint", "-f", tmp_path / "no" / "dir" / "x.json")
    assert r.code == 2 and "does not exist" in one_error_line(r)
    r = cli("checkpoint", "-f", tmp_path)
    assert r.code == 2 and "is a directory" in one_error_line(r)
    assert cli("checkpoint", "-f", tmp_path / "ok.json").code == 0 and (tmp_path / "ok.json").is_file()


def test_generate_config_refuses_unknown_formats(cli) -> None:
    r = cli("generate-config", "-o", "toml")
    assert r.code == 2 and "valid: yaml, json" in one_error_line(r)


def test_batch_refuses_profile_and_mem_together(cli, tmp_path: Path) -> None:
    assert cli("mode", "enable").code == 0
    for text in ("jobs: [{command: 'true', profile: 1g.10gb, mem: 20GiB}]\n",
                 "defaults: {profile: 1g.10gb}\njobs: [{command: 'true', mem: 20GiB}]\n"):
        f = tmp_path / "jobs.yaml"
        f.write_text(text)
        r = cli("batch", f)
        assert r.code == 2 and "not both" in one_error_line(r), r
    assert "no jobs" in cli("jobs", "--all").out


# ------------------------------------------------------------------------------------------ silent wrong results
def _write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_plan_apply_refuses_a_plan_for_other_gpus_and_unserved_demand(cli, tmp_path: Path) -> None:
    five = _write(tmp_path, "five.yaml", "fleet: [{model: H100-80GB, count: 5}]\n"
                                         "workloads: [{name: a, profile: 7g.80gb, count: 5}]\n")
    r = cli("plan", five, "--apply")
    assert r.code == 2 and "this node has 2 GPU(s); not applied" in one_error_line(r)
    a100 = _write(tmp_path, "a100.yaml", "fleet: [{model: A100-80GB, count: 1}]\n"
                                         "workloads: [{name: a, profile: 7g.80gb, count: 1}]\n")
    r = cli("plan", a100, "--apply")
    assert r.code == 2 and "which is a H100-80GB" in one_error_line(r)
    short = _write(tmp_path, "short.yaml", "fleet: [{model: H100-80GB, count: 1}]\n"
                                           "workloads: [{name: a, profile: 7g.80gb, count: 3}]\n")
    r = cli("plan", short)
    assert r.code == 1 and "unserved (a x2)" in one_error_line(r)
    r = cli("plan", short, "--apply")
    assert r.code == 1 and "not applied" in one_error_line(r)
    assert all(not g.get("mig_devices") for g in cli("gpus", "--json").json().get("gpus", []))
    nofleet = _write(tmp_path, "nofleet.yaml", "workloads: [{name: a, profile: 7g.80gb, count: 2}]\n")
    r = cli("plan", nofleet, "--apply")  # the fleet is the live node
    assert r.code == 0 and "applied plan" in r.out, r


def test_config_entries_naming_missing_gpus_or_matching_none_are_errors(cli, tmp_path: Path) -> None:
    seven = _write(tmp_path, "seven.yaml", "version: v1\nmig-configs:\n  a:\n    - devices: [7]\n"
                                           "      mig-enabled: true\n      mig-devices: {1g.10gb: 1}\n")
    r = cli("apply", "-f", seven, "-c", "a")
    assert r.code == 2 and "does not have" in one_error_line(r)
    a30 = _write(tmp_path, "a30.yaml", "version: v1\nmig-configs:\n  a:\n    - devices: all\n"
                                       "      device-filter: \"0x20B710DE\"\n      mig-enabled: true\n"
                                       "      mig-devices: {1g.6gb: 1}\n")
    r = cli("apply", "-f", a30, "-c", "a")
    assert r.code == 2 and "matches no GPU" in one_error_line(r)
    r = cli("validate", "-f", a30, "--model", "2xH100-80GB", "--json")
    assert r.code == 0 and r.json()["fit_on_model"] == [] and "a" in r.json()["not_on_model"]
    r = cli("validate", "-f", a30, "--model", "1xA30", "--json")
    assert r.code == 0 and r.json()["fit_on_model"] == ["a"]


def test_counts_beyond_what_a_node_or_fleet_holds_are_refused_early(cli, tmp_path: Path) -> None:
    big = _write(tmp_path, "big.yaml", "version: v1\nmig-configs:\n  a:\n    - devices: all\n"
                                       "      mig-enabled: true\n      mig-devices: {1g.10gb: 1000000}\n")
    r = cli("validate", "-f", big)
    line = one_error_line(r)
    assert r.code == 2 and "at most 7" in line and len(line) < 300
    plan = _write(tmp_path, "plan.yaml", "fleet: [{model: H100-80GB, count: 2}]\n"
                                         "workloads: [{name: a, profile: 1g.10gb, count: 100000000}]\n")
    r = cli("plan", plan)
    assert r.code == 2 and "can hold at most 14" in one_error_line(r)


def test_unknown_backend_is_refused(cli, monkeypatch) -> None:
    monkeypatch.setenv("MIGCTL_BACKEND", "foo")
    r = cli("gpus", sim=None)
    assert r.code == 2 and "MIGCTL_BACKEND" in one_error_line(r) and "valid" in r.err


# ------------------------------------------------------------------------------------------ --json, exit codes
# verbs whose output is not migctl's to shape: nvidia-smi's format, the command's or job's own output, a server,
# an interactive view
NO_JSON = {"smi", "run", "logs", "exporter", "top"}


def test_every_verb_takes_json() -> None:
    from typer.main import get_command

    from migctl.cli.main import app

    missing = []

    def walk(c, path: list[str]) -> None:
        subs = getattr(c, "commands", None)
        if subs:
            for n, s in subs.items():
                walk(s, [*path, n])
            return
        opts = {o for p in c.params for o in getattr(p, "opts", [])}
        if "--json" not in opts and "-o" not in opts and " ".join(path) not in NO_JSON:
            missing.append(" ".join(path))

    walk(get_command(app), [])
    assert missing == []


def test_json_outputs_are_top_level_objects(cli, tmp_path: Path) -> None:
    assert cli("mode", "enable").code == 0
    assert cli("submit", "--", "true").code == 0
    for args in (("jobs", "--all", "--json"), ("leases", "--json"), ("worker", "--until-idle", "-q", "--json"),
                 ("cancel", "1", "--json"), ("recover", "--json"), ("checkpoint", "-f", tmp_path / "c.json", "--json"),
                 ("restore", "-f", tmp_path / "c.json", "--json", "--dry-run")):
        r = cli(*args)
        assert r.code == 0, (args, r)
        assert isinstance(r.json(), dict), args
    cfg = _write(tmp_path, "c.yaml", "version: v1\nmig-configs:\n  all-disabled:\n    - devices: all\n"
                                     "      mig-enabled: false\n")
    r = cli("assert", "-f", cfg, "-c", "all-disabled", "--json")
    assert r.code == 1 and r.json()["applied"] is False and r.json()["differences"]


def test_exit_code_table_is_documented_and_matches_the_code() -> None:
    from migctl.reconcile.engine import EXIT_BUSY, EXIT_FAILED
    from migctl.reconcile.journal import EXIT_LOCKED

    doc = (Path(__file__).resolve().parents[2] / "docs" / "cli.md").read_text()
    table = doc[doc.index("### Exit codes"):]
    for code in (0, 1, 2, EXIT_BUSY, EXIT_LOCKED, EXIT_FAILED, 75, 130):
        assert f"\n| {code} |" in table, code
    assert (EXIT_BUSY, EXIT_LOCKED, EXIT_FAILED) == (3, 4, 5)
    from migctl.cli.devices import EXIT_BUSY as DEVICES_BUSY

    assert DEVICES_BUSY == EXIT_BUSY  # busy is one code: gi/ci destroy and reset as apply


def test_one_option_name_per_meaning() -> None:
    """-i/--gpu selects GPUs, -f/--file names the input file, -c/--config the label, wherever they apply."""
    from typer.main import get_command

    from migctl.cli.main import app

    seen: dict[str, set[str]] = {}

    def walk(c, path: list[str]) -> None:
        subs = getattr(c, "commands", None)
        if subs:
            for n, s in subs.items():
                walk(s, [*path, n])
            return
        for p in c.params:
            opts = set(getattr(p, "opts", []))
            for short, long in (("-i", "--gpu"), ("-f", "--file"), ("-c", "--config")):
                # smi takes nvidia-smi's words; logs -f is "follow", as in tail -f and kubectl logs -f
                if opts & {short, long} and " ".join(path) not in ("smi", "logs"):
                    seen.setdefault(" ".join(path), set()).add(short)
                    assert {short, long} <= opts, (path, opts)

    walk(get_command(app), [])
    assert {"-i"} <= seen["run"] and {"-f", "-c"} <= seen["slurm reconfigure"] and {"-f", "-c"} <= seen["apply"]


def test_the_internal_gate_never_shows(cli, tmp_path: Path) -> None:
    assert cli("mode", "enable").code == 0
    r = cli("run", "--", "no-such-command-xyz")
    assert r.code == 127 and "not found" in one_error_line(r) and "gate" not in r.err
    plain = _write(tmp_path, "plain.txt", "not a program\n")
    r = cli("run", "--", plain)
    assert r.code == 126 and "not executable" in one_error_line(r)


def test_mem_20gb_means_what_profile_names_mean(cli) -> None:
    assert cli("mode", "enable", sim="1xH100-80GB").code == 0
    r = cli("run", "-v", "--mem", "20gb", "--", "true", sim="1xH100-80GB")
    assert r.code == 0 and "1g.20gb" in r.err, r  # 20096 MiB, named 20gb: not skipped for a 3g.40gb
    r = cli("run", "-v", "--mem", "20481MiB", "--", "true", sim="1xH100-80GB")
    assert r.code == 0 and "1g.20gb" not in r.err and "2g.20gb" not in r.err, r
