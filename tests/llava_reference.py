"""LLaVA's own code as the reference: its train.py preprocessors and collator (executed from the installed
`llava` package's source, without its heavy imports) over a slow LLaMA tokenizer built on SentencePiece itself,
as transformers 4.31's `LlamaTokenizer` (the version LLaVA-1.5 trained with) tokenizes, legacy or not."""

from __future__ import annotations

import ast
import copy
import dataclasses
import importlib.util
import re
import types
from pathlib import Path
from typing import Dict, Sequence

import sentencepiece as spm
import torch

SPIECE_UNDERLINE = "\u2581"


def llava_file(relative: str) -> Path:
    """Path of a file of the installed `llava` package (llava-torch)."""
    spec = importlib.util.find_spec("llava")
    if spec is None:
        raise ImportError("the llava package is missing: pip install --no-deps llava-torch==1.2.2.post1")
    return Path(spec.submodule_search_locations[0]) / relative


class SlowLlamaTokenizer:
    """transformers 4.31's slow LlamaTokenizer over a SentencePiece model: `<s>`, `</s>`, `<unk>` split out and
    never stripped (AddedToken, lstrip/rstrip False), BOS added; legacy=False: the text gets a leading `▁`
    (and `▁` in it becomes a space), and text after a special token loses its first piece's `▁` unless it starts
    with a space. pad = unk, as LLaVA's v1 training sets it."""

    def __init__(self, model_proto: bytes, legacy: bool = True, model_max_length: int = 2048):
        self.sp = spm.SentencePieceProcessor(model_proto=model_proto)
        self.legacy = legacy
        self.model_max_length = model_max_length
        self.bos_token_id, self.eos_token_id = self.sp.bos_id(), self.sp.eos_id()
        self.pad_token_id = self.unk_token_id = self.sp.unk_id()
        self.special = {"<s>": self.bos_token_id, "</s>": self.eos_token_id, "<unk>": self.unk_token_id}

    def _tokenize(self, text: str) -> list[str]:
        """transformers 4.31 LlamaTokenizer._tokenize."""
        is_first = False
        if not self.legacy:
            is_first = text.startswith(SPIECE_UNDERLINE)
            if is_first:
                text = text[1:]
        tokens = self.sp.encode(text, out_type=str)
        if not self.legacy and not is_first and not text.startswith(" ") and tokens[0].startswith(SPIECE_UNDERLINE):
            tokens = ([tokens[0][1:]] if len(tokens[0]) > 1 else []) + tokens[1:]
        return tokens

    def tokenize(self, text: str) -> list[str]:
        """transformers 4.31 LlamaTokenizer.tokenize + PreTrainedTokenizer.tokenize (trie split, no stripping)."""
        if not self.legacy:
            text = SPIECE_UNDERLINE + text.replace(SPIECE_UNDERLINE, " ")
        out = []
        for part in re.split("(<s>|</s>|<unk>)", text):
            if part in self.special:
                out.append(part)
            elif part:
                out += self._tokenize(part)
        return out

    def encode_one(self, text: str) -> list[int]:
        """BOS + ids of `text`."""
        return [self.bos_token_id] + [self.special.get(t, None) if t in self.special else self.sp.piece_to_id(t)
                                      for t in self.tokenize(text)]

    def __call__(self, text, return_tensors=None, padding=False, max_length=None, truncation=False):
        """`tokenizer(text_or_texts, ...)` -> an object with `input_ids` (lists, or a padded tensor for "pt")."""
        texts = [text] if isinstance(text, str) else list(text)
        ids = [self.encode_one(t) for t in texts]
        if truncation:
            ids = [x[:max_length or self.model_max_length] for x in ids]
        if return_tensors == "pt":
            n = max(len(x) for x in ids)
            ids = torch.tensor([x + [self.pad_token_id] * (n - len(x)) for x in ids], dtype=torch.long)
        elif isinstance(text, str):
            ids = ids[0]
        return types.SimpleNamespace(input_ids=ids)


_TRAIN_NAMES = ("preprocess_multimodal", "preprocess_llama_2", "preprocess_v1", "preprocess_plain",
                "DataCollatorForSupervisedDataset")


