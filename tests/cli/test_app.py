"""The CLI shell: help, version, error boundary, models commands, and a real subprocess."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from audiotool import __version__
from audiotool.cli.app import app, error_message, main
from audiotool.errors import AudioReadError, UsageError

runner = CliRunner()


def run_main(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Run the real entry point (error boundary included) and capture its streams."""
    with pytest.raises(SystemExit) as exc:
        main(args)
    out, err = capsys.readouterr()
    code = exc.value.code
    return (code if isinstance(code, int) else 1), out, err


def test_help_lists_commands() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for cmd in ("upsample", "separate", "reconstruct", "embed", "info", "models"):
        assert cmd in result.output


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_main(["--version"], capsys)
    assert code == 0 and out.strip() == f"audiotool {__version__}"


def test_unknown_option_is_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_main(["models", "list", "--bogus"], capsys)
    assert code == 2 and "--bogus" in err


def test_error_table() -> None:
    msg, code = error_message(AudioReadError("x.wav: broken", hint="re-export it"))
    assert (msg, code) == ("x.wav: broken — re-export it", 1)
    assert error_message(UsageError("bad flag"))[1] == 2
    msg, code = error_message(ValueError("oops"))
    assert code == 1 and "internal error ValueError" in msg and "AUDIOTOOL_DEBUG" in msg
    msg, _ = error_message(FileNotFoundError(2, "No such file or directory", "/x"))
    assert "/x" in msg


def test_debug_env_shows_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUDIOTOOL_DEBUG", "1")
    monkeypatch.setenv("AUDIOTOOL_ZOO", "/nonexistent-zoo")
    from audiotool.errors import ModelNotFoundError

    with pytest.raises(ModelNotFoundError):
        main(["models", "info", "nosuch"])


def test_models_list_json(
    empty_zoo: Path, model_folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shutil.copytree(model_folder, empty_zoo / "up-tiny")
    (empty_zoo / "index.json").write_text(json.dumps({"defaults": {"upsample": "up-tiny"}}))
    code, out, _ = run_main(["models", "list", "--json"], capsys)
    data = json.loads(out)
    assert code == 0
    assert [m["name"] for m in data["models"]] == ["up-tiny"]
    assert data["models"][0]["default"] is True and data["models"][0]["task"] == "upsample"


def test_models_info(model_folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_main(["models", "info", str(model_folder), "--json"], capsys)
    data = json.loads(out)
    assert code == 0 and data["family"] == "test_scale" and data["parameters"] == 18
    code, out, _ = run_main(["models", "info", str(model_folder)], capsys)
    assert code == 0 and "test model" in out  # the card is shown


def test_models_info_errors_are_one_line(
    empty_zoo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_main(["models", "info", "nosuch"], capsys)
    assert code == 2 and out == ""  # an unknown model spec is a usage error
    assert err.count("\n") == 1 and err.startswith("audiotool: error: model 'nosuch'")


def test_models_download_offline(hf_cache: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_main(["models", "download", "org/missing"], capsys)
    assert code == 1 and "org/missing" in err


def _clean_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("AUDIOTOOL_DEBUG", None)
    return env


def test_console_script_subprocess(tmp_path: Path) -> None:
    exe = shutil.which("audiotool")
    if exe is None:
        pytest.skip("the audiotool console script is not installed (pip install -e .)")
    proc = subprocess.run(
        [exe, "--version"], capture_output=True, text=True, env=_clean_env(), timeout=120
    )
    assert proc.returncode == 0 and proc.stdout.strip() == f"audiotool {__version__}"
    proc = subprocess.run(
        [exe, "models", "info", str(tmp_path / "none")],
        capture_output=True,
        text=True,
        env=_clean_env(),
        timeout=120,
    )
    assert proc.returncode == 2 and "no such file" in proc.stderr


def test_python_dash_m() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "audiotool", "--version"],
        capture_output=True,
        text=True,
        env=_clean_env(),
        timeout=120,
    )
    assert proc.returncode == 0 and __version__ in proc.stdout


@pytest.mark.parametrize("argv", [["--help"], ["models", "list"]])
def test_startup_does_not_import_torch(argv: list[str]) -> None:
    code = (
        "import sys\n"
        "from audiotool.cli.app import main\n"
        "try:\n"
        f"    main({argv!r})\n"
        "except SystemExit:\n"
        "    pass\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "assert 'numpy' not in sys.modules, 'numpy was imported'\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=_clean_env(), timeout=120
    )
    assert proc.returncode == 0, proc.stderr
