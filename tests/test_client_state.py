"""The resume file of ``lungct submit`` (client/state.py) and the lines printed with it."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from client.state import Entry, State


def _saved(path: Path) -> dict[str, dict[str, object]]:
    return json.loads(path.read_text())["inputs"] if path.exists() else {}


def test_a_put_is_saved_at_once_and_read_back(tmp_path: Path) -> None:
    file = tmp_path / "state.json"
    state = State(file)
    state.put(tmp_path / "a.jpg", Entry("a" * 64, None, "job-a", "queued"))
    assert _saved(file)[str((tmp_path / "a.jpg").resolve())]["job_id"] == "job-a"
    again = State(file).find(tmp_path / "a.jpg", "a" * 64, None)
    assert again is not None and again.status == "queued"


def test_a_group_is_saved_once_when_it_ends(tmp_path: Path) -> None:
    file = tmp_path / "state.json"
    state = State(file)
    with state.grouped():
        for name in ("a", "b", "c"):
            state.put(tmp_path / f"{name}.jpg", Entry(name * 64, None, f"job-{name}", "queued"))
        assert not file.exists()  # nothing written inside the group
    assert len(_saved(file)) == 3


def test_a_group_without_changes_writes_nothing(tmp_path: Path) -> None:
    file = tmp_path / "state.json"
    with State(file).grouped():
        pass
    assert not file.exists()


def test_a_group_that_fails_still_saves_what_it_put(tmp_path: Path) -> None:
    file = tmp_path / "state.json"
    state = State(file)
    with pytest.raises(RuntimeError), state.grouped():
        state.put(tmp_path / "a.jpg", Entry("a" * 64, None, "job-a", "succeeded"))
        raise RuntimeError("interrupted")
    assert len(_saved(file)) == 1


def test_another_threads_puts_are_not_held_by_a_group(tmp_path: Path) -> None:
    file = tmp_path / "state.json"
    state = State(file)
    with state.grouped():
        state.put(tmp_path / "mine.jpg", Entry("m" * 64, None, "job-m", "queued"))
        other = threading.Thread(
            target=state.put,
            args=(tmp_path / "theirs.jpg", Entry("t" * 64, None, "job-t", "queued")),
        )
        other.start()
        other.join()
        # the other thread saved at once (the whole map, this group's entry with it)
        assert len(_saved(file)) == 2


def test_lines_held_in_a_block_are_printed_when_it_ends() -> None:
    """cli.py saves a request's resume entries, then prints their lines: a line the user
    saw is always in the resume file, even when the run is killed in between."""
    import io

    from client.progress import Progress

    out = io.StringIO()
    progress = Progress(enabled=False, stream=out)
    with progress.held():
        progress.log("submitted a.jpg -> job 1")
        assert out.getvalue() == ""
    progress.log("submitted b.jpg -> job 2")
    assert out.getvalue().splitlines() == ["submitted a.jpg -> job 1", "submitted b.jpg -> job 2"]


def test_lines_of_answers_not_saved_are_not_printed(tmp_path: Path) -> None:
    """A resume file that cannot be written: its error is raised, and none of the lines
    that the file would have backed is printed."""
    import io

    from client.cli import _recording
    from client.progress import Progress
    from client.state import StateNotSaved

    (tmp_path / "a-file").write_text("")
    state = State(tmp_path / "a-file" / "state.json")  # its folder is a file
    out = io.StringIO()
    progress = Progress(enabled=False, stream=out)
    with (
        pytest.raises(StateNotSaved, match="cannot write the resume file"),
        _recording(state, progress),
    ):
        state.put(tmp_path / "a.jpg", Entry("a" * 64, None, "job-a", "queued"))
        progress.log("submitted a.jpg -> job job-a (queued)")
    assert out.getvalue() == ""
