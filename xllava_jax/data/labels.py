"""Token ids and labels of a conversation: each segment tokenized separately and concatenated (exact spans)."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from xllava_jax.data.templates import BOS, EOS, IMAGE_PLACEHOLDER, Segment, Template, Turn
from xllava_jax.tokenizer.spm import SPIECE_UNDERLINE, Tokenizer

IGNORE_INDEX = -100


START, AFTER_TEXT, AFTER_IMAGE, AFTER_SPECIAL = "start", "text", "image", "special"  # what precedes a text chunk


def encode_chunk(tok: Tokenizer, text: str, after: str) -> list[int]:
    """Ids of a text chunk as LLaVA's tokenizer_image_token and a slow LlamaTokenizer (transformers 4.31) give
    them inside the whole prompt, given what precedes the chunk (`after`):
    - START / AFTER_IMAGE: a tokenizer call of its own (SentencePiece's dummy prefix, leading spaces kept);
    - AFTER_TEXT: the chunk continues text; its one leading space is the dummy prefix, without one no prefix;
    - AFTER_SPECIAL (`<s>`/`</s>` inside the prompt): SentencePiece's ids (legacy), or with `tok.legacy` off
      the first piece's `▁` dropped unless the chunk starts with a space (transformers 4.31 non-legacy).
    """
    if not tok.legacy:
        text = text.replace(SPIECE_UNDERLINE, " ")  # 4.31 non-legacy: `▁` only marks the start of the text
    if not text:
        return []
    if after == AFTER_TEXT:
        return tok.encode_plain(text[1:]) if text.startswith(" ") else tok.encode_unprefixed(text)
    if after == AFTER_SPECIAL and not tok.legacy:
        return tok.encode_after_special(text)
    return tok.encode_plain(text)


def text_chunks(segments: Sequence[Segment]) -> list[tuple[Segment, int, str, str]]:
    """(segment, chunk index, chunk text, what precedes it) for every text chunk between `<image>`s; a BOS or
    EOS segment appears once with chunk index -1 (an image precedes chunk j > 0 of its segment)."""
    out, after = [], START
    for n, seg in enumerate(segments):
        if seg.kind in (BOS, EOS):
            out.append((seg, -1, "", after))
            after = START if n == 0 and seg.kind == BOS else AFTER_SPECIAL
            continue
        for j, chunk in enumerate(seg.text.split(IMAGE_PLACEHOLDER)):
            out.append((seg, j, chunk, after if j == 0 else AFTER_IMAGE))
            after = AFTER_TEXT if chunk else (after if j == 0 else AFTER_IMAGE)
    return out


def encode_segments(tok: Tokenizer, segments: Sequence[Segment], num_image_tokens: int) -> tuple[list[int], list[int]]:
    """(input_ids, labels) of `segments`; every `<image>` becomes `num_image_tokens` image-token ids."""
    ids: list[int] = []
    labels: list[int] = []
    for seg, j, chunk, after in text_chunks(segments):
        if j < 0:
            piece = [tok.bos_id if seg.kind == BOS else tok.eos_id]
        else:
            piece = ([tok.image_token_id] * num_image_tokens if j else []) + encode_chunk(tok, chunk, after)
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


def _chunk_content(tok: Tokenizer, chunk: str, after: str, trained: bool, contents: Sequence[str]) -> list[int]:
    """Content flags of one text chunk's tokens: the chunk re-tokenized in pieces cut at the turns' boundaries;
    where that changes the tokens (a boundary inside a word), the whole chunk counts as content iff trained."""
    whole = encode_chunk(tok, chunk, after)
    cuts = sorted({0, len(chunk), *(c for span in _content_spans(chunk, contents) for c in span)})
    ids, flags = [], []
    for k, (a, b) in enumerate(zip(cuts, cuts[1:])):
        piece = whole if len(cuts) == 2 else encode_chunk(tok, chunk[a:b], after if k == 0 else AFTER_TEXT)
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
    for seg, j, chunk, after in text_chunks(template.segments(turns)):
        if j < 0:
            flags.append(0)
            continue
        flags += [0] * (num_image_tokens if j else 0) + _chunk_content(tok, chunk, after, seg.trained, contents)
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
