"""Command line: vocabulary expansion and its report (growing a checkpoint: python -m xllava_jax.convert grow-vocab).

  python -m xllava_jax.tokenizer expand --base tokenizer.model (--add-vocab FILE | --train-corpus FILE --new-pieces N) --out DIR
  python -m xllava_jax.tokenizer report --base tokenizer.model --expanded DIR --text ko=FILE --text zh=FILE [--out report.json]
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from xllava_jax.cli import UserError, add_subparsers, new_parser, run_subcommand
from xllava_jax.tokenizer import expand as expansion
from xllava_jax.tokenizer import report as reporting

log = logging.getLogger("xllava_jax.tokenizer")


def run_expand(args: argparse.Namespace) -> None:
    """Expand a SentencePiece model and write it with HF tokenizer files."""
    if args.train_corpus and not args.new_pieces:
        raise UserError("--train-corpus needs --new-pieces N")
    stats = expansion.expand_tokenizer(
        args.base, args.out, add_vocab=args.add_vocab, vocab_format=args.vocab_format, train_corpus=args.train_corpus,
        new_pieces=args.new_pieces, train_vocab_size=args.train_vocab_size,
        character_coverage=args.character_coverage, support=not args.no_support_pieces, legacy=args.legacy,
        min_char_count=args.min_char_count)
    print(expansion.format_expansion(stats))
    print(f"wrote {Path(args.out) / 'tokenizer.model'}"
          + (" and HF tokenizer files" if stats.model_type == "bpe" else "") + f", {expansion.SUMMARY_FILE}")


def parse_texts(items: list[str]) -> dict[str, str]:
    """{language: file} from LANG=FILE arguments."""
    texts = {}
    for item in items:
        lang, sep, file = item.partition("=")
        if not sep or not lang or not file:
            raise UserError(f"--text {item!r}: expected LANG=FILE")
        texts[lang] = file
    return texts


def default_report_path(expanded: str) -> Path:
    """expanded_dir/report.json, or beside an expanded tokenizer.model file."""
    path = Path(expanded)
    return path / "report.json" if path.is_dir() else path.with_suffix(".report.json")


def run_report(args: argparse.Namespace) -> None:
    """Print the before/after token statistics and save them as JSON."""
    report = reporting.tokenizer_report(args.base, args.expanded, parse_texts(args.text))
    print(reporting.format_report(report))
    print(f"wrote {reporting.save_report(report, args.out or default_report_path(args.expanded))}")


def parser() -> argparse.ArgumentParser:
    """The argument parser of the tokenizer command (flags accept '-' or '_')."""
    p = new_parser("python -m xllava_jax.tokenizer", __doc__)
    sub = add_subparsers(p)

    def flag(group, name: str, **kw) -> None:
        group.add_argument(f"--{name}", *({f"--{name.replace('-', '_')}"} - {f"--{name}"}), **kw)

    e = sub.add_parser("expand", help="append pieces to a SentencePiece model")
    flag(e, "base", required=True, help="base tokenizer.model, or an HF tokenizer directory holding one")
    source = e.add_mutually_exclusive_group(required=True)
    flag(source, "add-vocab", help="word list, BERT/WordPiece vocab.txt (KoBERT), or SentencePiece vocabulary")
    flag(source, "train-corpus", help="text file: train a SentencePiece model on it and merge its pieces")
    flag(e, "new-pieces", type=int, help="number of new pieces (required with --train-corpus; a cap otherwise; "
                                         "default: no cap)")
    flag(e, "vocab-format", default="auto", choices=expansion.VOCAB_FORMATS, help="format of --add-vocab")
    flag(e, "train-vocab-size", type=int, help="vocabulary size trained on the corpus (default N*1.25+100)")
    flag(e, "character-coverage", type=float, default=0.9995, help="SentencePiece training character coverage")
    flag(e, "min-char-count", type=int, default=expansion.DEFAULT_MIN_CHAR_COUNT,
         help="--train-corpus: every character seen this often becomes a piece, first (no byte fallback for it); "
              "0: off")
    flag(e, "no-support-pieces", action="store_true",
         help="BPE: append only the listed pieces, without the characters/prefixes that make them reachable")
    legacy = e.add_mutually_exclusive_group()
    legacy.add_argument("--legacy", dest="legacy", action="store_true", default=None,
                        help="transformers' legacy LLaMA tokenization (default: the base directory's flag; on for a bare tokenizer.model)")
    legacy.add_argument("--no-legacy", "--no_legacy", dest="legacy", action="store_false",
                        help="transformers' non-legacy LLaMA tokenization (no dummy prefix after special tokens)")
    flag(e, "out", required=True, help="output directory (tokenizer.model, HF tokenizer files, expansion.json)")
    e.set_defaults(fn=run_expand)

    r = sub.add_parser("report", help="tokens per character/word before and after an expansion")
    flag(r, "base", required=True, help="base tokenizer.model or HF tokenizer directory")
    flag(r, "expanded", required=True, help="expanded tokenizer.model or directory")
    flag(r, "text", action="append", required=True, help="LANG=FILE held-out text (repeat per language)")
    flag(r, "out", help="JSON path (default: EXPANDED/report.json)")
    r.set_defaults(fn=run_report)

    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point: 0, or 2 with one `error:` line for a bad input."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return run_subcommand(parser, argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
