"""Vocabulary expansion (X-LLaVA section 4.2): new pieces appended to a SentencePiece model.

Every existing piece keeps its id, score and type; new pieces go after them. Where the
pieces come from:

- a vocabulary file (`pieces_from_vocab_file`): a plain word list (one word per line; a word
  becomes the word-initial piece "▁word"), a BERT/WordPiece `vocab.txt` as KoBERT ships
  ("##x" continuations become the in-word piece "x", other entries "▁entry"; special
  entries such as [CLS] [SEP] [UNK] [PAD] [MASK] [unusedN] and <s> <unk> <pad> are
  skipped), or a SentencePiece vocabulary (entries kept verbatim, a tab-separated score
  column ignored). Entries with whitespace inside are skipped as invalid, and when the base
  splits digits (LLaMA) so are pieces joining a digit to other characters.
- a corpus (`pieces_from_corpus`): a SentencePiece model of the base model's type and text
  settings is trained on it and its pieces are merged in its own order (Chinese-LLaMA).

Scores, so that the encoder uses the new pieces (`append_pieces`):

- BPE (LLaMA): a score is a merge priority, and a piece is only produced by merging two
  adjacent symbols whose concatenation is a piece. New pieces get scores below every
  existing score, strictly decreasing with the id: existing merges run first (text without
  new pieces encodes exactly as before) and sentencepiece's score order equals transformers'
  id order of merges (so both give the same ids). A piece the model cannot reach by merges
  gets support pieces appended before it: its characters that the model lacks and the
  prefixes s1+s2, s1+s2+s3, ... of its current segmentation, so the whole piece is one
  merge chain away (and transformers, whose BPE cannot merge characters outside the
  vocabulary, reaches it too).
- unigram: a score is a log-probability and the encoder picks the best-scoring
  segmentation. A new piece scores 1 nat above the best segmentation the model had for it
  (computed shortest pieces first, so longer pieces see the shorter new ones): it wins
  wherever it occurs whole, and changes nothing elsewhere.
"""

from __future__ import annotations

import collections
import dataclasses
import io
import json
import math
import os
import re
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2 as pb

from xllava_jax.tokenizer.hf_export import write_hf_tokenizer
from xllava_jax.tokenizer.proto import model_path, read_model_proto

WORD_START = "\u2581"  # "▁", SentencePiece's whitespace marker
PIECE = pb.ModelProto.SentencePiece
MATCHED_TYPES = (PIECE.NORMAL, PIECE.USER_DEFINED, PIECE.UNUSED)  # types the encoder matches against text
BPE, UNIGRAM = pb.TrainerSpec.BPE, pb.TrainerSpec.UNIGRAM
VOCAB_FORMATS = ("auto", "words", "wordpiece", "sentencepiece")
SPECIAL_ENTRY = re.compile(r"^(\[[A-Za-z_]+\d*\]|<[^<>\s]+>)$")  # [CLS] [unused12] <s> <unk> <0x0A> ...
UNIGRAM_MARGIN = 1.0  # nats above the best previous segmentation of a new unigram piece
UNK_PENALTY = 10.0  # sentencepiece's unigram score for an unknown character: min score - 10
BUILTIN_NORMALIZERS = ("identity", "nmt_nfkc", "nfkc", "nmt_nfkc_cf", "nfkc_cf")
SUMMARY_FILE = "expansion.json"
DEFAULT_MIN_CHAR_COUNT = 5  # corpus characters seen this often are kept as pieces (no byte fallback for them)


@dataclasses.dataclass
class Expansion:
    """What an expansion did (saved as expansion.json beside the expanded model)."""

    base_pieces: int
    final_pieces: int = 0
    model_type: str = "bpe"
    requested: int = 0  # candidate pieces offered (after dropping special and invalid entries)
    added: int = 0  # candidates appended
    support: int = 0  # extra pieces appended so BPE can reach the candidates (characters, prefixes)
    existing: int = 0  # candidates the base model already had (skipped)
    duplicate: int = 0  # candidates repeated, or appended before as support pieces (skipped)
    special: int = 0  # special entries of a vocabulary file ([CLS], <s>, [unused3], ...; skipped)
    invalid: int = 0  # entries with whitespace inside (skipped)
    digits: int = 0  # pieces joining a digit to other characters while the base splits digits (skipped)
    over_limit: int = 0  # candidates left out by a new-piece limit
    characters: int = 0  # corpus characters above the frequency floor the base lacked (appended first)
    unreachable: int = 0  # appended candidates the encoder cannot produce whole (BPE without support pieces)
    sources: dict = dataclasses.field(default_factory=dict)

    @property
    def new_pieces(self) -> int:
        """Number of pieces appended."""
        return self.final_pieces - self.base_pieces


# ---- reading models and vocabulary files ----

