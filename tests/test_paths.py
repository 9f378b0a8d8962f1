from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import pytest

from audiotool.errors import OutputExistsError, UsageError
from audiotool.paths import OutputPlanner, atomic_output, check_existing, expand_inputs


def test_expand_files_folders_and_stdin(tmp_path: Path, write_wav: Callable[..., Path]) -> None:
    a = write_wav("a.wav")
    b = write_wav("sub/deeper/b.flac")
    write_wav("sub/.hidden.wav")
    (tmp_path / "sub" / "notes.txt").write_text("x")
    c = write_wav("c.wav")
    stdin = io.StringIO(f"{c}\n\n# a comment\n{a}\n")
    got = expand_inputs([str(a), str(tmp_path / "sub"), "-"], stdin=stdin)
    assert got.files == [a, b, c]  # de-duplicated, command-line order, hidden files skipped
    assert got.problems == []


def test_expand_reports_missing_and_empty(tmp_path: Path, write_wav: Callable[..., Path]) -> None:
    a = write_wav("a.wav")
    empty = tmp_path / "empty"
    empty.mkdir()
    got = expand_inputs([str(a), str(tmp_path / "nope.wav"), str(empty)])
    assert got.files == [a]
    messages = [e.message for _, e in got.problems]
    assert "no such file" in messages[0] and "nope.wav" in messages[0]
    assert "no audio files" in messages[1] and str(empty) in messages[1]


def test_expand_needs_inputs() -> None:
    with pytest.raises(UsageError):
        expand_inputs([])
    with pytest.raises(UsageError, match="standard input"):
        expand_inputs(["-"], stdin=None)


def test_single_input_output_file(tmp_path: Path) -> None:
    src = tmp_path / "in.wav"
    plan = OutputPlanner(
        output=tmp_path / "out.wav",
        template=None,
        default_template="{stem}_{task}.{ext}",
        default_dir=Path("."),
        inputs=[src],
    )
    assert plan.path_for(src, task="upsample", ext="wav") == tmp_path / "out.wav"


def test_template_in_folder(tmp_path: Path) -> None:
    a, b = tmp_path / "x" / "a.flac", tmp_path / "y" / "b.wav"
    plan = OutputPlanner(
        output=tmp_path / "out",
        template=None,
        default_template="{stem}_{task}.{ext}",
        default_dir=Path("."),
        inputs=[a, b],
    )
    assert plan.path_for(a, task="up", ext="wav") == tmp_path / "out" / "a_up.wav"
    assert plan.path_for(b, task="up", ext="wav") == tmp_path / "out" / "b_up.wav"


def test_output_file_with_many_inputs_is_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="2 inputs"):
        OutputPlanner(
            output=tmp_path / "out.wav",
            template=None,
            default_template="{stem}.{ext}",
            default_dir=Path("."),
            inputs=[tmp_path / "a.wav", tmp_path / "b.wav"],
        )


@pytest.mark.parametrize(
    "template", ["../{stem}.wav", "/tmp/{stem}.wav", "a/../../{stem}.wav", "~/{stem}.wav"]
)
def test_template_cannot_escape(tmp_path: Path, template: str) -> None:
    src = tmp_path / "in.wav"
    plan = OutputPlanner(
        output=tmp_path / "out",
        template=template,
        default_template="{stem}.{ext}",
        default_dir=Path("."),
        inputs=[src],
    )
    with pytest.raises(UsageError, match="template"):
        plan.path_for(src, ext="wav")


def test_template_escape_through_field_value(tmp_path: Path) -> None:
    src = tmp_path / "in.wav"
    plan = OutputPlanner(
        output=tmp_path / "out",
        template="{model}/{stem}.wav",
        default_template="",
        default_dir=Path("."),
        inputs=[src],
    )
    with pytest.raises(UsageError, match="escapes"):
        plan.path_for(src, model="../../etc")


def test_template_unknown_field(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="unknown field"):
        OutputPlanner(
            output=tmp_path,
            template="{nope}.wav",
            default_template="",
            default_dir=Path("."),
            inputs=[tmp_path / "a.wav"],
        )


def test_output_over_input_refused(tmp_path: Path) -> None:
    src = tmp_path / "song.wav"
    plan = OutputPlanner(
        output=tmp_path,
        template="{stem}.wav",
        default_template="",
        default_dir=Path("."),
        inputs=[src],
    )
    with pytest.raises(UsageError, match="overwrite the input"):
        plan.path_for(src)


