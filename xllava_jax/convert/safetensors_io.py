"""Reading and writing (sharded) safetensors state dicts; pickle files are never opened."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import safetensors
import safetensors.numpy

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
IGNORED_SUFFIXES = (".position_ids", ".inv_freq")  # buffers some checkpoints carry


class StateDict:
    """Lazy read access to the tensors of a safetensors checkpoint directory."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)
        self.files = self._key_files()

    def _key_files(self) -> dict[str, Path]:
        index = self.directory / INDEX_FILE
        if index.exists():
            weight_map = json.loads(index.read_text())["weight_map"]
            return {key: self.directory / name for key, name in weight_map.items()}
        files = sorted(self.directory.glob("*.safetensors"))
        if not files:
            pickles = sorted(p.name for p in self.directory.glob("*.bin")) + sorted(
                p.name for p in self.directory.glob("*.pt*"))
            hint = f" (found {pickles}: re-save them as safetensors; pickle files are never loaded)" if pickles else ""
            raise FileNotFoundError(f"no safetensors weights in {self.directory}{hint}")
        keys: dict[str, Path] = {}
        for file in files:
            with safetensors.safe_open(str(file), framework="numpy") as f:
                keys.update({key: file for key in f.keys()})
        return keys

    def __contains__(self, key: str) -> bool:
        return key in self.files

    def keys(self) -> list[str]:
        """All tensor names except known non-parameter buffers."""
        return [k for k in self.files if not k.endswith(IGNORED_SUFFIXES)]

    def get(self, key: str) -> np.ndarray:
        """One tensor; raises KeyError naming the key and the directory if it is missing."""
        if key not in self.files:
            raise KeyError(f"missing weight {key!r} in {self.directory}")
        with safetensors.safe_open(str(self.files[key]), framework="numpy") as f:
            return f.get_tensor(key)


def write_sharded(directory: str | os.PathLike, tensors: Iterable[tuple[str, np.ndarray]],
                  max_shard_bytes: int = 4 << 30) -> list[str]:
    """Write tensors as model-0000i-of-0000n.safetensors shards plus an index; returns file names.

    Tensors are consumed one by one and a shard is flushed once it reaches max_shard_bytes,
    so at most one shard is held in host memory.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    temp_names: list[str] = []
    weight_map: dict[str, int] = {}
    total = 0
    for shard_index, shard in enumerate(_shards(tensors, max_shard_bytes)):
        name = f"shard-{shard_index:05d}.tmp"
        safetensors.numpy.save_file(shard, str(directory / name), metadata={"format": "pt"})
        temp_names.append(name)
        for key, value in shard.items():
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


def _shards(tensors: Iterable[tuple[str, np.ndarray]], max_bytes: int) -> Iterator[dict[str, np.ndarray]]:
    shard: dict[str, np.ndarray] = {}
    size = 0
    for key, value in tensors:
        if shard and size + value.nbytes > max_bytes:
            yield shard
            shard, size = {}, 0
        shard[key] = np.ascontiguousarray(value)
        size += value.nbytes
    if shard:
        yield shard