def read_vocab_entries(path: str | os.PathLike) -> list[str]:
    """Non-empty entries of a vocabulary file, one per line (first tab-separated column)."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError as e:
        raise FileNotFoundError(f"no vocabulary file {path}") from e
    except UnicodeDecodeError as e:
        raise ValueError(f"vocabulary file {path} is not UTF-8: {e}") from e
    return [entry for entry in (line.split("\t")[0].strip("\r\n") for line in lines) if entry.strip()]


def detect_vocab_format(entries: Sequence[str]) -> str:
    """'wordpiece' if any entry is a '##' continuation, 'sentencepiece' if any holds '▁', else 'words'."""
    if any(e.startswith("##") and len(e) > 2 for e in entries):
        return "wordpiece"
    if any(WORD_START in e for e in entries):
        return "sentencepiece"
    return "words"


def entry_to_piece(entry: str, fmt: str) -> str | None:
    """The piece of one vocabulary entry in format `fmt`; None for a special entry."""
    if SPECIAL_ENTRY.match(entry):
        return None
    if fmt == "sentencepiece":
        return entry
    if fmt == "wordpiece" and entry.startswith("##") and len(entry) > 2:
        return entry[2:]
    return WORD_START + entry


def is_valid_piece(piece: str) -> bool:
    """No whitespace inside, and '▁' only at the start (or a whitespace-only piece of '▁'s)."""
    if not piece or any(c.isspace() for c in piece):
        return False
    return WORD_START not in piece.lstrip(WORD_START) or not piece.strip(WORD_START)


def pieces_from_vocab_file(path: str | os.PathLike, fmt: str = "auto") -> tuple[list[str], dict]:
    """Candidate pieces of a vocabulary file, and {"format", "special", "invalid"}: the format used and
    the numbers of special and invalid entries skipped."""
    if fmt not in VOCAB_FORMATS:
        raise ValueError(f"vocabulary format {fmt!r}; expected one of {VOCAB_FORMATS}")
    entries = read_vocab_entries(path)
    info = {"format": detect_vocab_format(entries) if fmt == "auto" else fmt, "special": 0, "invalid": 0}
    pieces = []
    for entry in entries:
        piece = entry_to_piece(entry, info["format"])
        if piece is None:
            info["special"] += 1
        elif not is_valid_piece(piece):
            info["invalid"] += 1
        else:
            pieces.append(piece)
    return pieces, info


def pieces_from_corpus(corpus: str | os.PathLike, base: pb.ModelProto, vocab_size: int,
                       character_coverage: float = 0.9995, input_sentence_size: int = 2_000_000,
                       num_threads: int | None = None, seed_sentencepiece_size: int = 1_000_000) -> list[str]:
    """Pieces of a SentencePiece model trained on `corpus` (the base model's type and text settings), in its order."""
    corpus = Path(corpus)
    if not corpus.is_file() or corpus.stat().st_size == 0:
        raise FileNotFoundError(f"training corpus {corpus} is missing or empty")
    t, n = base.trainer_spec, base.normalizer_spec
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        input=str(corpus), model_writer=model, vocab_size=vocab_size,
        model_type="bpe" if t.model_type == BPE else "unigram", character_coverage=character_coverage,
        split_digits=t.split_digits, split_by_whitespace=t.split_by_whitespace, split_by_number=t.split_by_number,
        split_by_unicode_script=t.split_by_unicode_script, treat_whitespace_as_suffix=t.treat_whitespace_as_suffix,
        allow_whitespace_only_pieces=t.allow_whitespace_only_pieces,
        max_sentencepiece_length=t.max_sentencepiece_length or 16,
        normalization_rule_name=n.name if n.name in BUILTIN_NORMALIZERS else "identity",
        add_dummy_prefix=n.add_dummy_prefix, remove_extra_whitespaces=n.remove_extra_whitespaces,
        byte_fallback=False, hard_vocab_limit=False, input_sentence_size=input_sentence_size,
        shuffle_input_sentence=True, seed_sentencepiece_size=seed_sentencepiece_size,
        num_threads=num_threads or os.cpu_count() or 1, unk_id=0, bos_id=-1, eos_id=-1, pad_id=-1, minloglevel=2)
    trained = pb.ModelProto()
    trained.ParseFromString(model.getvalue())
    return [p.piece for p in trained.pieces if p.type == PIECE.NORMAL]


def corpus_characters(corpus: str | os.PathLike, min_count: int) -> list[str]:
    """Characters occurring at least `min_count` times in `corpus` (whitespace excluded), most frequent first.

    A trained SentencePiece model lists its single characters last, so a new-piece limit would drop them
    and text using them (CJK punctuation such as 。 and ？) would fall back to bytes; expansion keeps them.
    """
    counts: collections.Counter = collections.Counter()
    with open(corpus, encoding="utf-8") as f:
        for line in f:
            counts.update(c for c in line if not c.isspace())
    return [c for c, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if n >= min_count]