def test_two_inputs_same_output(tmp_path: Path) -> None:
    a, b = tmp_path / "x" / "song.wav", tmp_path / "y" / "song.flac"
    plan = OutputPlanner(
        output=tmp_path / "out",
        template=None,
        default_template="{stem}_up.wav",
        default_dir=Path("."),
        inputs=[a, b],
    )
    plan.path_for(a)
    with pytest.raises(UsageError, match="both write"):
        plan.path_for(b)
    plan.path_for(a)  # asking again for the same input is fine


def test_check_existing(tmp_path: Path) -> None:
    a, b = tmp_path / "a.wav", tmp_path / "b.wav"
    assert check_existing([a, b], overwrite=False, skip_existing=False) is False
    a.write_text("x")
    with pytest.raises(OutputExistsError, match="--overwrite"):
        check_existing([a, b], overwrite=False, skip_existing=False)
    assert check_existing([a, b], overwrite=True, skip_existing=False) is False
    assert check_existing([a, b], overwrite=False, skip_existing=True) is False  # half done
    b.write_text("x")
    assert check_existing([a, b], overwrite=False, skip_existing=True) is True


def test_atomic_output_cleans_up(tmp_path: Path) -> None:
    target = tmp_path / "t.npz"
    with pytest.raises(RuntimeError), atomic_output(target) as tmp:
        tmp.write_text("partial")
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    with atomic_output(target) as tmp:
        assert tmp.parent == tmp_path and tmp.suffix == ".npz"
        tmp.write_text("done")
    assert target.read_text() == "done" and len(list(tmp_path.iterdir())) == 1


def test_commit_never_clobbers_without_overwrite(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno
    import os

    from audiotool.errors import OutputExistsError
    from audiotool.paths import atomic_outputs, commit

    target = tmp_path / "o.wav"
    target.write_text("theirs")
    for no_links in (False, True):
        if no_links:  # a file system without hard links: the O_EXCL claim is the fallback
            monkeypatch.setattr(
                os, "link", lambda *a: (_ for _ in ()).throw(OSError(errno.EPERM, "x"))
            )
        tmp = tmp_path / f"t{no_links}"
        tmp.write_text("mine")
        with pytest.raises(OutputExistsError, match="appeared"):
            commit(tmp, target, overwrite=False)
        assert target.read_text() == "theirs" and tmp.exists()
        fresh = tmp_path / f"new{no_links}.wav"
        commit(tmp, fresh, overwrite=False)
        assert fresh.read_text() == "mine" and not tmp.exists()
    # all or nothing: the first output is taken back when the second one appeared meanwhile
    with pytest.raises(OutputExistsError):
        with atomic_outputs({"a": tmp_path / "a.wav", "b": target}, overwrite=False) as tmps:
            for t in tmps.values():
                t.write_text("mine")
    assert not (tmp_path / "a.wav").exists() and target.read_text() == "theirs"
    assert not list(tmp_path.glob(".*tmp*"))


def test_non_audio_files_named_on_the_command_line_are_ignored(tmp_path: Path) -> None:
    from audiotool.errors import InputError

    (tmp_path / "a.wav").write_bytes(b"")
    (tmp_path / "README.md").write_text("hi")
    got = expand_inputs([str(tmp_path / "a.wav"), str(tmp_path / "README.md")])
    assert got.files == [tmp_path / "a.wav"] and got.ignored == [str(tmp_path / "README.md")]
    with pytest.raises(InputError, match="none of the inputs is an audio file"):
        expand_inputs([str(tmp_path / "README.md")])


def test_write_errors_name_the_file_and_fit_the_cause(tmp_path: Path) -> None:
    import errno

    from audiotool.errors import AudioWriteError

    target = tmp_path / "e.npz"
    with pytest.raises(AudioWriteError) as exc, atomic_output(target) as tmp:
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp))
    assert str(target) in exc.value.message and "full" in (exc.value.hint or "")
    assert not target.exists() and not list(tmp_path.iterdir())


# --------------------------------------------------------------------------- replace_atomically


def test_replace_atomically_keeps_the_old_file_when_the_writer_fails(tmp_path: Path) -> None:
    from audiotool.paths import replace_atomically

    target = tmp_path / "model.safetensors"
    target.write_text("old")

    def interrupted(tmp: Path) -> None:
        tmp.write_text("half of the new")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        replace_atomically(target, interrupted)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]  # no temporary left


