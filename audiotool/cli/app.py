"""The ``audiotool`` command: wiring of the sub-commands and the one error boundary.

Exit codes: 0 all done; 1 some inputs failed (or a runtime error); 2 usage errors;
130 interrupted. ``AUDIOTOOL_DEBUG=1`` shows tracebacks instead of one-line messages.
Importing this module (``audiotool --help``) does not import torch.
"""

from __future__ import annotations

import gc
import sys
from collections.abc import Callable

import typer

from audiotool import __version__
from audiotool.cli import (
    data,
    embed,
    evaluate,
    info,
    manifest,
    models,
    reconstruct,
    separate,
    train,
    upsample,
)
from audiotool.errors import AudiotoolError, Interrupted, debug_enabled

app = typer.Typer(
    name="audiotool",
    help="Audio super-resolution, source separation, representation round-trips and embeddings.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    rich_markup_mode="rich",
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"audiotool {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Show the version and exit."
    ),
) -> None:
    """Audio super-resolution, source separation, representation round-trips and embeddings.

    Every command takes files, folders or '-' (paths on stdin) and runs offline with the
    bundled models; see `audiotool COMMAND --help` for examples.
    """


app.command("upsample", help=upsample.HELP, epilog=upsample.EPILOG)(upsample.upsample)
app.command("separate", help=separate.HELP, epilog=separate.EPILOG)(separate.separate)
app.command("reconstruct", help=reconstruct.HELP, epilog=reconstruct.EPILOG)(
    reconstruct.reconstruct
)
app.command("embed", help=embed.HELP, epilog=embed.EPILOG)(embed.embed)
app.command("info", help=info.HELP, epilog=info.EPILOG)(info.info)
app.command("train", help=train.HELP, epilog=train.EPILOG)(train.train)
app.add_typer(models.app, name="models")
app.add_typer(evaluate.app, name="eval")
app.add_typer(data.app, name="data")
app.add_typer(manifest.app, name="manifest")


# --------------------------------------------------------------------------- error boundary


def _audiotool_error(exc: BaseException) -> tuple[str, int]:
    assert isinstance(exc, AudiotoolError)
    msg = exc.message + (f" — {exc.hint}" if exc.hint else "")
    return msg, exc.exit_code


def _oom(exc: BaseException) -> tuple[str, int]:
    return (
        f"out of memory: {str(exc).splitlines()[0] if str(exc) else ''} — use a smaller "
        "--batch-size or --chunk-seconds, or --device cpu",
        1,
    )


def _os_error(exc: BaseException) -> tuple[str, int]:
    assert isinstance(exc, OSError)
    where = f" {exc.filename}" if getattr(exc, "filename", None) else ""
    return f"system error{where}: {exc.strerror or exc}", 1


#: exception type -> (one-line message, exit code); the first matching entry wins
ERROR_TABLE: list[tuple[type[BaseException], Callable[[BaseException], tuple[str, int]]]] = [
    (AudiotoolError, _audiotool_error),
    (MemoryError, _oom),
    (OSError, _os_error),
]


def _torch_oom_type() -> type[BaseException] | None:
    mod = sys.modules.get("torch")
    return getattr(mod, "OutOfMemoryError", None) if mod is not None else None


def error_message(exc: BaseException) -> tuple[str, int]:
    """The one-line message and exit code for an exception that ended a command."""
    oom = _torch_oom_type()
    if oom is not None and isinstance(exc, oom):
        return _oom(exc)
    for kind, render in ERROR_TABLE:
        if isinstance(exc, kind):
            return render(exc)
    return (
        f"internal error {type(exc).__name__}: {exc} — set AUDIOTOOL_DEBUG=1 for the "
        "traceback and please report it",
        1,
    )


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point.

    Typer/click handle usage errors themselves (message + exit 2); everything else that
    escapes a command is turned into one line by :func:`error_message`.
    """
    try:
        app(args=argv, prog_name="audiotool")
    except SystemExit:
        raise
    except KeyboardInterrupt:  # outside a batch (a batch raises Interrupted after its summary)
        sys.stderr.write("audiotool: interrupted\n")
        sys.exit(130)
    except Exception as exc:
        if debug_enabled():
            raise
        message, code = error_message(exc)
        kind = "" if isinstance(exc, Interrupted) else "error: "
        sys.stderr.write(f"audiotool: {kind}{message}\n")
        if code == 1 and not isinstance(exc, AudiotoolError):
            sys.stderr.write("(set AUDIOTOOL_DEBUG=1 to see the traceback)\n")
        sys.exit(code)


def console_main() -> None:
    """The installed ``audiotool`` script: :func:`main`, then an exit without the last full
    garbage collection.

    Once torch is imported, the interpreter's final collection walks every object torch created
    (0.3-0.4 s measured on 2 cores: a tenth of a short command). By the time a command returns,
    its outputs are written, renamed and closed, so the objects are moved to the permanent
    generation (:func:`gc.freeze`) and the collection skips them; atexit handlers (logging's
    flush) still run. In-process callers (tests) use :func:`main`, which leaves gc alone.
    """
    try:
        main()
    finally:
        gc.freeze()
