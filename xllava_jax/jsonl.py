"""Crash-safe JSONL files: one complete line per record, fsync'ed; a torn last line is dropped.

Used for mvif output, rejects, translation output and the judge cache. A process killed
mid-write can leave only a partial *last* line (records are written by one thread, one
``write`` per line); ``open_append`` cuts it off before appending, and ``read_jsonl``
ignores it, so a resumed run neither loses a finished record nor duplicates one.
"""

from __future__ import annotations

import fcntl
import json
import os
from typing import Any, Iterator, Mapping, TextIO


def read_jsonl(path: str | os.PathLike) -> Iterator[dict[str, Any]]:
    """Records of a JSONL file; a truncated final line is skipped, a corrupt inner line is an error."""
    if not os.path.exists(path):
        return
    with open(path, "rb") as f:
        data = f.read()
    lines = data.split(b"\n")
    complete, tail = lines[:-1], lines[-1]  # tail is b"" when the file ends with a newline
    for lineno, raw in enumerate(complete, 1):
        if not raw.strip():
            continue
        try:
            yield json.loads(raw)
        except ValueError as e:
            raise ValueError(f"{path}:{lineno}: corrupt JSONL line ({e})") from e
    del tail  # an unterminated last line is a write cut short by a crash


def _truncate_partial_tail(path: str | os.PathLike) -> int:
    """Cut a file back to its last newline; returns the bytes removed."""
    with open(path, "rb+") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        pos = size
        while pos > 0:
            step = min(65536, pos)
            f.seek(pos - step)
            chunk = f.read(step)
            idx = chunk.rfind(b"\n")
            if idx >= 0:
                pos = pos - step + idx + 1
                break
            pos -= step
        if pos != size:
            f.truncate(pos)
            f.flush()
            os.fsync(f.fileno())
        return size - pos


class JsonlWriter:
    """Appends records atomically (one write + flush + fsync per line) under an exclusive lock."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        if os.path.exists(self.path):
            _truncate_partial_tail(self.path)
        self._f: TextIO = open(self.path, "a", encoding="utf-8")
        try:
            fcntl.flock(self._f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._f.close()
            raise RuntimeError(f"{self.path} is locked by another running process") from None

    def write(self, record: Mapping[str, Any]) -> None:
        """Append one record as a single complete line and make it durable."""
        self._f.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        """Release the lock and close the file."""
        if not self._f.closed:
            self._f.close()

    def __enter__(self) -> "JsonlWriter":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