# ---- segmentation (what the encoder would do with one piece's text) ----

def bpe_segment(text: str, scores: Mapping[str, float]) -> list[str]:
    """SentencePiece BPE on `text`: merge the adjacent pair whose concatenation is the best-scoring piece
    (leftmost on ties) until none is a piece."""
    symbols = list(text)
    while len(symbols) > 1:
        best, at = -math.inf, -1
        for i in range(len(symbols) - 1):
            score = scores.get(symbols[i] + symbols[i + 1])
            if score is not None and score > best:
                best, at = score, i
        if at < 0:
            break
        symbols[at:at + 2] = [symbols[at] + symbols[at + 1]]
    return symbols


def unigram_best_score(text: str, scores: Mapping[str, float], unk_score: float, max_len: int = 64) -> float:
    """Score of the best unigram segmentation of `text` (Viterbi; an unknown character scores `unk_score`)."""
    best = [0.0] + [-math.inf] * len(text)
    for end in range(1, len(text) + 1):
        for start in range(max(0, end - max_len), end):
            score = scores.get(text[start:end])
            if score is None and end - start == 1:
                score = unk_score
            if score is not None and best[start] + score > best[end]:
                best[end] = best[start] + score
    return best[-1]


def bpe_support(piece: str, scores: Mapping[str, float]) -> list[str]:
    """Pieces to append so BPE reaches `piece` (ending with `piece`): missing characters of its current
    segmentation s1..sk, then the prefixes s1+s2, ..., s1+...+sk."""
    segments = bpe_segment(piece, scores)
    plan = [s for s in segments if s not in scores]  # unmerged characters the model lacks
    plan += ["".join(segments[:j]) for j in range(2, len(segments) + 1)]
    seen: set[str] = set()
    return [p for p in plan if not (p in scores or p in seen or seen.add(p))]


# ---- appending ----

def matched_scores(proto: pb.ModelProto) -> dict[str, float]:
    """{piece: score} of the pieces the encoder matches against text."""
    return {p.piece: p.score for p in proto.pieces if p.type in MATCHED_TYPES}


def append_pieces(base: pb.ModelProto, candidates: Iterable[str], limit: int | None = None,
                  support: bool = True, characters: Sequence[str] = ()) -> tuple[pb.ModelProto, Expansion]:
    """A copy of `base` with the new candidates appended (existing ids unchanged), and what was done.

    `limit` caps the number of appended pieces (support pieces included); `support=False`
    appends the candidates alone (BPE may then be unable to produce some; they are counted).
    `characters` the base lacks are appended first, and count toward the limit (they are appended even where
    they alone exceed it; see corpus_characters).
    """
    kind = base.trainer_spec.model_type
    if kind not in (BPE, UNIGRAM):
        raise ValueError(f"cannot expand a SentencePiece model of type {pb.TrainerSpec.ModelType.Name(kind)}; "
                         "expected BPE or UNIGRAM")
    stats = Expansion(base_pieces=len(base.pieces), model_type="bpe" if kind == BPE else "unigram")
    existing = {p.piece for p in base.pieces}
    scores = matched_scores(base)
    score = min(p.score for p in base.pieces)  # BPE: new scores go below every existing score
    new: list[str] = []
    added: set[str] = set()
    wanted: list[str] = []
    for char in characters:
        if char not in existing and char not in added:
            new.append(char)
            added.add(char)
            if kind == BPE:
                scores[char] = score = score_below(score)
            stats.characters += 1
    for piece in candidates:
        stats.requested += 1
        if piece in existing:
            stats.existing += 1
            continue
        if base.trainer_spec.split_digits and len(piece) > 1 and any(c.isdigit() for c in piece):
            stats.digits += 1  # LLaMA encodes every digit alone; "▁33" or "제46조" would break that
            continue
        if piece in added:
            stats.duplicate += 1
            continue
        group = bpe_support(piece, scores) if kind == BPE and support else [piece]
        if limit is not None and len(new) + len(group) > limit:
            stats.over_limit += 1
            continue
        for p in group:
            new.append(p)
            added.add(p)
            if kind == BPE:
                scores[p] = score = score_below(score)  # strictly decreasing with the id
        stats.added += 1
        stats.support += len(group) - 1
        wanted.append(piece)
    if kind == BPE:
        stats.unreachable = sum(bpe_segment(piece, scores) != [piece] for piece in wanted)
    new_scores = {p: scores[p] for p in new} if kind == BPE else unigram_scores(new, base)
    proto = pb.ModelProto()
    proto.CopyFrom(base)
    for piece in new:
        proto.pieces.add(piece=piece, score=new_scores[piece], type=PIECE.NORMAL)
    proto.trainer_spec.vocab_size = len(proto.pieces)
    stats.final_pieces = len(proto.pieces)
    return proto, stats


