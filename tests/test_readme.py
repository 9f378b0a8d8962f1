"""The README's two commands are the contract with a newcomer; CI must run the second one."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"```bash\n(.*?)```", text, re.S)
    assert block, "README.md must open with a bash block holding the two commands"
    return [ln.strip() for ln in block.group(1).strip().splitlines() if ln.strip()]


def test_readme_opens_with_two_commands() -> None:
    commands = _readme_commands()
    assert len(commands) == 2
    assert "audiotool upsample examples/" in commands[0] and " -o " in commands[0]
    assert "pytest" in commands[1]


def test_ci_runs_the_readme_test_command_verbatim() -> None:
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert _readme_commands()[1] in [ln.strip() for ln in ci]


def test_readme_example_clip_exists() -> None:
    clip = re.search(r"(examples/\S+)", _readme_commands()[0])
    assert clip and (ROOT / clip.group(1)).is_file(), f"{clip} is not in the repository"


# --------------------------------------------------------------------------- every documented line


def _bash_lines() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        block = re.sub(r"\\\n\s*", " ", block)  # join continued lines
        for ln in block.splitlines():
            ln = ln.split(" #")[0].strip()
            if ln:
                lines.append(ln)
    return lines


def _invocations() -> list[list[str]]:
    """Every ``audiotool ...`` command in the README's bash blocks, as argument lists."""
    found = []
    for line in _bash_lines():
        for part in re.split(r"\s*(?:\||&&)\s*", line):
            words = shlex.split(part.replace("[", "").replace("]", ""))
            if "audiotool" not in words:
                continue
            found.append(words[words.index("audiotool") + 1 :])
    return found


def _command(args: list[str]) -> tuple[Any, list[str]]:
    """The (sub)command an argument list reaches, and the arguments left for it."""
    import typer

    from audiotool.cli.app import app

    cmd = typer.main.get_command(app)
    rest = list(args)
    while rest and hasattr(cmd, "commands") and rest[0] in cmd.commands:
        cmd = cmd.commands[rest.pop(0)]
    return cmd, rest


def test_readme_has_documented_commands() -> None:
    assert len(_invocations()) >= 20


@pytest.mark.parametrize("args", _invocations(), ids=" ".join)
def test_readme_commands_use_existing_commands_and_options(args: list[str]) -> None:
    cmd, rest = _command(args)
    assert not hasattr(cmd, "commands"), f"'audiotool {' '.join(args)}' names no command"
    known = {o for p in cmd.params for o in (*p.opts, *p.secondary_opts)} | {"--help", "-h"}
    used = [w.split("=")[0] for w in rest if w.startswith("-") and w != "-"]
    assert set(used) <= known, f"unknown option(s) {sorted(set(used) - known)}"


def test_readme_benchmark_scripts_exist() -> None:
    for line in _bash_lines():
        if line.startswith("python benchmarks/"):
            assert (ROOT / line.split()[1]).is_file(), line


def test_readme_cheap_commands_run() -> None:
    """The lines that need no data or model download run as written (from the repo root)."""
    from typer.testing import CliRunner

    from audiotool.cli.app import app

    runner = CliRunner()
    for args in _invocations():
        if args[:2] == ["models", "list"] or args[-1:] == ["--help"]:
            result = runner.invoke(app, args)
            assert result.exit_code == 0, (args, result.output)
    # `audiotool info examples/*`: every audio clip of examples/ is read (the folder also holds
    # a README and a licence file, counted as failed inputs until the batch layer skips them)
    clips = sorted(p for p in (ROOT / "examples").iterdir() if p.suffix in (".wav", ".flac"))
    result = runner.invoke(app, ["info", "--json", *map(str, clips)])
    assert result.exit_code == 0, result.output
