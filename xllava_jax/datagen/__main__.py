"""CLI: ``python -m xllava_jax.datagen {mvif,translate,export,agree} ...`` (see --help of each)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

from xllava_jax.cli import add_subparsers, new_parser, run_subcommand
from xllava_jax.datagen.mvif import MvifConfig, run_mvif, summary_json
from xllava_jax.datagen.prompts import DEFAULT_TURNS, MVIF_TYPES
from xllava_jax.datagen.translate import TranslateConfig, agreement_bleu, export_language, load_translator, run_translate
from xllava_jax.datagen.vg import SelectionConfig
from xllava_jax.openai_api import ENV_FIELDS, ApiConfig, ChatClient

ENV_HELP = ("API settings come from OPENAI_BASE_URL, OPENAI_MODEL, OPENAI_API_KEY (and OPENAI_TIMEOUT_S, "
            "OPENAI_MAX_RETRIES, OPENAI_CONCURRENCY, OPENAI_RPM, OPENAI_PRICE_INPUT_PER_1M, "
            "OPENAI_PRICE_OUTPUT_PER_1M, OPENAI_BUDGET_USD); flags override them. The key is read only from "
            "the environment and is never printed or written.")


def csv(value: str) -> tuple[str, ...]:
    """Comma-separated list argument."""
    return tuple(v.strip() for v in value.split(",") if v.strip())


def turns_arg(value: str) -> dict[str, int]:
    """``type=N,...`` argument merged over the defaults."""
    out = dict(DEFAULT_TURNS)
    for item in csv(value):
        key, _, n = item.partition("=")
        if key not in MVIF_TYPES or not n.isdigit():
            raise argparse.ArgumentTypeError(f"bad --turns item {item!r}; expected e.g. object=3")
        out[key] = int(n)
    return out


def add_api_args(p: argparse.ArgumentParser) -> None:
    """Flags that override the OPENAI_* environment."""
    g = p.add_argument_group("API (override OPENAI_* environment variables)")
    fallback = ApiConfig()

    def default(field: str) -> str:
        value = getattr(fallback, field)
        return f"(default: $OPENAI_{ENV_FIELDS[field][0]}, else {value})" if field in ENV_FIELDS else f"(default: {value})"

    g.add_argument("--base_url", help=f"OpenAI-compatible base URL {default('base_url')}")
    g.add_argument("--model", help=f"model name {default('model')}")
    g.add_argument("--concurrency", type=int, help=f"requests in flight {default('concurrency')}")
    g.add_argument("--rpm", dest="requests_per_minute", type=float,
                   help=f"rate limit, requests per minute, 0 = none {default('requests_per_minute')}")
    g.add_argument("--timeout_s", type=float, help=f"per-request timeout in seconds {default('timeout_s')}")
    g.add_argument("--max_retries", type=int, help=f"retries on 429/5xx/timeouts {default('max_retries')}")
    g.add_argument("--budget_usd", type=float, help="stop cleanly once this much is spent, counting what earlier "
                                                    "runs with the same --out spent (OUT.replies.jsonl) "
                                                    "(default: $OPENAI_BUDGET_USD, else no cap)")
    g.add_argument("--price_input_per_1m", type=float,
                   help=f"USD per 1M prompt tokens {default('price_input_per_1m')}")
    g.add_argument("--price_output_per_1m", type=float,
                   help=f"USD per 1M completion tokens {default('price_output_per_1m')}")
    g.add_argument("--max_tokens", type=int, help=f"max completion tokens per request {default('max_tokens')}")

REPLIES_SUFFIX = ".replies.jsonl"  # next to --out: every paid reply and possibly billed timeout (see openai_api)


def api_client(args: argparse.Namespace) -> ChatClient:
    """Client from the environment with CLI overrides; its reply store OUT.replies.jsonl makes the budget
    cumulative across reruns and never pays twice for the same request."""
    keys = ("base_url", "model", "concurrency", "requests_per_minute", "timeout_s", "max_retries", "budget_usd",
            "price_input_per_1m", "price_output_per_1m", "max_tokens")
    return ChatClient(ApiConfig.from_env(**{k: getattr(args, k) for k in keys}), store=args.out + REPLIES_SUFFIX)


def cmd_mvif(args: argparse.Namespace) -> int:
    """Run mvif generation."""
    client = api_client(args)
    sel = SelectionConfig(args.min_objects, args.max_objects, args.min_area_share, args.max_images, args.seed)
    cfg = MvifConfig(args.objects, args.image_data, args.image_root, args.out, args.types, args.turns,
                     args.seeds, sel, args.retry_rejects, not args.no_progress)
    print(summary_json(run_mvif(cfg, client)))
    return 0


def cmd_translate(args: argparse.Namespace) -> int:
    """Run a translation."""
    client = api_client(args) if args.translator == "api" else None
    cfg = TranslateConfig(args.input, args.out, args.kind, args.src, args.langs, args.fields, args.batch_texts,
                          args.retry_rejects, not args.no_progress)
    summary = run_translate(cfg, load_translator(args.translator, client), client,
                            client.config.concurrency if client else args.concurrency or 1)
    print(json.dumps(summary, ensure_ascii=False, sort_keys=True))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Write per-language plain files from a parallel file."""
    for lang in args.langs:
        path = f"{args.out_prefix}.{lang}.jsonl"
        print(f"{path}: {export_language(args.input, lang, path)} records")
    return 0