def score_below(score: float) -> float:
    """The next score below `score` that float32 (the proto's type) tells apart: the next integer below, or
    the next float32 where integers are no longer exact (LLaMA scores its whitespace pieces -1e9)."""
    below = np.float32(math.ceil(score) - 1)
    if below >= np.float32(score):
        below = np.nextafter(np.float32(score), np.float32(-np.inf))
    return float(below)


def unigram_scores(new: Sequence[str], base: pb.ModelProto) -> dict[str, float]:
    """Each new unigram piece scores UNIGRAM_MARGIN above its best segmentation so far (shortest pieces first)."""
    scores = matched_scores(base)
    unk_score = min(p.score for p in base.pieces if p.type == PIECE.NORMAL) - UNK_PENALTY
    out = {}
    for piece in sorted(new, key=len):
        out[piece] = scores[piece] = unigram_best_score(piece, scores, unk_score) + UNIGRAM_MARGIN
    return out


# ---- the whole expansion ----

def default_train_vocab_size(new_pieces: int) -> int:
    """Vocabulary size to train for `new_pieces` new pieces (room for pieces the base already has)."""
    return new_pieces + new_pieces // 4 + 100


def base_legacy(base: str | os.PathLike) -> bool:
    """transformers' `legacy` flag of an HF tokenizer directory (absent there: off, as transformers reads it); True
    for a bare tokenizer.model, whose own ids (SentencePiece's) are legacy ones."""
    config = Path(base) / "tokenizer_config.json"
    if not config.is_file():
        return True
    return bool(json.loads(config.read_text()).get("legacy") or False)


def expand_tokenizer(base: str | os.PathLike, out: str | os.PathLike, *, add_vocab: str | os.PathLike | None = None,
                     vocab_format: str = "auto", train_corpus: str | os.PathLike | None = None,
                     new_pieces: int | None = None, train_vocab_size: int | None = None,
                     character_coverage: float = 0.9995, support: bool = True, legacy: bool | None = None,
                     num_threads: int | None = None, min_char_count: int = DEFAULT_MIN_CHAR_COUNT) -> Expansion:
    """Expand `base` from a vocabulary file or a corpus; write out/tokenizer.model, the HF tokenizer files
    (BPE models) and out/expansion.json. `new_pieces` caps (vocabulary file) or sets (corpus) the new pieces;
    with a corpus, every character it holds `min_char_count` times or more is among them (0: no such rule)."""
    if (add_vocab is None) == (train_corpus is None):
        raise ValueError("give exactly one of add_vocab (a vocabulary file) and train_corpus (a text file)")
    proto = read_model_proto(base)
    info = {"format": None, "special": 0, "invalid": 0}
    if add_vocab is not None:
        candidates, info = pieces_from_vocab_file(add_vocab, vocab_format)
    else:
        if not new_pieces or new_pieces <= 0:
            raise ValueError(f"new_pieces must be a positive number with a training corpus, not {new_pieces!r}")
        candidates = pieces_from_corpus(train_corpus, proto, train_vocab_size or default_train_vocab_size(new_pieces),
                                        character_coverage, num_threads=num_threads)
    characters = corpus_characters(train_corpus, min_char_count) if train_corpus and min_char_count > 0 else []
    expanded, stats = append_pieces(proto, candidates, new_pieces, support, characters)
    stats.special, stats.invalid = info["special"], info["invalid"]
    stats.sources = {"base": str(model_path(base)), "add_vocab": str(add_vocab) if add_vocab else None,
                     "vocab_format": info["format"],
                     "train_corpus": str(train_corpus) if train_corpus else None, "new_pieces_limit": new_pieces}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "tokenizer.model").write_bytes(expanded.SerializeToString())
    if stats.model_type == "bpe":
        write_hf_tokenizer(out / "tokenizer.model", out, legacy=base_legacy(base) if legacy is None else legacy)
    (out / SUMMARY_FILE).write_text(json.dumps(
        {**dataclasses.asdict(stats), "new_pieces": stats.new_pieces}, indent=2, ensure_ascii=False) + "\n")
    return stats


def format_expansion(stats: Expansion) -> str:
    """One paragraph saying what an expansion did."""
    return (f"{stats.model_type} model: {stats.base_pieces} -> {stats.final_pieces} pieces (+{stats.new_pieces}: "
            f"{stats.added} requested pieces, {stats.support} support pieces); skipped {stats.existing} already in "
            f"the base, {stats.duplicate} duplicates, {stats.special} special entries, {stats.invalid} invalid, "
            f"{stats.digits} joining digits to other characters (the base splits digits), "
            f"{stats.over_limit} over the limit; {stats.unreachable} appended pieces unreachable by the encoder; "
            f"{stats.characters} of the new pieces are corpus characters the base lacked")
