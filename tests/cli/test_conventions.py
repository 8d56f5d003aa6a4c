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
