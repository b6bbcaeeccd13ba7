"""Per-record processing (runs in grain workers): record -> example, or a skip marker naming the record."""

from __future__ import annotations

import dataclasses

import numpy as np

from xllava_jax.data import images, labels, report
from xllava_jax.data.report import DataError
from xllava_jax.data.sequences import split_document, truncate
from xllava_jax.data.templates import Template, get_template
from xllava_jax.tokenizer.spm import Tokenizer

SKIP = "_skip"
PIECES = "_pieces"  # a split text document: its pieces, each an example


def expand_pieces(example: dict) -> list[dict]:
    """The examples an element of the processor's output stands for (a split document's pieces, else itself)."""
    return example[PIECES] if PIECES in example else [example]


def skip_marker(record_id: str, reason: str, detail: str = "") -> dict:
    """The element a worker yields instead of a bad record (counted and logged by the batcher)."""
    return {SKIP: reason, "id": record_id, "detail": detail}


@dataclasses.dataclass
class SampleProcessor:
    """Turns a normalized record (conversation or text) into an example; bad ones into skip markers."""

    tokenizer: Tokenizer
    template: str | Template = "vicuna_v1"
    max_len: int = 2048
    num_image_tokens: int = 576
    image_size: int = 336
    pad_image: bool = True
    strict: bool = False
    load_images: bool = True  # False: tokens only (inspect/stats), images not opened
    split_documents: bool = True  # text documents longer than max_len become pieces (False: truncated)

    def __call__(self, record: dict) -> dict:
        """Process one record; exceptions from bad input become skip markers (or DataError when strict)."""
        try:
            return self.process(record)
        except _Skip as e:
            if self.strict:
                raise DataError(f"record {record.get('id')!r}: {e.args[0]} ({e.args[1]})") from None
            return skip_marker(str(record.get("id")), *e.args)

    def process(self, record: dict) -> dict:
        """Example of `record` (raises _Skip on bad input); a split document is {"id", PIECES: [examples]}."""
        tok = self.tokenizer
        if "text" in record:
            ids, labs = labels.encode_text_document(tok, record["text"])
            if self.split_documents and len(ids) > self.max_len:
                return {"id": str(record.get("id")),
                        PIECES: [self._example(record, i, la, 0) for i, la in split_document(ids, labs, self.max_len)]}
        else:
            template = get_template(self.template) if isinstance(self.template, str) else self.template
            ids, labs = labels.encode_conversation(tok, template, [tuple(t) for t in record["turns"]],
                                                   self.num_image_tokens)
        cut = truncate(ids, labs, self.max_len, tok.image_token_id)
        if cut is None:
            raise _Skip(report.IMAGE_RUN_CUT, f"{len(ids)} tokens > max_len {self.max_len}")
        if labels.trained_token_count(cut[1]) == 0:
            raise _Skip(report.NO_TRAINED_TOKENS, f"{len(ids)} tokens, max_len {self.max_len}")
        example = self._example(record, *cut, len(ids) - len(cut[0]))
        if "text" not in record:
            example["content"] = np.asarray(labels.content_mask(tok, template, [tuple(t) for t in record["turns"]],
                                                                self.num_image_tokens)[:len(cut[0])], np.int32)
        n_images = cut[0].count(tok.image_token_id) // self.num_image_tokens
        if n_images and self.load_images:
            example["pixel_values"] = self.load_pixels(record)[None]
        elif n_images:
            example["num_images"] = n_images
        return example

    @staticmethod
    def _example(record: dict, ids: list[int], labs: list[int], tokens_cut: int) -> dict:
        """The example dict of token lists (`tokens_cut`: tokens lost to truncation)."""
        return {"id": str(record.get("id")), "input_ids": np.asarray(ids, np.int32),
                "labels": np.asarray(labs, np.int32), "truncated": tokens_cut > 0, "tokens_cut": tokens_cut,
                "lang": record.get("lang")}

    def load_pixels(self, record: dict) -> np.ndarray:
        """Preprocessed pixels of the record's image (inline `image_bytes` or `image` under `image_root`)."""
        source = record.get("image_bytes")
        if source is None:
            if not record.get("image"):
                raise _Skip(report.MISSING_IMAGE, "text has <image> but the record has no image")
            source = images.image_path(record["image"], record.get("image_root"))
        try:
            image = images.open_image(source)
        except FileNotFoundError as e:
            raise _Skip(report.MISSING_IMAGE, str(source)) from e
        except Exception as e:  # PIL raises many types on corrupt data
            raise _Skip(report.CORRUPT_IMAGE, f"{type(e).__name__}: {e}") from e
        try:
            return images.preprocess(image, self.image_size, self.pad_image)
        except Exception as e:
            raise _Skip(report.CORRUPT_IMAGE, f"{type(e).__name__}: {e}") from e


class _Skip(Exception):
    """Internal: args (reason, detail)."""
