"""Input expansion, output naming and atomic file writes.

- :func:`expand_inputs` turns command-line items (files, folders searched recursively, ``-`` for
  paths on stdin) into a de-duplicated list of files plus the items that could not be used.
- :class:`OutputPlanner` maps each input to its output path(s) from ``-o`` and a ``--filename``
  template, refusing templates that escape the output folder, outputs that would overwrite an
  input, and two inputs that would write the same file.
- :func:`atomic_output` writes through a temporary file in the target folder and renames it into
  place, so a failure never leaves a partial output behind.

No torch here.
"""

from __future__ import annotations

import contextlib
import os
import string
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from audiotool.errors import AudioWriteError, InputError, OutputExistsError, UsageError

#: extensions libsndfile reads (lower case, with the dot); mp3 needs libsndfile >= 1.1
AUDIO_EXTENSIONS = frozenset(
    {
        ".wav", ".wave", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff", ".aifc",
        ".au", ".snd", ".caf", ".w64", ".rf64", ".sd2", ".voc", ".mat", ".htk", ".sf", ".wve",
        ".xi", ".paf", ".pvf", ".nist", ".sph", ".iff", ".svx",
    }
)  # fmt: skip


@dataclass
class ExpandedInputs:
    """Result of :func:`expand_inputs`.

    Attributes:
        files: audio files to process, in command-line order, without duplicates.
        problems: (item, error) for items that cannot be used (missing path, folder without
            audio); the batch reports them as failures and goes on with the rest.
    """

    files: list[Path] = field(default_factory=list)
    problems: list[tuple[str, InputError]] = field(default_factory=list)


def is_audio_path(path: Path) -> bool:
    """True when the file name has an extension libsndfile can read."""
    return path.suffix.lower() in AUDIO_EXTENSIONS


def expand_inputs(items: Sequence[str], *, stdin: TextIO | None = None) -> ExpandedInputs:
    """Expand command-line inputs.

    Args:
        items: files, folders (searched recursively for audio, sorted) or ``-`` (read one path
            per line from ``stdin``; blank lines and lines starting with ``#`` are skipped).
        stdin: stream for ``-``.

    Raises:
        UsageError: no inputs at all, or ``-`` without a stream.
    """
    result = ExpandedInputs()
    seen: set[Path] = set()

    def add(path: Path) -> None:
        key = path.resolve()
        if key not in seen:
            seen.add(key)
            result.files.append(path)

    for item in _items_with_stdin(items, stdin):
        path = Path(item).expanduser()
        if path.is_dir():
            found = sorted(
                p for p in path.rglob("*") if p.is_file() and is_audio_path(p) and not _hidden(p)
            )
            if not found:
                result.problems.append(
                    (
                        item,
                        InputError(
                            f"{item}: folder has no audio files",
                            hint=f"expected files ending in {', '.join(sorted(_COMMON))}",
                        ),
                    )
                )
            for p in found:
                add(p)
        elif path.exists():
            add(path)
        else:
            result.problems.append(
                (item, InputError(f"{item}: no such file or folder", hint="check the path"))
            )
    if not result.files and not result.problems:
        raise UsageError("no input files given", hint="pass files, folders, or '-' to read paths")
    return result


_COMMON = (".wav", ".flac", ".ogg", ".mp3")


def _hidden(path: Path) -> bool:
    return path.name.startswith(".")


def _items_with_stdin(items: Sequence[str], stdin: TextIO | None) -> Iterator[str]:
    for item in items:
        if item == "-":
            if stdin is None:
                raise UsageError("'-' given but no standard input is available")
            for line in stdin:
                line = line.strip()
                if line and not line.startswith("#"):
                    yield line
        else:
            yield item


# --------------------------------------------------------------------------- output names


def _template_fields(template: str) -> set[str]:
    fields = set()
    for _, name, _, _ in string.Formatter().parse(template):
        if name is not None:
            fields.add(name)
    return fields


