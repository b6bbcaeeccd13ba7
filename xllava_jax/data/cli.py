"""Command-line tools: `python -m xllava_jax.data {inspect,stats,pack}` (see README "Data formats")."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

import numpy as np

from xllava_jax.data import arrayrecord, formats
from xllava_jax.data.labels import IGNORE_INDEX
from xllava_jax.data.processing import SKIP, SampleProcessor
from xllava_jax.data.report import DataStats
from xllava_jax.tokenizer.spm import Tokenizer, load_tokenizer


def load_any(path: str, image_root: str | None, lang: str | None, stats: DataStats, strict: bool) -> list[dict]:
    """Records of a LLaVA JSON/JSONL (parallel values need --lang) or a text corpus (.txt, or JSONL with text)."""
    if path.endswith(".txt"):
        return formats.load_text(path, stats=stats, strict=strict)
    with open(path, encoding="utf-8") as f:
        head = f.read(4096)
    if '"conversations"' not in head and '"text"' in head:
        return formats.load_text(path, stats=stats, strict=strict)
    return formats.load_llava(path, image_root, lang, stats=stats, strict=strict)


def collapse_image_runs(ids: Sequence[int], image_token_id: int) -> list[int]:
    """`ids` with every run of image tokens shortened to one token (for readable decoding)."""
    return [t for j, t in enumerate(ids) if t != image_token_id or j == 0 or ids[j - 1] != image_token_id]


def inspect_example(tok: Tokenizer, ex: dict) -> dict:
    """The JSON line `inspect` prints for an example."""
    ids, labels = ex["input_ids"].tolist(), ex["labels"].tolist()
    trained = [t for t, lab in zip(ids, labels) if lab != IGNORE_INDEX]
    return {"id": ex["id"], "input_ids": ids, "labels": labels,
            "text": tok.decode(collapse_image_runs(ids, tok.image_token_id)),
            "trained_text": tok.decode(trained)}


def _common(p: argparse.ArgumentParser) -> None:
    """Arguments shared by inspect and stats."""
    p.add_argument("--data", required=True)
    p.add_argument("--tokenizer", required=True, help="tokenizer.model or a HF tokenizer directory")
    p.add_argument("--template", default="vicuna_v1")
    p.add_argument("--image_root", default=None)
    p.add_argument("--lang", default=None, help="language to pick from parallel {lang: text} values")
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--image_tokens", type=int, default=576)
    p.add_argument("--max_len", type=int, default=2048)
    p.add_argument("--strict", action="store_true")


def _examples(args, load_images: bool):
    """(tokenizer, stats, iterator of examples-or-skip-markers) for inspect/stats."""
    stats = DataStats()
    tok = load_tokenizer(args.tokenizer)
    records = load_any(args.data, args.image_root, args.lang, stats, args.strict)[: args.limit]
    proc = SampleProcessor(tok, args.template, args.max_len, args.image_tokens, strict=args.strict,
                           load_images=load_images)
    return tok, stats, map(proc, records)


def cmd_inspect(args) -> int:
    """Print one JSON object per sample."""
    tok, stats, examples = _examples(args, load_images=False)
    for ex in examples:
        if SKIP in ex:
            stats.skip(ex["id"], ex[SKIP], ex.get("detail", ""))
            continue
        stats.kept += 1
        print(json.dumps(inspect_example(tok, ex), ensure_ascii=False))
    print(stats.summary("inspect"), file=sys.stderr)
    return 0


def cmd_stats(args) -> int:
    """Print length, drop/truncation/masking and language statistics as JSON (summary on stderr)."""
    tok, stats, examples = _examples(args, load_images=args.check_images)
    lengths, trained = [], []
    for ex in examples:
        if SKIP in ex:
            stats.skip(ex["id"], ex[SKIP], ex.get("detail", ""))
            continue
        stats.kept += 1
        stats.truncated += int(ex["truncated"])
        if ex.get("lang"):
            stats.languages[ex["lang"]] += 1
        lengths.append(len(ex["input_ids"]))
        trained.append(int(np.sum(ex["labels"] != IGNORE_INDEX)))
    pct = (lambda q: int(np.percentile(lengths, q))) if lengths else (lambda q: 0)
    out = {"samples": len(lengths), "length": {"min": min(lengths, default=0), "p50": pct(50), "p95": pct(95),
                                               "max": max(lengths, default=0),
                                               "mean": float(np.mean(lengths)) if lengths else 0.0},
           "trained_tokens_mean": float(np.mean(trained)) if trained else 0.0, **stats.to_dict()}
    print(json.dumps(out, ensure_ascii=False))
    print(stats.summary("stats"), file=sys.stderr)
    return 0


def cmd_pack(args) -> int:
    """Write a JSON + image-folder dataset into ArrayRecord shards with inline image bytes."""
    stats = DataStats()
    if args.parallel:
        records = formats.load_parallel(args.data, args.image_root, stats=stats, strict=args.strict)
    else:
        records = load_any(args.data, args.image_root, None, stats, args.strict)
    paths = arrayrecord.write_shards(records, args.out, args.num_shards, stats, args.strict)
    print(json.dumps({"shards": paths, **stats.to_dict()}, ensure_ascii=False))
    print(stats.summary("pack"), file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `python -m xllava_jax.data`."""
    parser = argparse.ArgumentParser(prog="python -m xllava_jax.data")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("inspect", help="print input_ids/labels/text/trained_text per sample as JSON lines")
    _common(p)
    p.set_defaults(fn=cmd_inspect)
    p = sub.add_parser("stats", help="lengths, dropped/truncated/masked counts, languages")
    _common(p)
    p.add_argument("--check_images", action="store_true", help="also open and preprocess every image")
    p.set_defaults(fn=cmd_stats)
    p = sub.add_parser("pack", help="JSON + image folder -> ArrayRecord shards with inline images")
    p.add_argument("--data", required=True)
    p.add_argument("--image_root", default=None)
    p.add_argument("--out", required=True)
    p.add_argument("--num_shards", type=int, default=1)
    p.add_argument("--parallel", action="store_true", help="records are parallel {lang: text} (kept as such)")
    p.add_argument("--strict", action="store_true")
    p.set_defaults(fn=cmd_pack)
    args = parser.parse_args(argv)
    return args.fn(args)
