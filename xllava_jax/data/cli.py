"""Command-line tools: `python -m xllava_jax.data {inspect,stats,pack}` (see README "Data formats")."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Sequence

import numpy as np

from xllava_jax.cli import UserError, add_subparsers, new_parser, run_subcommand
from xllava_jax.data import arrayrecord, formats
from xllava_jax.data.labels import IGNORE_INDEX
from xllava_jax.data.processing import SKIP, SampleProcessor, expand_pieces
from xllava_jax.data.report import MISSING_LANGUAGE, DataStats
from xllava_jax.tokenizer.spm import Tokenizer, load_tokenizer

log = logging.getLogger("xllava_jax.data")


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


DEFAULTS = {"template": "vicuna_v1", "image_tokens": 576}  # without --checkpoint (LLaVA-1.5's 336 px CLIP)


def _common(p: argparse.ArgumentParser) -> None:
    """Arguments shared by inspect and stats."""
    p.add_argument("--data", required=True, help="LLaVA JSON/JSONL, or a text corpus (.txt, or JSONL with text)")
    p.add_argument("--checkpoint", default=None,
                   help="the model the data is for (Orbax checkpoint, training workdir or HF export): image tokens, "
                        "template and tokenizer are read from it; flags that disagree with it are warned about (default: none)")
    p.add_argument("--tokenizer", default=None,
                   help="tokenizer.model or an HF tokenizer directory (default: the --checkpoint's)")
    p.add_argument("--template", default=None,
                   help=f"conversation template (default: the --checkpoint's, else {DEFAULTS['template']})")
    p.add_argument("--image_root", default=None, help="directory the records' image paths are relative to (default: none: as written)")
    p.add_argument("--lang", default=None, help="language to pick from parallel {lang: text} values (default: none: such records are "
                                                  "skipped and counted)")
    p.add_argument("--limit", type=int, default=None, help="only the first N records (default: all)")
    p.add_argument("--image_tokens", type=int, default=None,
                   help=f"tokens per image (default: the --checkpoint's, else {DEFAULTS['image_tokens']})")
    p.add_argument("--max_len", type=int, default=2048, help="sequence length samples are truncated to")
    p.add_argument("--strict", action="store_true", help="stop with an error at the first bad record")


def model_settings(checkpoint: str) -> dict:
    """{"image_tokens", "template", "tokenizer"} a checkpoint or HF export says (missing keys: it does not say)."""
    from pathlib import Path

    from xllava_jax import checkpoint as ckpt
    from xllava_jax.data.chat_template import CHAT_TEMPLATES
    from xllava_jax.models.llava import LlavaConfig
    path = Path(checkpoint)
    if not path.exists():
        raise FileNotFoundError(f"--checkpoint {checkpoint} does not exist")
    out: dict = {}
    if (path / "config.json").is_file():  # an HF export
        config = json.loads((path / "config.json").read_text())
        if "image_seq_length" in config:
            out["image_tokens"] = int(config["image_seq_length"])
        directory = path
    else:
        step = ckpt.resolve(path)
        cfg = ckpt.load_config(step)
        if isinstance(cfg, LlavaConfig):
            out["image_tokens"] = cfg.num_image_tokens
        template = ckpt.read_record(step).template
        if template:
            out["template"] = template
        directory = step
    carried = ckpt.carried_tokenizer(path)
    if carried is not None:
        out["tokenizer"] = str(carried)
    jinja = (directory / "chat_template.jinja")
    text = jinja.read_text() if jinja.is_file() else None
    if text is None and (directory / "tokenizer_config.json").is_file():
        text = json.loads((directory / "tokenizer_config.json").read_text()).get("chat_template")
    name = next((n for n, t in CHAT_TEMPLATES.items() if t == text), None)
    if name:
        out.setdefault("template", name)
    return out


def resolve_settings(args: argparse.Namespace) -> None:
    """Fill --tokenizer, --template and --image_tokens from --checkpoint (else the defaults), warning where a
    flag given disagrees with the model."""
    model = model_settings(args.checkpoint) if args.checkpoint else {}
    for key in ("template", "image_tokens", "tokenizer"):
        given, says = getattr(args, key), model.get(key)
        if given is not None and says is not None and str(given) != str(says) and key != "tokenizer":
            log.warning("--%s %s disagrees with the checkpoint's %s (%s): samples will not look like its training",
                        key, given, says, args.checkpoint)
        if given is None:
            setattr(args, key, says if says is not None else DEFAULTS.get(key))
    if args.tokenizer is None:
        raise UserError("give --tokenizer (or a --checkpoint that carries its tokenizer.model)")
    if args.checkpoint and "image_tokens" in model and "template" not in model:
        log.warning("%s does not say its conversation template; using --template %s", args.checkpoint, args.template)


def _examples(args, load_images: bool):
    """(tokenizer, stats, iterator of examples-or-skip-markers) for inspect/stats."""
    resolve_settings(args)
    stats = DataStats()
    tok = load_tokenizer(args.tokenizer)
    records = load_any(args.data, args.image_root, args.lang, stats, args.strict)[: args.limit]
    proc = SampleProcessor(tok, args.template, args.max_len, args.image_tokens, strict=args.strict,
                           load_images=load_images)
    return tok, stats, map(proc, records)


def lang_hint(args: argparse.Namespace, stats: DataStats) -> None:
    """Say to pass --lang when records were skipped for holding parallel {lang: text} values."""
    if stats.skipped.get(MISSING_LANGUAGE) and args.lang is None:
        print(f"note: {stats.skipped[MISSING_LANGUAGE]} records hold parallel {{lang: text}} values; pass --lang "
              "LANG (e.g. --lang en) to read them", file=sys.stderr)


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
    lang_hint(args, stats)
    return 0


def cmd_stats(args) -> int:
    """Print length, drop/truncation/masking and language statistics as JSON (summary on stderr)."""
    tok, stats, examples = _examples(args, load_images=args.check_images)
    lengths, before, trained = [], [], []
    for ex in examples:
        if SKIP in ex:
            stats.skip(ex["id"], ex[SKIP], ex.get("detail", ""))
            continue
        stats.kept += 1
        stats.truncated += int(ex["truncated"])
        if ex.get("lang"):
            stats.languages[ex["lang"]] += 1
        lengths.append(len(ex["input_ids"]))
        before.append(len(ex["input_ids"]) + int(ex.get("tokens_cut", 0)))
        trained.append(int(np.sum(ex["labels"] != IGNORE_INDEX)))
    out = {"samples": len(lengths), "max_len": args.max_len, "length": length_summary(lengths),
           "length_before_truncation": length_summary(before),
           "trained_tokens_mean": float(np.mean(trained)) if trained else 0.0, **stats.to_dict()}
    print(json.dumps(out, ensure_ascii=False))
    print(stats.summary("stats"), file=sys.stderr)
    lang_hint(args, stats)
    return 0


def length_summary(lengths: list[int]) -> dict:
    """min, p50, p95, max and mean of sample lengths."""
    pct = (lambda q: int(np.percentile(lengths, q))) if lengths else (lambda q: 0)
    return {"min": min(lengths, default=0), "p50": pct(50), "p95": pct(95), "max": max(lengths, default=0),
            "mean": float(np.mean(lengths)) if lengths else 0.0}


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


def build_parser() -> argparse.ArgumentParser:
    """The data CLI's argument parser."""
    parser = new_parser("python -m xllava_jax.data", __doc__)
    sub = add_subparsers(parser)
    p = sub.add_parser("inspect", help="print input_ids/labels/text/trained_text per sample as JSON lines")
    _common(p)
    p.set_defaults(fn=cmd_inspect)
    p = sub.add_parser("stats", help="lengths (before and after truncation), dropped/truncated/masked counts, "
                                     "languages")
    _common(p)
    p.add_argument("--check_images", action="store_true", help="also open and preprocess every image")
    p.set_defaults(fn=cmd_stats)
    p = sub.add_parser("pack", help="JSON + image folder -> ArrayRecord shards with inline images")
    p.add_argument("--data", required=True, help="LLaVA JSON/JSONL (or a text corpus)")
    p.add_argument("--image_root", default=None, help="directory the records' image paths are relative to (default: none: as written)")
    p.add_argument("--out", required=True, help="output directory of the shards (written whole or not at all)")
    p.add_argument("--num_shards", type=int, default=1, help="number of ArrayRecord shards")
    p.add_argument("--parallel", action="store_true", help="records are parallel {lang: text} (kept as such)")
    p.add_argument("--strict", action="store_true", help="stop with an error at the first bad record")
    p.set_defaults(fn=cmd_pack)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `python -m xllava_jax.data`: 0, or 2 with one `error:` line for a bad input."""
    return run_subcommand(build_parser, argv)
