"""Token ids and labels of a conversation: each segment tokenized separately and concatenated (exact spans)."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from xllava_jax.data.templates import BOS, EOS, IMAGE_PLACEHOLDER, Segment, Template, Turn
from xllava_jax.tokenizer.spm import Tokenizer

IGNORE_INDEX = -100


def encode_segment_text(tok: Tokenizer, text: str) -> list[int]:
    """Ids of one text segment: one leading space is represented by SentencePiece's dummy prefix."""
    return tok.encode_plain(text[1:] if text.startswith(" ") else text)


def encode_segments(tok: Tokenizer, segments: Sequence[Segment], num_image_tokens: int) -> tuple[list[int], list[int]]:
    """(input_ids, labels) of `segments`; every `<image>` becomes `num_image_tokens` image-token ids."""
    ids: list[int] = []
    labels: list[int] = []
    for seg in segments:
        if seg.kind == BOS:
            piece = [tok.bos_id]
        elif seg.kind == EOS:
            piece = [tok.eos_id]
        else:
            piece = []
            for j, chunk in enumerate(seg.text.split(IMAGE_PLACEHOLDER)):
                if j:
                    piece += [tok.image_token_id] * num_image_tokens
                piece += encode_segment_text(tok, chunk) if j == 0 else tok.encode_plain(chunk)
        ids += piece
        labels += piece if seg.trained else [IGNORE_INDEX] * len(piece)
    return ids, labels


def _content_spans(chunk: str, contents: Sequence[str]) -> list[tuple[int, int]]:
    """Character spans of the turns' texts inside `chunk` (a space before a span belongs to it)."""
    spans = []
    for text in contents:
        at = chunk.find(text)
        if text and at >= 0:
            spans.append((at - 1 if at > 0 and chunk[at - 1] == " " else at, at + len(text)))
    return sorted(spans)


def _chunk_content(tok: Tokenizer, chunk: str, first: bool, trained: bool, contents: Sequence[str]) -> list[int]:
    """Content flags of one text chunk's tokens: the chunk re-tokenized in pieces cut at the turns' boundaries;
    where that changes the tokens (a boundary inside a word), the whole chunk counts as content iff trained."""
    whole = encode_segment_text(tok, chunk) if first else tok.encode_plain(chunk)
    cuts = sorted({0, len(chunk), *(c for span in _content_spans(chunk, contents) for c in span)})
    ids, flags = [], []
    for k, (a, b) in enumerate(zip(cuts, cuts[1:])):
        part = chunk[a:b]
        if k == 0:
            piece = whole if len(cuts) == 2 else (encode_segment_text(tok, part) if first else tok.encode_plain(part))
        elif part.startswith(" "):
            piece = encode_segment_text(tok, part)
        else:
            piece = tok.encode_unprefixed(part)
        inside = any(s <= a and b <= e for s, e in _content_spans(chunk, contents))
        ids += piece
        flags += [int(inside)] * len(piece)
    return flags if ids == whole else [int(trained)] * len(whole)


def content_mask(tok: Tokenizer, template: Template, turns: Sequence[Turn], num_image_tokens: int = 576
                 ) -> list[int]:
    """Per token of encode_conversation: 1 for the turns' own text (questions, answers, captions), 0 for the
    template's text (system prompt, role names, separators), BOS/EOS and image tokens."""
    contents = [part for _, text in turns if isinstance(text, str)
                for part in (p.strip(" ") for p in text.split(IMAGE_PLACEHOLDER)) if part.strip()]
    flags: list[int] = []
    for seg in template.segments(turns):
        if seg.kind in (BOS, EOS):
            flags.append(0)
            continue
        for j, chunk in enumerate(seg.text.split(IMAGE_PLACEHOLDER)):
            if j:
                flags += [0] * num_image_tokens
            flags += _chunk_content(tok, chunk, j == 0, seg.trained, contents)
    return flags


def encode_conversation(tok: Tokenizer, template: Template, turns: Sequence[Turn],
                        num_image_tokens: int = 576) -> tuple[list[int], list[int]]:
    """(input_ids, labels) for training/evaluation: labels are -100 except assistant answers and their `</s>`."""
    return encode_segments(tok, template.segments(turns), num_image_tokens)


def encode_prompt(tok: Tokenizer, template: Template, turns: Sequence[Turn], num_image_tokens: int = 576) -> list[int]:
    """Ids of a generation prompt: `turns` end with a human turn; ids end where the assistant's answer starts."""
    if not turns or turns[-1][0] != "human":
        raise ValueError("a generation prompt must end with a human turn")
    return encode_segments(tok, template.segments(turns, add_generation_prompt=True), num_image_tokens)[0]


def encode_text_document(tok: Tokenizer, text: str) -> tuple[list[int], list[int]]:
    """(input_ids, labels) of a pretraining document: `<s> text </s>`, every token after BOS trained."""
    ids = [tok.bos_id, *tok.encode_plain(text), tok.eos_id]
    return ids, [IGNORE_INDEX, *ids[1:]]


def trained_token_count(labels: Sequence[int] | np.ndarray) -> int:
    """Number of positions with a label."""
    return int(np.sum(np.asarray(labels) != IGNORE_INDEX))
