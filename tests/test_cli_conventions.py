"""The command line follows typer/click conventions: progress only on a terminal, --version, -q/-v
anywhere, choices listed and enforced, usual metavars, unbroken examples, rich tables, short lists."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest
from typer.testing import CliRunner

from concepts.cli import app

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "cvat_export"
COMMANDS = ["agreement", "build", "dissect", "info", "publish", "pull", "report", "validate"]
runner = CliRunner()


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run ``python -m concepts`` with stdout and stderr to pipes (not a terminal)."""
    base = {k: v for k, v in os.environ.items() if k not in ("CONCEPTS_NO_PROGRESS", "CONCEPTS_PROGRESS")}
    # Bytes, decoded here: text mode would turn the very carriage returns looked for into newlines.
    done = subprocess.run([sys.executable, "-m", "concepts", *args], capture_output=True,
                          env={**base, **(env or {})}, timeout=120, cwd=ROOT)
    done.stdout, done.stderr = done.stdout.decode(), done.stderr.decode()
    return done


def _help(*args: str) -> str:
    result = runner.invoke(app, [*args, "--help"], terminal_width=80)
    assert result.exit_code == 0, result.output
    return result.output


# --- progress bars ---------------------------------------------------------------------------

def test_no_progress_bars_when_stderr_is_not_a_terminal(tmp_path):
    done = _cli("build", "--from", str(EXAMPLE), "-o", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr
    assert "\r" not in done.stderr
    assert "%|" not in done.stderr


@pytest.mark.parametrize("how", [["--progress"], ["env"]])
def test_progress_bars_can_be_forced_on(tmp_path, how):
    env = {"CONCEPTS_PROGRESS": "1"} if how == ["env"] else None
    args = [] if how == ["env"] else how
    done = _cli(*args, "build", "--from", str(EXAMPLE), "-o", str(tmp_path / "out"), env=env)
    assert done.returncode == 0, done.stderr
    assert "\r" in done.stderr


def test_progress_forced_off_beats_the_environment(tmp_path):
    done = _cli("--no-progress", "build", "--from", str(EXAMPLE), "-o", str(tmp_path / "out"), env={"CONCEPTS_PROGRESS": "1"})
    assert done.returncode == 0, done.stderr
    assert "\r" not in done.stderr


def test_progress_default_follows_the_terminal(monkeypatch):
    from concepts import progress

    progress.set_enabled(None)
    monkeypatch.delenv("CONCEPTS_NO_PROGRESS", raising=False)
    monkeypatch.delenv("CONCEPTS_PROGRESS", raising=False)

    class Stream:
        def __init__(self, tty: bool) -> None:
            self.tty = tty

        def isatty(self) -> bool:
            return self.tty

    monkeypatch.setattr(sys, "stderr", Stream(True))
    assert progress.enabled()
    monkeypatch.setattr(sys, "stderr", Stream(False))
    assert not progress.enabled()
    monkeypatch.setenv("CONCEPTS_PROGRESS", "1")
    assert progress.enabled()
    monkeypatch.setenv("CONCEPTS_PROGRESS", "0")
    monkeypatch.setattr(sys, "stderr", Stream(True))
    assert not progress.enabled()
    monkeypatch.delenv("CONCEPTS_PROGRESS")
    monkeypatch.setenv("CONCEPTS_NO_PROGRESS", "1")
    assert not progress.enabled()


# --- version, verbosity, completion ----------------------------------------------------------

def test_version():
    done = _cli("--version")
    assert done.returncode == 0
    assert done.stdout.strip() == f"concept-dissection {version('concept-dissection')}"


@pytest.mark.parametrize("flag", ["-q", "--quiet"])
def test_quiet_after_the_subcommand(tmp_path, flag):
    loud = _cli("build", "--from", str(EXAMPLE), "-o", str(tmp_path / "a"))
    assert "INFO:" in loud.stderr
    for args in (["build", flag], [flag, "build"]):
        done = _cli(*args, "--from", str(EXAMPLE), "-o", str(tmp_path / args[0].strip("-")))
        assert done.returncode == 0, done.stderr
        assert done.stderr == ""


@pytest.mark.parametrize("command", COMMANDS)
def test_quiet_and_verbose_on_every_command(command):
    text = _help(command)
    assert "-q, --quiet" in text and "-v, --verbose" in text


def test_verbose_after_the_subcommand_shows_debug_logs():
    logger = logging.getLogger("concepts")
    result = runner.invoke(app, ["info", "-v", "/nonexistent-dataset"])
    assert result.exit_code != 0
    assert logger.level == logging.DEBUG
    result = runner.invoke(app, ["info", "/nonexistent-dataset"])
    assert logger.level == logging.INFO


def test_shell_completion_is_offered():
    assert "--install-completion" in _help()


# --- choices, required options, metavars, examples -------------------------------------------

@pytest.mark.parametrize("command,option,values", [
    ("dissect", "--union", ["ndlite", "netdissect", "global"]),
    ("dissect", "--normalize", ["imagenet", "netdissect", "none"]),
    ("dissect", "--device", ["cpu", "cuda", "cuda:N"]),
    ("report", "--device", ["cpu", "cuda", "cuda:N"]),
    ("build", "--recipe", ["broden"]),
])
def test_choices_listed_in_help(command, option, values):
    line = next(line for line in _help(command).splitlines() if line.strip().startswith(option))
    assert f"[{'|'.join(values)}" in line, line


@pytest.mark.parametrize("args,needle", [
    (["dissect", "{ds}", "--layer", "x", "--union", "max"], "'max' is not one of 'ndlite', 'netdissect', 'global'"),
    (["dissect", "{ds}", "--layer", "x", "--normalize", "imagenett"], "--normalize 'imagenett'"),
    (["dissect", "{ds}", "--layer", "x", "--device", "tpu"], "--device 'tpu'"),
    (["dissect", "{ds}", "--layer", "x", "--device", "cuda:x"], "--device 'cuda:x'"),
    (["report", "{ds}", "--device", "gpu"], "--device 'gpu'"),
    (["build", "--from", "{ds}", "-o", "{out}", "--recipe", "imagenet"], "'imagenet' is not one of 'broden'"),
])
def test_bad_choice_refused_before_any_work(tmp_path, args, needle):
    # The dataset does not exist: reading it would be the first piece of work, and a different error.
    args = [a.format(ds=tmp_path / "missing", out=tmp_path / "out") for a in args]
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("error:"), result.output
    assert needle in errors[0]
    assert "missing" not in errors[0]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command,option", [("build", "--from"), ("pull", "--output"), ("dissect", "--layer")])
def test_required_options_marked(command, option):
    text = _help(command)
    block = text[text.index(option):]
    assert "[required]" in block[: block.index("\n  -", 1) if "\n  -" in block[1:] else None]
    args = [command] + (["src"] if command in ("pull", "dissect") else [])
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert result.output.strip().startswith("error: Missing option") and option in result.output


@pytest.mark.parametrize("command", [[], *[[c] for c in COMMANDS]])
def test_metavars_in_the_usual_style(command):
    text = _help(*command)
    assert not re.search(r"<(list\[|str|int|float|path|bool)", text), text
    if command == ["build"]:
        assert "--size TEXT" in text and "--workers INTEGER" in text and "--concepts PATH" in text
        assert "--min-coverage FLOAT" in text
    if command == ["dissect"]:
        assert "Usage: concepts dissect [OPTIONS] DATASET" in text


@pytest.mark.parametrize("command", COMMANDS)
def test_examples_are_not_broken_mid_command(command):
    text = _help(command)
    examples = text[text.index("Example"):] if "Example" in text else ""
    lines = [line.strip() for line in examples.splitlines()]
    for i, line in enumerate(lines):
        if line.startswith("concepts "):
            # The line after a command is blank, another command or prose; never the command's tail.
            following = lines[i + 1] if i + 1 < len(lines) else ""
            assert following == "" or following.startswith("concepts ") or following[:1].isupper(), (line, following)


# --- warnings, lists, tables -----------------------------------------------------------------

def test_random_weights_warning_once(monkeypatch, tmp_path):
    import concepts.dissect.run as run_module
    from concepts.dissect.models import load_model

    def fake_dissect(cfg):
        # A run, then a report page per layer, each loading the same untrained model.
        for _ in range(3):
            load_model("resnet18", None, pretrained=False)
        return {"summary": {}}

    monkeypatch.setattr(run_module, "dissect", fake_dissect)
    result = runner.invoke(app, ["dissect", str(tmp_path), "--model", "resnet18", "--layer", "layer4", "-o", str(tmp_path / "o")])
    assert result.exit_code == 0, result.output
    assert result.output.count("random weights") == 1
    # A second command is a second run: it warns again.
    result = runner.invoke(app, ["dissect", str(tmp_path), "--model", "resnet18", "--layer", "layer4", "-o", str(tmp_path / "o")])
    assert result.output.count("random weights") == 1


def test_shorten():
    from concepts.listing import shorten

    assert shorten(["a", "b"]) == "a, b"
    assert shorten([f"n{i}" for i in range(25)], 3) == "n0, n1, n2, ... and 22 more"
    assert shorten(range(10), 10) == ", ".join(map(str, range(10)))


def test_unknown_layer_list_is_cut():
    import torch

    from concepts.dissect.hooks import check_layers
    from concepts.errors import ModelError

    model = torch.nn.Sequential(*[torch.nn.Identity() for _ in range(40)])
    with pytest.raises(ModelError) as caught:
        check_layers(model, ["nope"])
    assert "... and 30 more" in str(caught.value)
    assert "39" not in str(caught.value)


def test_info_prints_a_table_and_json_is_unchanged(tmp_path):
    out = tmp_path / "ds"
    assert runner.invoke(app, ["build", "--from", str(EXAMPLE), "-o", str(out)]).exit_code == 0
    result = runner.invoke(app, ["info", str(out)])
    assert result.exit_code == 0, result.output
    header = next(line for line in result.output.splitlines() if "category" in line and "kind" in line)
    assert [c.strip() for c in header.split("|")] == ["category", "labels", "images", "frequency", "kind"]
    rows = {line.split("|")[0].strip(): line for line in result.output.splitlines() if "|" in line}
    # The example export has 10 images: the colour category is in all of them, the scene in 4.
    assert [c.strip() for c in rows["scene"].split("|")][2] == "4"
    assert [c.strip() for c in rows["color"].split("|")][2] == "10"
    import json

    data = json.loads(runner.invoke(app, ["info", str(out), "--json"]).output)
    assert data["images"] == 10 and {c["name"] for c in data["categories"]} == {"color", "object", "scene"}
