"""The CLI's promises at its edges: one clear message for bad options, outputs checked before work,
full-width output when piped, every option explained, figures labelled with what they are for."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
import typer
from typer.testing import CliRunner

from chipfuse import __version__
from chipfuse.cli.main import app

runner = CliRunner()


def cli(*args: str) -> subprocess.CompletedProcess:
    """The real command in a child process, output piped (as a script or CI sees it)."""
    return subprocess.run([sys.executable, "-m", "chipfuse.cli.main", *args], capture_output=True, text=True,
                          timeout=300)


def test_version():
    r = runner.invoke(app, ["--version"])
    assert r.exit_code == 0 and r.output.strip() == f"chipfuse {__version__}"


def test_every_option_of_every_command_has_help():
    cmd = typer.main.get_command(app)
    missing = [f"{name} {p.opts[0]}" for name, sub in cmd.commands.items() for p in sub.params
               if getattr(p, "help", None) in (None, "") and p.param_type_name == "option"]
    assert not missing, f"options without help: {missing}"


@pytest.mark.parametrize("args, expect", [
    (["--batch", "0"], "--batch 0: must be between 1 and"),
    (["--prompt-tokens", "0"], "--prompt-tokens 0: must be between 1 and"),
    (["--context", "-5"], "--context -5: must be between 1 and"),
    (["--context", "-5", "--prompt-tokens", "0"], "--context -5"),  # the context is named, not the prompt
    (["--dies", "0"], "--dies 0: must be between 1 and 4 dies"),
    (["--target-tokens-per-s", "0"], "--target-tokens-per-s 0: give a rate above 0"),
    (["--target-tokens-per-s", "nan"], "--target-tokens-per-s nan"),
])
def test_bad_plan_options_are_one_message_naming_the_option(args, expect):
    r = runner.invoke(app, ["plan", "-m", "smollm2", "-s", "talk-4die-d2d", *args])
    assert r.exit_code == 2, r.output
    assert expect in r.output and "Traceback" not in r.output
    if "--context" in args:
        assert "--prompt-tokens" not in r.output.split("error:")[-1].split(":")[0]


def test_output_into_a_missing_folder_is_refused_before_any_work(tmp_path):
    missing = tmp_path / "no-such-folder" / "plan.json"
    r = runner.invoke(app, ["plan", "-m", "smollm2", "-s", "talk-4die-d2d", "--json", str(missing)])
    assert r.exit_code == 2 and "no-such-folder" in r.output and "does not exist" in r.output
    r = runner.invoke(app, ["plan", "-m", "smollm2", "-s", "talk-4die-d2d", "--json", str(tmp_path)])
    assert r.exit_code == 2 and "is a directory" in r.output


@pytest.mark.parametrize("command", [
    ["run", "--json"], ["probe", "--out"], ["quantize", "--json"], ["quantize", "--recipe-out"],
    ["calibrate", "--markdown"],
])
def test_long_commands_check_their_output_path_first(tmp_path, command):
    """A run, a probe or a quantization that would be lost at the end is refused at once instead."""
    t0 = time.monotonic()
    r = runner.invoke(app, [*command, str(tmp_path / "missing" / "out.file")])
    assert r.exit_code == 2, r.output
    assert "missing" in r.output and "does not exist" in r.output
    assert time.monotonic() - t0 < 20  # no dies started, no probe, no model loaded


def test_piped_output_is_not_cut_to_80_columns():
    r = cli("plan", "-m", "smollm2", "-s", "talk-4die-d2d", "--precision", "int4-g128-sym")
    assert r.returncode == 0, r.stderr
    assert "int4-g128-sym" in r.stdout and "…" not in r.stdout


def test_plan_output_says_which_system_its_prediction_is_for():
    r = runner.invoke(app, ["plan", "-m", "llama-2-7b", "-s", "talk-heavy-2die-pcie"])
    assert r.exit_code == 0, r.output
    assert "predicted on talk-heavy-2die-pcie:" in r.output
    assert "GB/s" in r.output and "tokens/s" in r.output


def test_route_shows_hops_through_the_host_and_switches():
    r = runner.invoke(app, ["plan", "-m", "llama-2-7b", "-s", "talk-heavy-2die-pcie", "--split", "pipeline"])
    assert "route: host -> die0 -> host -> die1 -> host" in r.output, r.output
    assert "passes through host" in r.output
    r = runner.invoke(app, ["plan", "-m", "llama-2-7b", "-s", "talk-heavy-2die-pcie", "--split", "tensor"])
    assert "route: host -> [die0+die1] -> host" in r.output, r.output
    r = runner.invoke(app, ["plan", "-m", "smollm2", "-s", "talk-4die-pcie", "--split", "pipeline"])
    assert "-> pcie-switch ->" in r.output and "passes through" in r.output


def test_catalogue_alias_is_reported():
    r = cli("plan", "-m", "llama3-8b", "-s", "talk-heavy-2die-pcie")
    assert r.returncode == 0, r.stderr
    assert "llama3-8b is an alias of the catalogue entry llama-3.1-8b" in r.stderr


def test_long_steps_print_progress_when_piped(tmp_path):
    """Piped, a status becomes timestamped lines on stderr (a spinner would print nothing)."""
    r = cli("calibrate", "--markdown", str(tmp_path / "cal.md"))
    assert r.returncode == 0, r.stderr
    assert "fitting efficiency factors" in r.stderr and " s] " in r.stderr


def test_probe_file_maps_onto_any_die_names(base_system, system_factory):
    """A probe names its dies die0..dieN; a plan's dies may be called anything: they map by stage order."""
    from chipfuse.api import this_host_prediction
    from chipfuse.compile.compiler import compile_plan
    from chipfuse.frontends import load_model_config
    from chipfuse.hw.load import parse_system

    board = dict(base_system, name="my-board")
    board["dies"] = [{"name": "npu-left", "type": "npu"}, {"name": "npu-right", "type": "npu"}]
    board["links"] = [{"between": ["host", "npu-left"], "kind": "pcie", "gen": 3, "lanes": 4},
                      {"between": ["npu-left", "npu-right"], "kind": "pcie", "gen": 3, "lanes": 4}]
    plan = compile_plan(load_model_config("smollm2"), parse_system(board, "my-board.yaml"), context=1024)
    assert [st.die for st in plan.stages] == ["npu-left", "npu-right"]
    host = system_factory(2)  # named die0, die1 like a probe's
    pred = this_host_prediction(plan, 20, host)
    assert [sp.die for sp in pred.stages] == ["npu-left", "npu-right"]
    assert pred.decode_tokens_per_s > 0


def test_probe_file_is_checked_before_the_dies_start(tmp_path):
    bad = tmp_path / "host.yaml"
    bad.write_text("name: x\n")
    t0 = time.monotonic()
    r = runner.invoke(app, ["run", "--probe", str(bad)])
    assert r.exit_code == 2 and str(bad) in r.output
    assert time.monotonic() - t0 < 20


def test_run_refuses_max_tokens_that_leave_no_room_for_a_prompt():
    r = runner.invoke(app, ["run", "--max-tokens", "2048", "--context", "2048"])
    assert r.exit_code == 2 and "--max-tokens 2048: give 1..2047" in r.output


def test_sampling_options_out_of_range_are_usage_errors():
    for args in (["--top-p", "1.5"], ["--temperature", "-1"], ["--top-k", "-3"], ["--max-tokens", "0"]):
        r = runner.invoke(app, ["run", *args])
        assert r.exit_code == 2, args
        assert args[0] in r.output


def test_quantize_has_a_quick_mode_and_a_window_count():
    r = runner.invoke(app, ["quantize", "--help"], env={"COLUMNS": "200"})
    assert "--quick" in r.output and "--windows" in r.output
