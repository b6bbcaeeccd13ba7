"""SentencePiece LLaMA tokenizer with the llava-hf added tokens `<image>` and `<pad>`."""

from __future__ import annotations

import json
import logging
import os
import re
from typing import Mapping, Sequence

import sentencepiece as spm
from etils import epath

IMAGE_TOKEN = "<image>"
PAD_TOKEN = "<pad>"
SPIECE_UNDERLINE = "\u2581"


class Tokenizer:
    """A SentencePiece model plus added tokens appended after its pieces (llava-hf convention)."""

    def __init__(self, model_proto: bytes, added_tokens: Mapping[str, int] | None = None, legacy: bool = True):
        self.sp = spm.SentencePieceProcessor(model_proto=model_proto)
        self.legacy = legacy
        self._warned_unk = False
        self.added = dict(added_tokens or {})
        for tok in (IMAGE_TOKEN, PAD_TOKEN):
            if tok not in self.added:
                self.added[tok] = self._existing_or_next(tok)
        self._added_by_id = {i: t for t, i in self.added.items()}
        self._special = {"<s>": self.bos_id, "</s>": self.eos_id, **self.added}
        self._split_re = re.compile("(" + "|".join(re.escape(t) for t in sorted(self._special, key=len, reverse=True)) + ")")
        self._unk_len = len(self.sp.encode(self.sp.id_to_piece(self.sp.unk_id())))

    def __getstate__(self) -> dict:
        """Picklable state (for grain worker processes)."""
        return {"model_proto": self.sp.serialized_model_proto(), "added": self.added, "legacy": self.legacy}

    def __setstate__(self, state: dict) -> None:
        """Rebuild from __getstate__."""
        self.__init__(state["model_proto"], state["added"], state["legacy"])

    def _existing_or_next(self, piece: str) -> int:
        """Id of `piece` if the SentencePiece model has it, else the next free id after all pieces and added tokens."""
        pid = self.sp.piece_to_id(piece)
        if pid != self.sp.unk_id() or piece == self.sp.id_to_piece(self.sp.unk_id()):
            return pid
        return max([self.sp.get_piece_size() - 1, *self.added.values()]) + 1

    @property
    def bos_id(self) -> int:
        """Beginning-of-sequence id."""
        return self.sp.bos_id()

    @property
    def eos_id(self) -> int:
        """End-of-sequence id."""
        return self.sp.eos_id()

    @property
    def pad_id(self) -> int:
        """Id of `<pad>`."""
        return self.added[PAD_TOKEN]

    @property
    def image_token_id(self) -> int:
        """Id of `<image>`."""
        return self.added[IMAGE_TOKEN]

    @property
    def sp_vocab_size(self) -> int:
        """Number of SentencePiece pieces (without added tokens)."""
        return self.sp.get_piece_size()

    @property
    def vocab_size(self) -> int:
        """Total number of ids including added tokens."""
        return max([self.sp.get_piece_size() - 1, *self.added.values()]) + 1

    def encode_plain(self, text: str) -> list[int]:
        """SentencePiece ids of `text` (dummy-prefixed, no BOS/EOS, added tokens not recognised)."""
        return self.sp.encode(text) if text else []

    def encode_unprefixed(self, text: str) -> list[int]:
        """SentencePiece ids of `text` without the dummy-prefix space (transformers' non-legacy trick)."""
        unk = self.sp.id_to_piece(self.sp.unk_id())
        return self.sp.encode(unk + text)[self._unk_len:] if text else []

    def encode_after_special(self, text: str) -> list[int]:
        """Ids of text that follows `<s>`/`</s>` in one call of transformers 4.31's slow non-legacy LlamaTokenizer:
        SentencePiece's pieces with the `▁` of the first piece dropped unless the text starts with a space (a
        piece that is then not in the vocabulary becomes `<unk>`, as there)."""
        pieces = self.sp.encode(text, out_type=str) if text else []
        if pieces and not text.startswith(" ") and pieces[0].startswith(SPIECE_UNDERLINE):
            pieces = ([pieces[0][1:]] if len(pieces[0]) > 1 else []) + pieces[1:]
        ids = [self.sp.piece_to_id(p) for p in pieces]
        if ids and ids[0] == self.sp.unk_id() and pieces[0] != self.sp.id_to_piece(self.sp.unk_id()) \
                and not self._warned_unk:
            self._warned_unk = True
            logging.getLogger(__name__).warning(
                "non-legacy tokenizer: %r after <s>/</s> becomes <unk> (its piece %r without the leading \u2581 is "
                "not in the vocabulary), as in transformers 4.31; set \"legacy\": true in tokenizer_config.json "
                "to keep SentencePiece's own pieces", text[:40], pieces[0])
        return ids

    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]:
        """Ids of `text`, recognising `<s>`, `</s>` and added tokens like transformers' LlamaTokenizer."""
        ids = [self.bos_id] if bos else []
        after_special = False
        for chunk in self._split_re.split(text):
            if chunk in self._special:
                ids.append(self._special[chunk])
                after_special = True
            elif chunk:
                ids.extend(self.encode_unprefixed(chunk) if after_special and not self.legacy else self.sp.encode(chunk))
        return ids + ([self.eos_id] if eos else [])

    def decode(self, ids: Sequence[int], skip_special: bool = False) -> str:
        """Text of `ids`; added tokens and BOS/EOS are rendered as their strings unless `skip_special`."""
        out, run = [], []
        special = {self.bos_id: "<s>", self.eos_id: "</s>"}
        for i in map(int, ids):
            if i in self._added_by_id or i in special:
                out.append(self.sp.decode(run))
                run = []
                if not skip_special:
                    out.append(self._added_by_id.get(i) or special[i])
            elif 0 <= i < self.sp_vocab_size:
                run.append(i)
        out.append(self.sp.decode(run))
        return "".join(out)


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
    """Load a `tokenizer.model` file, or a Hugging Face tokenizer directory holding one (with its added tokens)."""
    path = epath.Path(path)
    if path.is_dir():
        cfg_path = path / "tokenizer_config.json"
        cfg = json.loads(cfg_path.read_text()) if cfg_path.exists() else {}
        legacy = bool(cfg.get("legacy") or False)
        return Tokenizer((path / "tokenizer.model").read_bytes(), read_hf_added_tokens(path), legacy=legacy)
    return Tokenizer(path.read_bytes())


def read_hf_added_tokens(directory: str | os.PathLike) -> dict[str, int]:
    """Added tokens {content: id} from a HF tokenizer directory (added_tokens.json, tokenizer_config.json, tokenizer.json)."""
    d = epath.Path(directory)
    added: dict[str, int] = {}
    if (d / "tokenizer.json").exists():
        for t in json.loads((d / "tokenizer.json").read_text()).get("added_tokens", []):
            added[t["content"]] = int(t["id"])
    if (d / "tokenizer_config.json").exists():
        for i, t in json.loads((d / "tokenizer_config.json").read_text()).get("added_tokens_decoder", {}).items():
            added[t["content"]] = int(i)
    if (d / "added_tokens.json").exists():
        added.update({k: int(v) for k, v in json.loads((d / "added_tokens.json").read_text()).items()})
    return {k: v for k, v in added.items() if k not in ("<s>", "</s>", "<unk>")}