def load_llava_train() -> types.SimpleNamespace:
    """LLaVA's train.py functions above, executed from its source with its own conversation, constants and
    mm_utils modules (IS_TOKENIZER_GREATER_THAN_0_14 False: LLaVA-1.5 pinned tokenizers < 0.14)."""
    from llava import constants, conversation, mm_utils

    source = llava_file("train/train.py").read_text()
    tree = ast.parse(source)
    body = [n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef)) and n.name in _TRAIN_NAMES]
    missing = set(_TRAIN_NAMES) - {n.name for n in body}
    if missing:
        raise ImportError(f"llava/train/train.py lacks {sorted(missing)}")
    namespace = {"torch": torch, "copy": copy, "dataclass": dataclasses.dataclass, "Dict": Dict,
                 "Sequence": Sequence, "conversation_lib": conversation,
                 "tokenizer_image_token": mm_utils.tokenizer_image_token,
                 "transformers": types.SimpleNamespace(PreTrainedTokenizer=object),
                 "IS_TOKENIZER_GREATER_THAN_0_14": False,
                 **{k: getattr(constants, k) for k in dir(constants) if k.isupper()}}
    exec(compile(ast.Module(body=body, type_ignores=[]), str(llava_file("train/train.py")), "exec"), namespace)
    return types.SimpleNamespace(conversation=conversation, mm_utils=mm_utils, constants=constants,
                                 **{k: namespace[k] for k in _TRAIN_NAMES})


def llava_preprocess(llava, template: str, source: list[dict], tokenizer: SlowLlamaTokenizer, has_image: bool
                     ) -> tuple[list[int], list[int]]:
    """LLaVA's training ids and labels of one record (`conversations` list) under `template` (vicuna_v1,
    llava_llama_2, plain), as train.py's dataset builds them (preprocess_multimodal first when it has an image)."""
    conv = {"vicuna_v1": "vicuna_v1", "llava_llama_2": "llava_llama_2", "plain": "plain"}[template]
    llava.conversation.default_conversation = llava.conversation.conv_templates[conv]
    sources = [copy.deepcopy(source)]
    if has_image:
        sources = llava.preprocess_multimodal(sources, types.SimpleNamespace(is_multimodal=True,
                                                                             mm_use_im_start_end=False))
    if template == "plain":
        out = llava.preprocess_plain(sources, tokenizer)
    elif template == "llava_llama_2":
        out = llava.preprocess_llama_2(sources, tokenizer, has_image=has_image)
    else:
        out = llava.preprocess_v1(sources, tokenizer, has_image=has_image)
    return [int(x) for x in out["input_ids"][0]], [int(x) for x in out["labels"][0]]


def run_llava_script(relative: str, argv: list[str]) -> str:
    """Run one of the llava package's scripts (`__main__`) with `argv`; its printed output."""
    import contextlib
    import io
    import runpy
    import sys

    out, old = io.StringIO(), sys.argv
    sys.argv = [relative, *argv]
    try:
        with contextlib.redirect_stdout(out):
            runpy.run_path(str(llava_file(relative)), run_name="__main__")
    finally:
        sys.argv = old
    return out.getvalue()


class _Rows:
    """The part of a pandas DataFrame MMBench's evaluator reads: len() and .iloc[i] (dict rows)."""

    def __init__(self, rows: list[dict]):
        self.iloc = rows

    def __len__(self) -> int:
        return len(self.iloc)


def mmbench_evaluator():
    """MMBench's own evaluator class (its rule-based matcher `can_infer` and circular `eval_sub_data`), as
    lmms-eval ships it (tasks/mmbench/mmbench_evals.py), executed from that file's source; pandas' isna and
    the logger are the only stand-ins. The ChatGPT step raises `AskedChatGPT`."""
    import math
    import os
    import random
    import string

    spec = importlib.util.find_spec("lmms_eval")
    if spec is None:
        raise ImportError("the lmms-eval package is missing: pip install --no-deps lmms-eval==0.7.3")
    path = Path(spec.submodule_search_locations[0]) / "tasks" / "mmbench" / "mmbench_evals.py"
    tree = ast.parse(path.read_text())
    body = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "MMBench_Evaluator"]
    isna = lambda v: v is None or (isinstance(v, float) and math.isnan(v))  # noqa: E731
    pd = types.SimpleNamespace(isna=isna, notna=lambda v: not isna(v))
    logger = types.SimpleNamespace(info=lambda *a, **k: None, warning=lambda *a, **k: None,
                                   error=lambda *a, **k: None)
    namespace = {"pd": pd, "eval_logger": logger, "string": string, "os": os, "rd": random, "math": math,
                 "time": None, "requests": None}
    exec(compile(ast.Module(body=body, type_ignores=[]), str(path), "exec"), namespace)

    class AskedChatGPT(Exception):
        """MMBench would ask ChatGPT here."""

    class Evaluator(namespace["MMBench_Evaluator"]):
        def extract_answer_from_item(self, item):
            raise AskedChatGPT(item["index"])

    Evaluator.AskedChatGPT = AskedChatGPT
    Evaluator.rows = _Rows
    return Evaluator()
