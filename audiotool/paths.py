"""Input expansion, output naming and atomic file writes.

- :func:`expand_inputs` turns command-line items (files, folders searched recursively, ``-`` for
  paths on stdin) into a de-duplicated list of files plus the items that could not be used.
- :class:`OutputPlanner` maps each input to its output path(s) from ``-o`` and a ``--filename``
  template, refusing templates that escape the output folder, outputs that would overwrite an
  input, and two inputs that would write the same file.
- :func:`atomic_outputs` / :func:`atomic_output` write through temporary files in the target
  folder and move them into place at the end, so a failure never leaves a partial output behind;
  without ``overwrite`` the final step never replaces a file that appeared meanwhile (another run
  writing the same output): :func:`commit` is a no-clobber link-or-rename.
- :func:`replace_atomically` / :func:`write_text_atomically` are the one way to replace a single
  file (model folders, checkpoints, cards): write a temporary file beside it, then ``os.replace``.
- Temporary files are created with mode ``0o666``, so the kernel applies the umask and the
  outputs get the permissions of any new file; the umask itself is never read by changing it
  (``os.umask`` is process-wide and not thread-safe).
- :func:`check_writable` finds an unwritable output location before anything runs.

No torch here.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
import string
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
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
        ignored: named files whose extension is not an audio one (``README.md``, ``cover.jpg``
            matched by a shell glob): skipped with a note, like such files inside folders.
        keys: each file's path relative to its root (the folder it was found in, or the path
            as given for a file named directly), in POSIX form; the stable name that
            :mod:`audiotool.shards` hashes, the same on every machine that mounts the data
            elsewhere.
    """

    files: list[Path] = field(default_factory=list)
    problems: list[tuple[str, InputError]] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    keys: dict[Path, str] = field(default_factory=dict)

    def key(self, path: Path) -> str:
        """The shard key of ``path`` (its POSIX path when it was not expanded here)."""
        return self.keys.get(path, path.as_posix())


def is_audio_path(path: Path) -> bool:
    """True when the file name has an extension libsndfile can read."""
    return path.suffix.lower() in AUDIO_EXTENSIONS


def expand_inputs(items: Sequence[str], *, stdin: TextIO | None = None) -> ExpandedInputs:
    """Expand command-line inputs.

    Rule for named files: a file whose extension libsndfile reads (:data:`AUDIO_EXTENSIONS`)
    is an input; any other file (``README.md`` from ``examples/*``) goes to ``ignored`` and is
    skipped with a note, the same rule folders apply to their contents.

    Args:
        items: files, folders (searched recursively for audio, sorted) or ``-`` (read one path
            per line from ``stdin``; blank lines and lines starting with ``#`` are skipped).
        stdin: stream for ``-``.

    Raises:
        UsageError: no inputs at all, or ``-`` without a stream.
    """
    result = ExpandedInputs()
    seen: set[Path] = set()

    def add(path: Path, key: str) -> None:
        resolved = path.resolve()
        if resolved not in seen:
            seen.add(resolved)
            result.files.append(path)
            result.keys[path] = key

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
                add(p, p.relative_to(path).as_posix())
        elif path.exists():
            if is_audio_path(path):
                add(path, path.as_posix())
            else:
                result.ignored.append(item)
        else:
            result.problems.append(
                (item, InputError(f"{item}: no such file or folder", hint="check the path"))
            )
    if not result.files and not result.problems:
        if result.ignored:
            raise InputError(
                f"none of the inputs is an audio file ({', '.join(result.ignored[:3])}"
                + (", ..." if len(result.ignored) > 3 else "")
                + ")",
                hint=f"audio files end in {', '.join(_COMMON)}, ...",
            )
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


def write_error(path: Path, exc: BaseException) -> AudioWriteError:
    """An :class:`AudioWriteError` naming ``path``, with a hint that fits the cause."""
    code = getattr(exc, "errno", None)
    reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    if code == errno.ENOSPC or code == errno.EDQUOT:
        hint = "the disk (or your quota) is full: free space or write elsewhere"
    elif code in (errno.EACCES, errno.EPERM):
        hint = "permission denied: choose a folder you can write to"
    elif code == errno.EROFS:
        hint = "the file system is read-only: choose another output folder"
    elif code in (errno.ENOENT, errno.ENOTDIR, errno.EISDIR):
        hint = "check the output path"
    else:
        hint = "check the output path, its permissions and the free space"
    return AudioWriteError(f"cannot write {path}: {reason}", hint=hint)


def check_writable(target: Path) -> None:
    """Check, without leaving anything behind, that ``target`` can be created later.

    The nearest existing folder above ``target`` must be a folder, and a probe file must be
    creatable in it (``os.access`` is not enough: root on ``/proc``, read-only mounts).

    Raises:
        UsageError: a path component is a file, ``target`` is a folder, or nothing can be
            written there.
    """
    target = Path(target)
    if target.is_dir():
        raise UsageError(f"output {target} is a folder", hint="give a file name, or a folder -o")
    folder = target.parent
    while not folder.exists():
        if folder.parent == folder:
            break
        folder = folder.parent
    if not folder.is_dir():
        raise UsageError(
            f"cannot write {target}: {folder} is a file, not a folder",
            hint="choose another -o",
        )
    try:
        fd, probe = tempfile.mkstemp(prefix=".audiotool-probe.", dir=folder)
    except OSError as exc:
        err = write_error(target, exc)
        raise UsageError(err.message, hint=err.hint) from exc
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(probe)


