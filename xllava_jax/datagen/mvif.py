"""The mvif generation run: select images, ask the model per (image, type), validate, write, resume.

Output files (``out`` is a JSONL path):
  ``out``                 records in the parallel multilingual LLaVA format, keyed by id = vg<image id>_<type>
  ``out.rejects.jsonl``   replies that failed validation / requests that failed, with ``reason`` and ``detail``
  ``out.meta.jsonl``      per record: main objects, the location scene graph, token usage
A rerun skips every id already in ``out`` and every final reject (the reply was paid for);
``request_failed`` and ``image_missing`` rejects are retried. Only the main thread writes.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import os
from typing import Any, Iterable, Mapping, Sequence

from tqdm import tqdm

from xllava_jax.datagen.default_seeds import DEFAULT_SEEDS
from xllava_jax.datagen.parse import RejectError, record_id, reply_to_record
from xllava_jax.datagen.prompts import DEFAULT_TURNS, MVIF_TYPES, build_messages
from xllava_jax.jsonl import JsonlWriter, read_jsonl
from xllava_jax.datagen.vg import SelectedImage, SelectionConfig, load_json, select_from_files
from xllava_jax.openai_api import ApiError, BudgetExceeded, ChatClient, image_data_url, run_concurrently

log = logging.getLogger(__name__)

RETRYABLE_REJECTS = frozenset({"request_failed", "image_missing"})  # not "done": a rerun tries again


@dataclasses.dataclass
class MvifConfig:
    """Everything one mvif run needs besides the API client."""

    objects_json: str
    image_data_json: str
    image_root: str
    out: str
    types: tuple[str, ...] = MVIF_TYPES
    turns: Mapping[str, int] = dataclasses.field(default_factory=lambda: dict(DEFAULT_TURNS))
    seeds_path: str | None = None
    selection: SelectionConfig = dataclasses.field(default_factory=SelectionConfig)
    retry_rejects: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        bad = [t for t in self.types if t not in MVIF_TYPES]
        if bad:
            raise ValueError(f"unknown mvif types {bad}; expected a subset of {MVIF_TYPES}")
        for t in self.types:
            if int(self.turns.get(t, 0)) < 1:
                raise ValueError(f"turns[{t!r}] must be >= 1, got {self.turns.get(t)}")

    @property
    def rejects_path(self) -> str:
        """Where rejected replies go."""
        return self.out + ".rejects.jsonl"

    @property
    def meta_path(self) -> str:
        """Where per-record side information goes."""
        return self.out + ".meta.jsonl"


@dataclasses.dataclass(frozen=True)
class Task:
    """One (image, type) unit of work."""

    image: SelectedImage
    mvif_type: str

    @property
    def id(self) -> str:
        """The record id this task produces."""
        return record_id(self.image.image_id, self.mvif_type)


def load_seeds(path: str | None) -> tuple[dict[str, list[dict[str, Any]]], str]:
    """Seed examples per type (built-ins when path is None) and the directory seed images are relative to."""
    if path is None:
        return DEFAULT_SEEDS, os.getcwd()
    seeds = load_json(path)
    for t, items in seeds.items():
        if t not in MVIF_TYPES or not isinstance(items, list):
            raise ValueError(f"seeds file {path}: key {t!r} must be an mvif type mapping to a list of seeds")
        for i, s in enumerate(items):
            if "reply" not in s:
                raise ValueError(f"seeds file {path}: {t}[{i}] has no 'reply'")
    return {**DEFAULT_SEEDS, **seeds}, os.path.dirname(os.path.abspath(path))


def seed_image_urls(seeds: Sequence[Mapping[str, Any]], base_dir: str) -> list[str | None]:
    """Data URLs for seeds that carry an image (None for text-only seeds)."""
    return [image_data_url(os.path.join(base_dir, s["image"])) if s.get("image") else None for s in seeds]


def done_ids(cfg: MvifConfig) -> set[str]:
    """Ids already finished: written records plus final rejects (unless retry_rejects)."""
    done = {r["id"] for r in read_jsonl(cfg.out)}
    if not cfg.retry_rejects:
        done |= {r["id"] for r in read_jsonl(cfg.rejects_path) if r.get("reason") not in RETRYABLE_REJECTS}
    return done


def plan_tasks(images: Iterable[SelectedImage], types: Sequence[str], done: set[str]) -> list[Task]:
    """All (image, type) tasks not yet done, image-major order."""
    return [t for img in images for t in (Task(img, ty) for ty in types) if t.id not in done]


def run_task(task: Task, client: ChatClient, cfg: MvifConfig, seeds: Mapping[str, list],
             seed_urls: Mapping[str, list]) -> dict[str, Any]:
    """Call the model for one task; returns {"record", "meta"} or {"reject"}; API errors propagate."""
    img, t = task.image, task.mvif_type
    base = {"id": task.id, "image_id": img.image_id, "type": t, "image": img.image}
    path = os.path.join(cfg.image_root, img.image)
    if not os.path.isfile(path):
        return {"reject": {**base, "reason": "image_missing", "detail": f"no file {path}"}}
    messages = build_messages(t, image_data_url(path), img.main_objects, cfg.turns[t], seeds[t], seed_urls[t])
    result = client.complete(messages)
    usage = {"prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens}
    try:
        record, scene_graph = reply_to_record(result.text, result.finish_reason, image_id=img.image_id,
                                              image=img.image, mvif_type=t, turns=cfg.turns[t])
    except RejectError as e:
        client.forget(result)  # kept in the rejects file; --retry_rejects asks anew
        return {"reject": {**base, "reason": e.reason, "detail": e.detail, "reply": result.text[:4000], **usage}}
    meta = {"id": task.id, "main_objects": list(img.main_objects), "scene_graph": scene_graph, **usage}
    return {"record": record, "meta": meta}


def count_duplicates(path: str) -> int:
    """How many records in a JSONL file repeat an earlier id."""
    ids = [r["id"] for r in read_jsonl(path)]
    return len(ids) - len(set(ids))


def run_mvif(cfg: MvifConfig, client: ChatClient) -> dict[str, Any]:
    """Generate all missing records; stops cleanly at the budget; returns a summary dict."""
    images = select_from_files(cfg.objects_json, cfg.image_data_json, cfg.selection)
    seeds, seed_dir = load_seeds(cfg.seeds_path)
    seed_urls = {t: seed_image_urls(seeds[t], seed_dir) for t in cfg.types}
    done = done_ids(cfg)
    tasks = plan_tasks(images, cfg.types, done)
    rejected: collections.Counter[str] = collections.Counter()
    written = failed = 0
    stopped_by_budget = False
    with JsonlWriter(cfg.out) as out, JsonlWriter(cfg.rejects_path) as rej, JsonlWriter(cfg.meta_path) as meta, \
            tqdm(total=len(tasks), desc="mvif", unit="item", disable=not cfg.progress) as bar:
        work = lambda task: run_task(task, client, cfg, seeds, seed_urls)  # noqa: E731
        stop = lambda: not client.budget_left()  # noqa: E731
        for task, outcome, err in run_concurrently(work, tasks, client.config.concurrency, stop=stop):
            if isinstance(err, BudgetExceeded):
                stopped_by_budget = True
                continue
            if isinstance(err, ApiError):
                failed += 1
                outcome = {"reject": {"id": task.id, "image_id": task.image.image_id, "type": task.mvif_type,
                                      "image": task.image.image, "reason": "request_failed", "detail": str(err)}}
            elif err is not None:
                raise err
            if "record" in outcome:
                out.write(outcome["record"])
                meta.write(outcome["meta"])
                written += 1
            else:
                rej.write(outcome["reject"])
                rejected[outcome["reject"]["reason"]] += 1
            bar.update(1)
            bar.set_postfix(rejects=sum(rejected.values()), usd=f"{client.stats.cost_usd:.3f}")
        stopped_by_budget = stopped_by_budget or written + sum(rejected.values()) < len(tasks)
    return {
        "selected_images": len(images), "tasks_total": len(images) * len(cfg.types),
        "skipped_done": len(images) * len(cfg.types) - len(tasks), "written": written,
        "rejects": dict(rejected), "rejects_total": sum(rejected.values()), "failed": failed,
        "stopped_by_budget": stopped_by_budget, "duplicates": count_duplicates(cfg.out),
        "api": client.stats.as_dict(),
    }


def summary_json(summary: Mapping[str, Any]) -> str:
    """The run summary as one JSON line (what the CLI prints)."""
    return json.dumps(summary, ensure_ascii=False, sort_keys=True)
