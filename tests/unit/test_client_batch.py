"""The batch output file: replaced atomically, appended to, or resumed; never lost."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from moonpipe_client.batch_output import BatchOutput, read_previous

OLD = [json.dumps({"image": f"{i}.png", "objects": []}) for i in range(4)]


@pytest.fixture
def out(tmp_path: Path) -> Path:
    path = tmp_path / "results.jsonl"
    path.write_text("".join(line + "\n" for line in OLD))
    return path


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name != "results.jsonl")


def test_replace_keeps_the_old_file_until_the_batch_ends(out: Path) -> None:
    with BatchOutput(str(out)) as stream:
        stream.write('{"image": "new.png"}\n')
        stream.flush()
        assert out.read_text().splitlines() == OLD  # readers still see the complete old file
    assert out.read_text() == '{"image": "new.png"}\n'
    assert _leftovers(out.parent) == []


def test_a_batch_that_wrote_nothing_leaves_the_file_as_it_was(out: Path) -> None:
    with pytest.raises(ConnectionError), BatchOutput(str(out)):
        raise ConnectionError("server went away")
    assert out.read_text().splitlines() == OLD
    assert _leftovers(out.parent) == []


def test_an_interrupted_batch_keeps_the_results_it_has(out: Path) -> None:
    with pytest.raises(KeyboardInterrupt), BatchOutput(str(out)) as stream:
        stream.write('{"image": "a.png"}\n')
        raise KeyboardInterrupt
    assert out.read_text() == '{"image": "a.png"}\n'


def test_append_adds_after_the_old_lines_and_mends_a_cut_last_line(out: Path) -> None:
    out.write_text(out.read_text() + '{"image": "cut')
    with BatchOutput(str(out), "append") as stream:
        stream.write('{"image": "b.png"}\n')
    assert out.read_text().splitlines() == [*OLD, '{"image": "cut', '{"image": "b.png"}']


def test_resume_knows_the_done_images_and_drops_failed_and_broken_lines(out: Path) -> None:
    failed = json.dumps({"image": "bad.png", "error": {"type": "InvalidRequest", "message": "x"}})
    out.write_text(out.read_text() + failed + "\n" + '{"image": "cu\n')
    output = BatchOutput(str(out), "resume")
    assert output.previous.done == {f"{i}.png" for i in range(4)}
    assert output.previous.dropped == 2
    with output as stream:
        stream.write('{"image": "bad.png", "objects": []}\n')
    assert out.read_text().splitlines() == [*OLD, '{"image": "bad.png", "objects": []}']


def test_resume_with_nothing_new_leaves_the_file_untouched(out: Path) -> None:
    before = out.read_text() + '{"image": "x.png", "error": {}}\n'
    out.write_text(before)
    with BatchOutput(str(out), "resume"):
        pass
    assert out.read_text() == before


def test_resume_of_a_missing_file_starts_fresh(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "new.jsonl"
    output = BatchOutput(str(path), "resume")
    assert output.previous.done == frozenset()
    with output as stream:
        stream.write('{"image": "a.png"}\n')
    assert path.read_text() == '{"image": "a.png"}\n'


def test_the_new_file_gets_the_old_file_permissions(out: Path) -> None:
    os.chmod(out, 0o640)
    with BatchOutput(str(out)) as stream:
        stream.write("{}\n")
    assert out.stat().st_mode & 0o777 == 0o640


@pytest.mark.parametrize(("target", "mode", "match"), [
    ("-", "resume", "needs an output file"), ("-", "append", "needs an output file"),
    ("x.jsonl", "overwrite", "unknown output mode"),
])
def test_bad_output_settings(target: str, mode: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        BatchOutput(target, mode)


def test_read_previous_skips_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    path.write_text('\n{"image": "a.png", "points": []}\n\n')
    assert read_previous(path).kept == ('{"image": "a.png", "points": []}',)
