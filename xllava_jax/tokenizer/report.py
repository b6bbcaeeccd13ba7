"""How much an expanded tokenizer shortens held-out text, per language, and how much it uses its new pieces.

Per language: characters (whitespace excluded), words (whitespace-separated; for Chinese
that is sentences or phrases, not words), and for the base and the expanded tokenizer the
tokens (SentencePiece ids without BOS/EOS), tokens per character and per word, and the share
of byte-fallback tokens (a rise is flagged); for the expanded one also the share of tokens that are new pieces
and how many distinct new pieces the encoder used (and their share of all new pieces).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Mapping, Sequence

import sentencepiece as spm

from xllava_jax.tokenizer.proto import model_path


def load_processor(path: str | os.PathLike) -> spm.SentencePieceProcessor:
    """The SentencePiece processor of a tokenizer.model file or of the one in an HF tokenizer directory."""
    file = model_path(path)
    if not file.is_file():
        raise FileNotFoundError(f"no SentencePiece model at {file}")
    return spm.SentencePieceProcessor(model_file=str(file))


def read_lines(path: str | os.PathLike) -> list[str]:
    """Non-empty lines of a UTF-8 text file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError as e:
        raise FileNotFoundError(f"no held-out text file {path}") from e
    except UnicodeDecodeError as e:
        raise ValueError(f"held-out text {path} is not UTF-8: {e}") from e
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        raise ValueError(f"held-out text {path} is empty")
    return lines


def encode_stats(sp: spm.SentencePieceProcessor, lines: Sequence[str], chars: int, words: int,
                 new_ids: set[int] | None = None) -> dict:
    """Token counts of `lines` under `sp`, per character and per word; with `new_ids`, their use."""
    ids = [i for row in sp.encode(list(lines)) for i in row]
    tokens = len(ids)
    stats = {"tokens": tokens, "tokens_per_char": tokens / chars, "tokens_per_word": tokens / words,
             "byte_fallback_share": sum(map(sp.is_byte, ids)) / tokens}
    if new_ids is not None:
        used = [i for i in ids if i in new_ids]
        stats.update(new_token_share=len(used) / tokens, new_pieces_used=len(set(used)),
                     new_pieces_used_share=len(set(used)) / max(1, len(new_ids)))
    return stats


def new_piece_ids(base: spm.SentencePieceProcessor, expanded: spm.SentencePieceProcessor) -> set[int]:
    """Ids of the expanded model's pieces that the base model does not have."""
    old = {base.id_to_piece(i) for i in range(base.get_piece_size())}
    return {i for i in range(expanded.get_piece_size()) if expanded.id_to_piece(i) not in old}


def tokenizer_report(base: str | os.PathLike, expanded: str | os.PathLike,
                     texts: Mapping[str, str | os.PathLike]) -> dict:
    """The report (a JSON-ready dict) for held-out texts {language: file}."""
    sp_base, sp_new = load_processor(base), load_processor(expanded)
    new_ids = new_piece_ids(sp_base, sp_new)
    report = {"base": str(base), "expanded": str(expanded), "base_pieces": sp_base.get_piece_size(),
              "expanded_pieces": sp_new.get_piece_size(), "new_pieces": len(new_ids), "languages": {}}
    for lang, file in texts.items():
        lines = read_lines(file)
        chars = sum(len("".join(line.split())) for line in lines)
        words = sum(len(line.split()) for line in lines)
        before = encode_stats(sp_base, lines, chars, words)
        after = encode_stats(sp_new, lines, chars, words, new_ids)
        report["languages"][lang] = {
            "file": str(file), "lines": len(lines), "chars": chars, "words": words, "before": before, "after": after,
            "tokens_per_char_ratio": after["tokens_per_char"] / before["tokens_per_char"]}
    report["byte_fallback_rise"] = byte_fallback_rise(report)
    return report


def byte_fallback_rise(report: dict) -> list[str]:
    """Languages whose byte-fallback share went up with the expansion (characters the new pieces miss)."""
    return [lang for lang, r in report["languages"].items()
            if r["after"]["byte_fallback_share"] > r["before"]["byte_fallback_share"]]


def format_report(report: dict) -> str:
    """A plain-text table of a report."""
    head = (f"base {report['base']} ({report['base_pieces']} pieces) -> expanded {report['expanded']} "
            f"({report['expanded_pieces']} pieces, {report['new_pieces']} new)")
    cols = ("lang", "chars", "words", "tok/char", "tok/word", "bytes%", "new-tok%", "new used")
    rows = [cols]
    for lang, r in report["languages"].items():
        b, a = r["before"], r["after"]
        rows.append((lang, str(r["chars"]), str(r["words"]),
                     f"{b['tokens_per_char']:.3f} -> {a['tokens_per_char']:.3f} (x{r['tokens_per_char_ratio']:.2f})",
                     f"{b['tokens_per_word']:.2f} -> {a['tokens_per_word']:.2f}",
                     f"{100 * b['byte_fallback_share']:.1f} -> {100 * a['byte_fallback_share']:.1f}",
                     f"{100 * a['new_token_share']:.1f}",
                     f"{a['new_pieces_used']} ({100 * a['new_pieces_used_share']:.1f}%)"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(cols))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    for lang in byte_fallback_rise(report):
        r = report["languages"][lang]
        lines.append(f"WARNING {lang}: byte-fallback share rose {100 * r['before']['byte_fallback_share']:.1f}% -> "
                     f"{100 * r['after']['byte_fallback_share']:.1f}%: the expansion lacks characters of this text "
                     "(expand with a corpus that holds them, or a lower --min-char-count)")
    return "\n".join([head, *lines])


def save_report(report: dict, path: str | os.PathLike) -> Path:
    """Write the report as JSON; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    return path