def test_replace_atomically_turns_os_errors_into_write_errors(tmp_path: Path) -> None:
    import errno

    from audiotool.errors import AudioWriteError
    from audiotool.paths import replace_atomically

    target = tmp_path / "c.json"

    def full(tmp: Path) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp))

    with pytest.raises(AudioWriteError, match=r"c\.json") as exc:
        replace_atomically(target, full)
    assert "full" in (exc.value.hint or "")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_written_files_follow_the_umask(tmp_path: Path, umask: int) -> None:
    import os
    import stat

    from audiotool.paths import atomic_output, replace_atomically, write_text_atomically

    previous = os.umask(umask)  # the test sets it; the library never touches it
    try:
        replace_atomically(tmp_path / "a.bin", lambda tmp: tmp.write_bytes(b"x"))
        write_text_atomically(tmp_path / "b.txt", "x")
        (tmp_path / "c.txt").write_text("old")
        write_text_atomically(tmp_path / "c.txt", "new")
        with atomic_output(tmp_path / "d.wav") as tmp:
            tmp.write_bytes(b"x")

        def own_file(tmp: Path) -> None:  # like safetensors: a new 0600 file over the given one
            fd = os.open(tmp.with_suffix(".own"), os.O_CREAT | os.O_WRONLY, 0o600)
            os.close(fd)
            os.replace(tmp.with_suffix(".own"), tmp)

        replace_atomically(tmp_path / "f.bin", own_file)
        assert os.umask(umask) == umask  # unchanged by the calls above
    finally:
        os.umask(previous)
    for name in ("a.bin", "b.txt", "c.txt", "d.wav", "f.bin"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o666 & ~umask, name
    replace_atomically(tmp_path / "e.bin", lambda tmp: tmp.write_bytes(b"x"), mode=0o600)
    assert stat.S_IMODE((tmp_path / "e.bin").stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "a.bin",
        "b.txt",
        "c.txt",
        "d.wav",
        "e.bin",
        "f.bin",
    ]


def test_replace_atomically_never_changes_the_umask(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Changing the umask is process-wide (not thread-safe): no writer may call it."""
    import os

    from audiotool.paths import atomic_output, replace_atomically

    def forbidden(mask: int) -> int:
        raise AssertionError("os.umask called")

    monkeypatch.setattr(os, "umask", forbidden)
    replace_atomically(tmp_path / "x", lambda tmp: tmp.write_bytes(b"x"))
    with atomic_output(tmp_path / "y.wav") as tmp:
        tmp.write_bytes(b"y")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x", "y.wav"]


def test_stale_side_files_of_streamed_writers_are_removed(tmp_path: Path) -> None:
    import torch

    from audiotool.paths import SIDE_SUFFIXES, remove_stale_temporaries, side_file
    from audiotool.stream import AudioSink

    target = tmp_path / "song_upsample.wav"
    tmp = tmp_path / ".song_upsample.ab12cd34.tmp.wav"  # a killed run's temporary ...
    tmp.write_bytes(b"")
    sink = AudioSink(tmp, 8000, 1, clip="rescale", name=target)  # ... and its writer's side file
    sink.write(torch.zeros(1, 100))
    wave = side_file(tmp, ".wave.f32.tmp")  # upsample's 48 kHz side file
    wave.write_bytes(b"partial")
    ours = [tmp, side_file(tmp, ".f32.tmp"), wave]
    assert all(p.exists() for p in ours) and len(SIDE_SUFFIXES) == 2
    others = [
        tmp_path / "..song_upsample.ab12cd34.tmp.wav.other.tmp",  # not one of our suffixes
        tmp_path / "..song.ab12cd34.tmp.wav.f32.tmp",  # another target's
        tmp_path / "..song_upsample.ab12cd3.tmp.wav.f32.tmp",  # not our random part
        tmp_path / "song_upsample.wav.f32.tmp",  # not hidden
    ]
    for p in others:
        p.write_bytes(b"keep")
    assert remove_stale_temporaries(target) == 3
    assert not any(p.exists() for p in ours) and all(p.exists() for p in others)
    with pytest.raises(ValueError, match="suffix"):
        side_file(tmp, ".tmp")