def commit(tmp: Path, target: Path, *, overwrite: bool) -> None:
    """Move the finished ``tmp`` to ``target``; without ``overwrite`` never replace a file.

    No-clobber: ``os.link(tmp, target)`` (fails if ``target`` exists, atomically) then unlink
    ``tmp``. On file systems without hard links, ``target`` is claimed with ``O_CREAT | O_EXCL``
    and ``tmp`` renamed over the claim (another audiotool run cannot take it in between; for an
    instant ``target`` is an empty file).

    Raises:
        OutputExistsError: ``target`` exists (another writer got there first).
    """
    if overwrite:
        os.replace(tmp, target)
        return
    try:
        os.link(tmp, target)
    except FileExistsError:
        raise _appeared(target) from None
    except OSError as exc:
        if exc.errno not in _NO_LINK:
            raise
        try:
            fd = os.open(target, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        except FileExistsError:
            raise _appeared(target) from None
        os.close(fd)
        os.replace(tmp, target)
        return
    os.unlink(tmp)


_NO_LINK = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK, errno.ENOSYS}


def _appeared(target: Path) -> OutputExistsError:
    return OutputExistsError(
        f"{target} appeared while this output was being made (another run writing the same "
        "file?); kept it and wrote nothing of this input",
        hint="pass --overwrite to replace it, or write to another folder",
    )


@contextlib.contextmanager
def atomic_outputs(
    targets: Mapping[str, Path], *, protect: Iterable[Path] = (), overwrite: bool = True
) -> Iterator[dict[str, Path]]:
    """Yield ``{name: temporary path}`` beside each target; move them all into place on success.

    All or nothing: when the body raises, or a target appears meanwhile (``overwrite=False``),
    every temporary file and every output already moved by this call is removed.

    Args:
        targets: final paths by name.
        protect: paths that must never be replaced (the inputs).
        overwrite: replace existing targets; False: :func:`commit` without clobbering.

    Raises:
        AudioWriteError: a folder cannot be created or written, or a target is protected.
        OutputExistsError: without ``overwrite``, a target exists when its turn comes.
    """
    protected = {Path(p).resolve() for p in protect}
    tmps: dict[str, Path] = {}
    modes: dict[str, int] = {}
    done: list[Path] = []
    try:
        for name, target in targets.items():
            target = Path(target)
            if target.resolve() in protected:
                raise AudioWriteError(
                    f"refusing to write {target}: it is an input file",
                    hint="choose another output path",
                )
            tmps[name] = _temporary(target)
            modes[name] = _mode_of(tmps[name])
        try:
            yield tmps
        except OSError as exc:  # the body's writes: disk full, quota, I/O error
            where = next(
                (Path(targets[n]) for n, t in tmps.items() if str(t) == str(exc.filename)),
                Path(next(iter(targets.values()))),
            )
            raise write_error(where, exc) from exc
        for name, target in targets.items():
            try:
                os.chmod(tmps[name], modes[name])  # the body's writer may have made a new file
                commit(tmps[name], Path(target), overwrite=overwrite)
            except OSError as exc:
                raise write_error(Path(target), exc) from exc
            done.append(Path(target))
    except BaseException:
        for tmp in tmps.values():
            with contextlib.suppress(OSError):
                tmp.unlink()
        for path in done:  # ours: created by this call without clobbering
            with contextlib.suppress(OSError):
                path.unlink()
        raise


#: tempfile's random part of a temporary name: 8 characters of ``[a-z0-9_]``
_TMP_RANDOM = "[a-z0-9_]" * 8


def temporary_pattern(target: Path) -> str:
    """Glob pattern of the temporary files :func:`atomic_outputs` makes for ``target``
    (``.{stem}.XXXXXXXX.tmp{suffix}`` beside it, see :func:`_temporary`)."""
    import glob

    return f".{glob.escape(target.stem)}.{_TMP_RANDOM}.tmp{glob.escape(target.suffix)}"


#: suffixes of the side files a streamed writer keeps beside an output's temporary file
#: (:func:`side_file`): the float32 copy of ``--clip rescale`` and upsample's 48 kHz wave
SIDE_SUFFIXES = (".f32.tmp", ".wave.f32.tmp")


def side_file(tmp: Path, suffix: str) -> Path:
    """The side file ``.{tmp.name}{suffix}`` of a temporary file (``suffix`` one of
    :data:`SIDE_SUFFIXES`, so that :func:`remove_stale_temporaries` knows it)."""
    if suffix not in SIDE_SUFFIXES:
        raise ValueError(f"unknown side file suffix {suffix!r}")
    return tmp.with_name(f".{tmp.name}{suffix}")


