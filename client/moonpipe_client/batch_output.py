"""Where a batch's JSON lines go, written so that no earlier result is ever lost.

Modes of :class:`BatchOutput` for an output file ``OUT``:

- ``replace`` (default): lines go to a temporary file beside ``OUT`` that replaces it
  (one rename) when the batch ends, also when it is interrupted, as long as at least one
  line was written; until then ``OUT`` keeps its old content, and a batch that writes
  nothing (the server cannot be reached, Ctrl-C before the first result) leaves it as is.
- ``append``: lines are added to the end of ``OUT`` as images finish.
- ``resume``: images ``OUT`` already holds a result for are skipped. Its result lines are
  kept, its error lines and unreadable lines are dropped (those images run again), and the
  new lines are added, through a temporary file as in ``replace``.

``OUT`` ``-`` is stdout (``replace`` only).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TextIO

__all__ = ["MODES", "BatchOutput", "Previous", "read_previous"]

MODES = ("replace", "append", "resume")


@dataclass(frozen=True, slots=True)
class Previous:
    """What an existing output file holds: the images with a result and their lines."""

    done: frozenset[str] = frozenset()
    kept: tuple[str, ...] = ()  # the result lines, unchanged
    dropped: int = 0  # error lines and unreadable lines (their images run again)


def read_previous(path: Path) -> Previous:
    """Parse an earlier batch's output (``{"image": ..., ...}`` per line)."""
    done: set[str] = set()
    kept: list[str] = []
    dropped = 0
    with open(path, encoding="utf-8") as lines:
        for line in lines:
            text = line.rstrip("\n")
            if not text.strip():
                continue
            try:
                record = json.loads(text)
            except json.JSONDecodeError:
                record = None
            if isinstance(record, dict) and isinstance(record.get("image"), str) and "error" not in record:
                done.add(record["image"])
                kept.append(text)
            else:
                dropped += 1
    return Previous(frozenset(done), tuple(kept), dropped)


def _new_file_mode(out: Path) -> int:
    """The permission bits ``out`` has, or a new file would get (umask applied)."""
    with contextlib.suppress(FileNotFoundError):
        return out.stat().st_mode & 0o777
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


class BatchOutput:
    """A context manager giving the text stream to write a batch's lines to (module doc)."""

    def __init__(self, out: str, mode: str = "replace") -> None:
        if mode not in MODES:
            raise ValueError(f"unknown output mode {mode!r}; expected one of {', '.join(MODES)}")
        if out == "-" and mode != "replace":
            raise ValueError(f"--{mode} needs an output file (--out FILE), not stdout")
        self.mode = mode
        self.path = None if out == "-" else Path(out)
        if self.path is not None and self.path.is_dir():
            raise ValueError(f"--out {out} is a folder; give a file name")
        resuming = mode == "resume" and self.path is not None and self.path.exists()
        self.previous = read_previous(self.path) if resuming and self.path else Previous()
        self._file: TextIO | None = None
        self._temp: Path | None = None
        self._start = 0  # where this batch's own lines begin in the file written

    @property
    def num_new_bytes(self) -> int:
        """Bytes this batch has written so far."""
        return 0 if self._file is None or self._file is sys.stdout else self._file.tell() - self._start

    def __enter__(self) -> TextIO:
        if self.path is None:
            self._file = sys.stdout
            return self._file
        if self.mode == "append":
            needs_newline = self.path.exists() and self.path.stat().st_size > 0 and \
                not self.path.read_bytes().endswith(b"\n")
            self._file = open(self.path, "a", encoding="utf-8")  # closed in __exit__
            if needs_newline:
                self._file.write("\n")  # the last line of a killed run had no end
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".partial")
            os.fchmod(fd, _new_file_mode(self.path))
            self._temp = Path(name)
            self._file = os.fdopen(fd, "w", encoding="utf-8")
            self._file.writelines(line + "\n" for line in self.previous.kept)
        self._file.flush()
        self._start = self._file.tell()
        return self._file

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._file is None or self._file is sys.stdout:
            return
        wrote = self.num_new_bytes > 0
        self._file.close()
        if self._temp is None or self.path is None:
            return
        if wrote:
            os.replace(self._temp, self.path)
        else:
            self._temp.unlink(missing_ok=True)
        self._temp = None
