"""The README's two commands are the contract with a newcomer; CI must run the second one."""

from __future__ import annotations

import re
from pathlib import Path

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