def remove_stale_temporaries(target: Path) -> int:
    """Delete temporaries of ``target`` left by a killed run, and their side files
    (:func:`side_file`); returns how many were removed.

    Only call this for an output no other live process is writing (e.g. an input this
    process owns under ``--resume``).
    """
    import glob

    removed = 0
    if target.parent.is_dir():
        base = temporary_pattern(target)
        patterns = [base] + [f".{base}{glob.escape(sfx)}" for sfx in SIDE_SUFFIXES]
        for pattern in patterns:
            for tmp in target.parent.glob(pattern):
                with contextlib.suppress(OSError):
                    tmp.unlink()
                    removed += 1
    return removed


def _temporary(target: Path) -> Path:
    """A new empty file beside ``target`` (its folder made if needed), see :func:`_create_beside`.

    Raises:
        AudioWriteError: the folder cannot be created or written.
    """
    folder = target.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise AudioWriteError(
            f"cannot create the output folder {folder}: {exc.strerror or exc}",
            hint="check the path and its permissions",
        ) from exc
    try:
        return _create_beside(target)
    except OSError as exc:
        raise write_error(target, exc) from exc


def _create_beside(target: Path) -> Path:
    """Create ``.{stem}.XXXXXXXX.tmp{suffix}`` next to ``target`` and return its path.

    Like :func:`tempfile.mkstemp` (``O_EXCL``, a random name), but with mode ``0o666`` so that
    the kernel applies the umask: the new file has the permissions any new file would have, and
    :func:`_mode_of` reads them back (reading the umask itself means changing it, process-wide).
    The suffix is kept so that writers that pick a format from the name still work.
    """
    flags = os.O_CREAT | os.O_EXCL | os.O_WRONLY | getattr(os, "O_CLOEXEC", 0)
    for _ in range(100):
        tmp = target.with_name(f".{target.stem}.{secrets.token_hex(4)}.tmp{target.suffix}")
        try:
            fd = os.open(tmp, flags, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp
    raise FileExistsError(errno.EEXIST, "no free temporary file name", str(target.parent))


def _mode_of(path: Path) -> int:
    """Permission bits of ``path`` (for a file from :func:`_create_beside`: 0o666 less the umask).

    Writers such as ``safetensors.save_file`` replace the file they are given with one of their
    own (mode 0600), so the callers put these bits back before the rename.
    """
    return stat.S_IMODE(os.stat(path).st_mode)


def replace_atomically(
    path: Path, write: Callable[[Path], None], *, mode: int | None = None
) -> Path:
    """Replace ``path`` with what ``write`` writes, all at once or not at all.

    ``write(tmp)`` fills a temporary file in ``path``'s folder (which is created if needed);
    on success the file is renamed over ``path`` (``os.replace``: readers see the old or the
    new file, never a partial one). When ``write`` raises, or the process dies, ``path`` keeps
    its previous contents and the temporary file is removed (a killed process can leave a
    ``.NAME.XXXXXXXX.tmp...`` file behind, never a partial ``path``).

    Unlike :func:`atomic_output` this always replaces an existing file; it is for files this
    program owns (model folders, checkpoints, cards), not for user outputs.

    Args:
        path: the file to write.
        write: writes the complete contents to the path it is given (``safetensors.save_file``,
            ``torch.save``, ``Path.write_text`` ...), in place or by making a new file there.
        mode: permission bits for the result; None: ``0o666`` less the umask, like a new file.

    Returns:
        ``path``.

    Raises:
        AudioWriteError: the folder or file cannot be written (full disk, permissions ...);
            errors raised by ``write`` that are not ``OSError`` propagate unchanged.
    """
    path = Path(path)
    tmp = _temporary(path)
    try:
        wanted = _mode_of(tmp) if mode is None else mode
        write(tmp)
        os.chmod(tmp, wanted)
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(exc, OSError):
            raise write_error(path, exc) from exc
        raise
    return path


def write_text_atomically(path: Path, text: str, *, mode: int | None = None) -> Path:
    """:func:`replace_atomically` for UTF-8 text."""
    return replace_atomically(path, lambda tmp: _write_text(tmp, text), mode=mode)


def _write_text(tmp: Path, text: str) -> None:
    tmp.write_text(text, encoding="utf-8")


@contextlib.contextmanager
def atomic_output(
    target: Path, *, protect: Iterable[Path] = (), overwrite: bool = True
) -> Iterator[Path]:
    """Yield a temporary path in ``target``'s folder; move it to ``target`` on success.

    The temporary file keeps ``target``'s suffix (libraries that pick a format from the name
    still work). On any exception the temporary file is removed and ``target`` is untouched.
    See :func:`atomic_outputs` for ``protect`` and ``overwrite``.
    """
    with atomic_outputs({"": Path(target)}, protect=protect, overwrite=overwrite) as tmps:
        yield tmps[""]