@dataclass
class OutputPlanner:
    """Decide where each output goes.

    Args:
        output: ``-o`` value (a file for one input and one output per input, else a folder), or
            None for ``default_dir``.
        template: ``--filename`` template, e.g. ``"{stem}_{task}.{ext}"``; fields are those the
            task passes to :meth:`path_for` (always ``stem``, ``name``, ``ext``, ``task``,
            ``parent``, ``model``; tasks may add their own).
        default_template: used when ``template`` is None.
        default_dir: folder used when ``output`` is None.
        inputs: all input files (never overwritten; several inputs writing one file is an error).
        single_output: True when each input gives exactly one output, so ``-o`` may be a file.
        allowed_fields: the fields a template may use (others are a usage error).
    """

    output: Path | None
    template: str | None
    default_template: str
    default_dir: Path
    inputs: Sequence[Path]
    single_output: bool = True
    allowed_fields: frozenset[str] = frozenset({"stem", "name", "ext", "task", "parent", "model"})
    _claimed: dict[Path, Path] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        tpl = self.template if self.template is not None else self.default_template
        unknown = _template_fields(tpl) - self.allowed_fields
        if unknown:
            raise UsageError(
                f"--filename template '{tpl}' uses unknown field(s) {sorted(unknown)}",
                hint=f"available fields: {sorted(self.allowed_fields)}",
            )
        self._inputs = {p.resolve() for p in self.inputs}
        self.file_mode = (
            self.output is not None
            and self.single_output
            and len(self.inputs) == 1
            and self.template is None
            and not self.output.is_dir()
            and self.output.suffix != ""
        )
        if (
            self.output is not None
            and not self.file_mode
            and self.output.suffix.lower() in AUDIO_EXTENSIONS
            and not self.output.is_dir()
        ):
            raise UsageError(
                f"-o {self.output} names a file, but "
                + (
                    f"{len(self.inputs)} inputs were given"
                    if len(self.inputs) != 1
                    else "this command writes several files per input"
                ),
                hint="give a folder for -o (and --filename for the names)",
            )

    @property
    def folder(self) -> Path:
        """The output folder (the parent of the file in file mode)."""
        if self.output is None:
            return self.default_dir
        return self.output.parent if self.file_mode else self.output

    def path_for(self, input_path: Path, **fields: str) -> Path:
        """The output path for one input (and, for multi-output tasks, one stem etc.).

        Raises:
            UsageError: the template escapes the output folder, or the output is an input file
                or is claimed by another input.
        """
        if self.file_mode:
            assert self.output is not None
            target = self.output
        else:
            values: dict[str, str] = {
                "stem": input_path.stem,
                "name": input_path.name,
                "parent": input_path.parent.name,
                "ext": input_path.suffix.lstrip("."),
                "task": "",
                "model": "",
            }
            values.update(fields)
            tpl = self.template if self.template is not None else self.default_template
            try:
                rel = tpl.format(**values)
            except (KeyError, IndexError, ValueError) as exc:
                raise UsageError(f"--filename template '{tpl}' is invalid: {exc}") from exc
            target = self._inside_folder(rel, tpl)
        self._check_not_input(target, input_path)
        return target

    def _inside_folder(self, rel: str, tpl: str) -> Path:
        rel_path = Path(rel)
        if not rel or rel_path.is_absolute() or rel.startswith(("/", "\\", "~")):
            raise UsageError(
                f"--filename template '{tpl}' gives '{rel}', which is not a relative path",
                hint="templates name files inside the output folder",
            )
        if any(part == ".." for part in rel_path.parts) or any(
            part in ("..",) for part in rel.replace("\\", "/").split("/")
        ):
            raise UsageError(
                f"--filename template '{tpl}' gives '{rel}', which escapes the output folder",
                hint="remove '..' from the template (or from the names it uses)",
            )
        folder = self.folder
        target = folder / rel_path
        root = folder.resolve()
        resolved = target.resolve()
        if resolved != root and root not in resolved.parents:
            raise UsageError(
                f"--filename template '{tpl}' gives '{rel}', which escapes {folder}",
                hint="remove '..' or links from the template",
            )
        return target

    def _check_not_input(self, target: Path, input_path: Path) -> None:
        resolved = target.resolve()
        if resolved in self._inputs:
            raise UsageError(
                f"output {target} would overwrite the input file {resolved}",
                hint="choose another -o / --filename; audiotool never writes over an input",
            )
        owner = self._claimed.setdefault(resolved, input_path)
        if owner != input_path:
            raise UsageError(
                f"{owner} and {input_path} would both write {target}",
                hint="add {parent} to --filename, or write them to different folders",
            )


def check_existing(targets: Iterable[Path], *, overwrite: bool, skip_existing: bool) -> bool:
    """Decide what to do about outputs that already exist.

    Returns:
        True when the input should be skipped (``skip_existing`` and ALL its outputs exist).

    Raises:
        OutputExistsError: an output exists and neither flag allows writing over it.
    """
    targets = list(targets)
    existing = [t for t in targets if t.exists()]
    if not existing or overwrite:
        return False
    if skip_existing and len(existing) == len(targets):
        return True
    if skip_existing:
        return False  # a half-written set of outputs is redone
    raise OutputExistsError(
        f"{existing[0]} already exists",
        hint="pass --overwrite to replace it or --skip-existing to keep it",
    )


# --------------------------------------------------------------------------- atomic writes


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_output(target: Path, *, protect: Iterable[Path] = ()) -> Iterator[Path]:
    """Yield a temporary path in ``target``'s folder; rename it to ``target`` on success.

    The temporary file keeps ``target``'s suffix (libraries that pick a format from the name
    still work). On any exception the temporary file is removed and ``target`` is untouched.

    Args:
        target: final path.
        protect: paths that must never be replaced (the inputs).

    Raises:
        AudioWriteError: the folder cannot be created, or ``target`` is a protected path.
    """
    target = Path(target)
    resolved = target.resolve()
    if any(resolved == Path(p).resolve() for p in protect):
        raise AudioWriteError(
            f"refusing to write {target}: it is an input file",
            hint="choose another output path",
        )
    folder = target.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise AudioWriteError(
            f"cannot create the output folder {folder}: {exc.strerror or exc}",
            hint="check the path and its permissions",
        ) from exc
    if not os.access(folder, os.W_OK):
        raise AudioWriteError(
            f"cannot write into {folder}: permission denied", hint="choose a writable folder"
        )
    fd, tmp_name = tempfile.mkstemp(
        prefix=f".{target.stem}.", suffix=f".tmp{target.suffix}", dir=folder
    )
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give outputs normal permissions
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
