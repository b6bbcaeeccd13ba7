"""Common random numbers for stage 2: each run reads an explicit stream of steps x batch records in order.
The base instruction records (the master list) follow one permutation per pass, seeded by (seed, pass), for
every arm; an arm's extra records (mvif, the gate's Korean records, the LRM task mix) take fixed, evenly spread
slots. Arms with the same extras read identical streams; with and without extras, the base order is shared."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Sequence

import numpy as np

from xllava_jax.data import formats
from xllava_jax.data.multilingual import TaskMixConfig, build_task_mix
from xllava_jax.experiments.runner import file_langs
from xllava_jax.train.inputs import parse_weights

EXTRA_SEED = 1_000_003  # offsets the extras' permutation seeds from the master list's


def extra_slots(n_base: int, n_extra: int, length: int) -> np.ndarray:
    """Boolean [length]: slot j holds an extra record iff floor((j+1) f) > floor(j f), f = n_extra/(n_base+n_extra)."""
    if n_base + n_extra == 0:
        raise ValueError("a stream needs at least one record")
    f = n_extra / (n_base + n_extra)
    j = np.arange(length)
    return np.floor((j + 1) * f + 1e-9) > np.floor(j * f + 1e-9)


def cycled_order(n: int, count: int, seed: int) -> list[int]:
    """The first `count` indices of passes over range(n), pass e in the order default_rng([seed, e]).permutation."""
    out: list[int] = []
    epoch = 0
    while len(out) < count and n:
        out.extend(int(i) for i in np.random.default_rng([seed, epoch]).permutation(n))
        epoch += 1
    return out[:count]


def stream_plan(n_base: int, n_extra: int, length: int, seed: int) -> list[tuple[str, int]]:
    """[(source, index)] of a stream: source 'base' or 'extra', indices in each source's seeded cycled order."""
    slots = extra_slots(n_base, n_extra, length)
    n_x = int(slots.sum())
    base = iter(cycled_order(n_base, length - n_x, seed))
    extra = iter(cycled_order(n_extra, n_x, seed + EXTRA_SEED))
    return [("extra", next(extra)) if s else ("base", next(base)) for s in slots]


def file_records(root: Path, names: Sequence[str]) -> list[dict]:
    """Normalized single-language records of world files, one per (record, language) of each file."""
    return [r for name in names for la in file_langs(name)
            for r in formats.load_llava(root / f"{name}.jsonl", lang=la, strict=True)]


def task_mix_records(root: Path, tasks: str, ratio: float, seed: int) -> list[dict]:
    """The LRM task-mix samples (MVQA / EP-VQA / BVQA) over parallel.jsonl for a seed (as train.inputs builds them)."""
    parallel = formats.load_parallel(root / "parallel.jsonl", strict=True)
    mix = TaskMixConfig(tasks=parse_weights(tasks), non_english_ratio=ratio, seed=seed)
    return build_task_mix(parallel, mix, verbose=False)[0]


def raw(record: dict) -> dict:
    """A normalized record back in LLaVA JSON form (single-language text turns)."""
    roles = {"human": "human", "gpt": "gpt"}
    return {"id": record["id"], "image": record.get("image"), "lang": record.get("lang"), "type": record.get("type"),
            "conversations": [{"from": roles[r], "value": v} for r, v in record["turns"]]}


def write_stream(path: Path, base: Sequence[dict], extra: Sequence[dict], length: int, seed: int) -> Path:
    """The stream file of `length` records (kept if it exists: its name carries the recipe's digest)."""
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    plan = stream_plan(len(base), len(extra), length, seed)
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for source, i in plan:
            f.write(json.dumps(raw((base if source == "base" else extra)[i]), ensure_ascii=False) + "\n")
    tmp.replace(path)
    return path


def row_length(records: Sequence[dict], tokenizer, template: str, image_tokens: int, multiple: int = 16) -> int:
    """The longest record's token count (image tokens included) under `tokenizer`, rounded up to `multiple`."""
    from xllava_jax.data.labels import encode_conversation
    from xllava_jax.data.templates import get_template
    t = get_template(template)
    seen: dict[tuple, int] = {}
    for r in records:
        key = tuple(map(tuple, r["turns"]))
        if key not in seen:
            seen[key] = len(encode_conversation(tokenizer, t, r["turns"], image_tokens)[0])
    return multiple * math.ceil(max(seen.values()) / multiple)
