"""ArrayRecord shards with the image bytes inline: writing (`python -m xllava_jax.data pack`) and reading.

Each record is `uint32 little-endian JSON length | JSON (the normalized record) | encoded image bytes`.
"""

from __future__ import annotations

import json
import os
import struct
from typing import Any, Sequence

from etils import epath

from xllava_jax.cli import atomic_output
from xllava_jax.data import images, report
from xllava_jax.data.report import DataStats


def encode_record(record: dict, image_bytes: bytes | None) -> bytes:
    """Serialized record: JSON header plus inline image bytes."""
    meta = {k: v for k, v in record.items() if k not in ("image_root", "image_bytes")}
    head = json.dumps(meta, ensure_ascii=False).encode("utf-8")
    return struct.pack("<I", len(head)) + head + (image_bytes or b"")


def decode_record(data: bytes) -> dict:
    """Inverse of encode_record (`image_bytes` set when the record has an image)."""
    (n,) = struct.unpack_from("<I", data)
    record = json.loads(data[4:4 + n].decode("utf-8"))
    if len(data) > 4 + n:
        record["image_bytes"] = bytes(data[4 + n:])
    return record


def write_shards(records: Sequence[dict], out_dir: str | os.PathLike, num_shards: int = 1,
                 stats: DataStats | None = None, strict: bool = False, prefix: str = "data") -> list[str]:
    """Write records (images read from disk, missing ones skipped and counted) into ArrayRecord shards.

    A local `out_dir` is written whole or not at all: the shards go to a temporary directory that replaces
    `out_dir` once every record is written (a strict-mode error leaves `out_dir` as it was).
    """
    if "://" in os.fspath(out_dir):  # cloud storage: no atomic rename
        return _write_shards(records, epath.Path(out_dir), num_shards, stats, strict, prefix)
    with atomic_output(out_dir) as tmp:
        names = [os.path.basename(p) for p in _write_shards(records, epath.Path(tmp), num_shards, stats, strict,
                                                             prefix)]
    return [os.path.join(os.path.abspath(out_dir), name) for name in names]


def _write_shards(records: Sequence[dict], out: epath.Path, num_shards: int, stats: DataStats | None,
                  strict: bool, prefix: str) -> list[str]:
    """write_shards into `out` directly."""
    from array_record.python.array_record_module import ArrayRecordWriter

    out.mkdir(parents=True, exist_ok=True)
    stats = stats if stats is not None else DataStats()
    paths = [os.fspath(out / f"{prefix}-{i:05d}-of-{num_shards:05d}.array_record") for i in range(num_shards)]
    writers = [ArrayRecordWriter(p, "group_size:1") for p in paths]
    n = 0
    try:
        for rec in records:
            blob = None
            if rec.get("image"):
                try:
                    blob = epath.Path(images.image_path(rec["image"], rec.get("image_root"))).read_bytes()
                except FileNotFoundError:
                    stats.skip(rec["id"], report.MISSING_IMAGE, rec["image"], strict)
                    continue
            writers[n % num_shards].write(encode_record(rec, blob))
            n += 1
    finally:
        for w in writers:
            w.close()
    stats.kept += n
    return paths


class ArrayRecordSource:
    """Random-access source of decoded records over ArrayRecord shards (local or cloud paths)."""

    def __init__(self, paths: Sequence[str] | str):
        import grain
        if isinstance(paths, str):
            paths = sorted(os.fspath(p) for p in epath.Path(paths).glob("*.array_record")) \
                if epath.Path(paths).is_dir() else [paths]
        self.paths = list(paths)
        self._source = grain.sources.ArrayRecordDataSource(self.paths)

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return decode_record(self._source[i])

    def __getstate__(self) -> dict:
        return {"paths": self.paths}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["paths"])
