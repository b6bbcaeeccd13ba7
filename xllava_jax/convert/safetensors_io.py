"""Reading and writing (sharded) safetensors state dicts; pickle files are never opened."""

from __future__ import annotations

import json
import math
import mmap
import os
from pathlib import Path
from typing import Any, Iterable, Iterator

import ml_dtypes
import numpy as np

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
IGNORED_SUFFIXES = (".position_ids", ".inv_freq")  # buffers some checkpoints carry


SAFETENSORS_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
                      "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U64": np.uint64,
                      "U32": np.uint32, "U16": np.uint16, "U8": np.uint8, "BOOL": np.bool_}


class MappedFile:
    """One safetensors file mapped read-only: its header, and tensors as zero-copy views of the mapping."""

    def __init__(self, path: Path):
        self.path = path
        with open(path, "rb") as f:
            size = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(size))
            self.map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        header.pop("__metadata__", None)
        self.start = 8 + size
        self.header = header

    def tensor(self, key: str) -> np.ndarray:
        """The tensor `key` as a read-only view (pages are read from the file when touched)."""
        entry = self.header[key]
        if entry["dtype"] not in SAFETENSORS_DTYPES:
            raise ValueError(f"weight {key!r} in {self.path} has dtype {entry['dtype']}, which is not supported")
        dtype = np.dtype(SAFETENSORS_DTYPES[entry["dtype"]])
        begin, end = entry["data_offsets"]
        shape = tuple(entry["shape"])
        if end - begin != math.prod(shape) * dtype.itemsize:
            raise ValueError(f"weight {key!r} in {self.path}: {end - begin} bytes for shape {shape} {entry['dtype']}")
        return np.frombuffer(self.map, dtype, math.prod(shape), self.start + begin).reshape(shape)

    def release(self, key: str, drop_cache: bool = False) -> None:
        """Drop this process's pages of tensor `key`; they stay in the page cache (unless `drop_cache`), and a later
        read maps them again."""
        begin, end = self.header[key]["data_offsets"]
        lo = (self.start + begin) // mmap.PAGESIZE * mmap.PAGESIZE
        if end > begin:
            self.map.madvise(mmap.MADV_DONTNEED, lo, self.start + end - lo)
            if drop_cache:
                fd = os.open(self.path, os.O_RDONLY)
                try:
                    os.posix_fadvise(fd, lo, self.start + end - lo, os.POSIX_FADV_DONTNEED)
                finally:
                    os.close(fd)


class StateDict:
    """Read access to the tensors of a safetensors checkpoint directory, memory-mapped (no copies).

    With `drop_cache` set, released tensors leave the page cache too: a loader copying every weight into memory
    that cannot also hold the files' cached pages then evicts what it has read rather than what it has yet to read.
    """

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)
        self.files = self._key_files()
        self.drop_cache = False

    def _key_files(self) -> dict[str, MappedFile]:
        index = self.directory / INDEX_FILE
        if index.exists():
            weight_map = json.loads(index.read_text())["weight_map"]
            mapped = {name: MappedFile(self.directory / name) for name in sorted(set(weight_map.values()))}
            return {key: mapped[name] for key, name in weight_map.items()}
        files = sorted(self.directory.glob("*.safetensors"))
        if not files:
            pickles = sorted(p.name for p in self.directory.glob("*.bin")) + sorted(
                p.name for p in self.directory.glob("*.pt*"))
            hint = f" (found {pickles}: re-save them as safetensors; pickle files are never loaded)" if pickles else ""
            raise FileNotFoundError(f"no safetensors weights in {self.directory}{hint}")
        keys: dict[str, MappedFile] = {}
        for file in files:
            mapped = MappedFile(file)
            keys.update({key: mapped for key in mapped.header})
        return keys

    def __contains__(self, key: str) -> bool:
        return key in self.files

    def keys(self) -> list[str]:
        """All tensor names except known non-parameter buffers."""
        return [k for k in self.files if not k.endswith(IGNORED_SUFFIXES)]

    def get(self, key: str) -> np.ndarray:
        """One tensor as a read-only view of the mapped file; raises KeyError naming the key and the directory if
        it is missing."""
        if key not in self.files:
            raise KeyError(f"missing weight {key!r} in {self.directory}")
        return self.files[key].tensor(key)

    def release(self, key: str) -> None:
        """Drop this process's pages of `key` (call once its data has been copied elsewhere)."""
        self.files[key].release(key, self.drop_cache)

    def nbytes(self) -> int:
        """Bytes of all tensor data in the checkpoint's files."""
        return sum(os.path.getsize(f.path) for f in set(self.files.values()))


def safetensors_header(entries: Iterable[tuple[str, tuple[int, ...], Any]]) -> bytes:
    """The length-prefixed JSON header of a safetensors file holding (key, shape, dtype) in this order."""
    names = {np.dtype(v): k for k, v in SAFETENSORS_DTYPES.items()}
    header: dict = {"__metadata__": {"format": "pt"}}
    offset = 0
    for key, shape, dtype in entries:
        size = math.prod(shape) * np.dtype(dtype).itemsize
        header[key] = {"dtype": names[np.dtype(dtype)], "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return len(raw).to_bytes(8, "little") + raw


def write_safetensors(path: str | os.PathLike, tensors: list[tuple[str, np.ndarray]]) -> None:
    """One safetensors file of (key, array) pairs, written a tensor at a time (one contiguous copy at most)."""
    with open(path, "wb") as f:
        f.write(safetensors_header((key, value.shape, value.dtype) for key, value in tensors))
        for _, value in tensors:
            f.write(np.ascontiguousarray(value).view(np.uint8).reshape(-1).data)


def write_sharded(directory: str | os.PathLike, tensors: Iterable[tuple[str, np.ndarray]],
                  max_shard_bytes: int = 4 << 30) -> list[str]:
    """Write tensors as model-0000i-of-0000n.safetensors shards plus an index; returns file names.

    `tensors` may be views (of params, of a mapped file): each is copied to the file on its own, so the
    host holds one tensor beside them.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    temp_names: list[str] = []
    weight_map: dict[str, int] = {}
    total = 0
    for shard_index, shard in enumerate(_shards(tensors, max_shard_bytes)):
        name = f"shard-{shard_index:05d}.tmp"
        write_safetensors(directory / name, sorted(shard, key=lambda kv: kv[0]))
        temp_names.append(name)
        for key, value in shard:
            weight_map[key] = shard_index
            total += value.nbytes
    count = len(temp_names)
    names = [SINGLE_FILE] if count == 1 else [f"model-{i + 1:05d}-of-{count:05d}.safetensors" for i in range(count)]
    for temp, final in zip(temp_names, names):
        os.replace(directory / temp, directory / final)
    if count > 1:
        index = {"metadata": {"total_size": total}, "weight_map": {k: names[i] for k, i in sorted(weight_map.items())}}
        (directory / INDEX_FILE).write_text(json.dumps(index, indent=2))
    return names


def _shards(tensors: Iterable[tuple[str, np.ndarray]], max_bytes: int) -> Iterator[list[tuple[str, np.ndarray]]]:
    shard: list[tuple[str, np.ndarray]] = []
    size = 0
    for key, value in tensors:
        if shard and size + value.nbytes > max_bytes:
            yield shard
            shard, size = [], 0
        shard.append((key, value))
        size += value.nbytes
    if shard:
        yield shard