def cmd_agree(args: argparse.Namespace) -> int:
    """BLEU agreement between two translators' outputs."""
    print(json.dumps(agreement_bleu(args.a, args.b, args.langs, args.kind), sort_keys=True))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The datagen argument parser."""
    p = new_parser("python -m xllava_jax.datagen", __doc__, epilog=ENV_HELP)
    sub = add_subparsers(p)

    m = sub.add_parser("mvif", help="generate the X-LLaVA mvif set from Visual Genome", epilog=ENV_HELP,
                       description="Generate object/location/atmosphere/conversation data in en/ko/zh "
                                   "(X-LLaVA section 3). Resumable: rerun the same command to continue.")
    m.add_argument("--objects", required=True, help="Visual Genome objects.json")
    m.add_argument("--image_data", required=True, help="Visual Genome image_data.json")
    m.add_argument("--image_root", required=True, help="directory holding VG_100K/ and VG_100K_2/")
    m.add_argument("--out", required=True, help="output JSONL (rejects and meta go next to it)")
    m.add_argument("--types", type=csv, default=MVIF_TYPES, help="comma list of types")
    m.add_argument("--turns", type=turns_arg, default=dict(DEFAULT_TURNS),
                   help="QA pairs per type, e.g. object=3,location=3")
    m.add_argument("--seeds", help="JSON file of in-context seeds per type (default: built-in examples)")
    m.add_argument("--min_objects", type=int, default=3, help="minimum main objects m")
    m.add_argument("--max_objects", type=int, default=10, help="maximum main objects m")
    m.add_argument("--min_area_share", type=float, default=0.01,
                   help="a box is a main object if it covers at least this fraction of the image")
    m.add_argument("--max_images", type=int, help="use at most this many selected images (default: all)")
    m.add_argument("--seed", type=int, default=0, help="shuffle seed for image order")
    m.add_argument("--retry_rejects", action="store_true", help="also redo ids that were rejected before")
    m.add_argument("--no_progress", action="store_true", help="no progress bar")
    add_api_args(m)
    m.set_defaults(fn=cmd_mvif)

    t = sub.add_parser("translate", help="translate a LLaVA dataset or question file", epilog=ENV_HELP,
                       description="Translate into target languages keeping <image>, option letters and "
                                   "numbers; writes the parallel multilingual format. Resumable.")
    t.add_argument("--input", required=True, help="LLaVA JSON/JSONL dataset or question JSONL")
    t.add_argument("--out", required=True, help="output parallel JSONL (rejects go next to it)")
    t.add_argument("--kind", choices=("llava", "questions"), default="llava", help="input kind")
    t.add_argument("--src", default="en", help="source language")
    t.add_argument("--langs", type=csv, default=("ko", "zh"), help="target languages")
    t.add_argument("--fields", type=csv, default=("text",), help="question fields to translate")
    t.add_argument("--batch_texts", type=int, default=16, help="texts per request")
    t.add_argument("--translator", default="api", help="'api' or package.module:factory (pluggable)")
    t.add_argument("--retry_rejects", action="store_true", help="also redo ids that were rejected before")
    t.add_argument("--no_progress", action="store_true", help="no progress bar")
    add_api_args(t)
    t.set_defaults(fn=cmd_translate)

    e = sub.add_parser("export", help="write one plain file per language from a parallel file")
    e.add_argument("--input", required=True, help="parallel JSONL")
    e.add_argument("--langs", type=csv, required=True, help="languages to export")
    e.add_argument("--out_prefix", required=True, help="writes OUT_PREFIX.<lang>.jsonl")
    e.set_defaults(fn=cmd_export)

    a = sub.add_parser("agree", help="BLEU agreement between two translators' parallel outputs")
    a.add_argument("--a", required=True, help="translator A output (hypothesis)")
    a.add_argument("--b", required=True, help="translator B output (reference)")
    a.add_argument("--langs", type=csv, default=("ko", "zh"), help="languages to score")
    a.add_argument("--kind", choices=("llava", "questions"), default="llava", help="input kind")
    a.set_defaults(fn=cmd_agree)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point."""
    return run_subcommand(build_parser, argv)


if __name__ == "__main__":
    sys.exit(main())
