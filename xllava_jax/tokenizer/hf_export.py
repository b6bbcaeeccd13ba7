"""Hugging Face tokenizer files for a (possibly expanded) LLaMA SentencePiece model."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from sentencepiece import sentencepiece_model_pb2 as pb

from xllava_jax.tokenizer.proto import model_path, read_model_proto
from xllava_jax.tokenizer.spm import IMAGE_TOKEN, PAD_TOKEN

HF_GENERATED_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json")


def write_hf_tokenizer(model: str | os.PathLike | bytes, out: str | os.PathLike, legacy: bool = False,
                       model_max_length: int | None = None) -> Path:
    """Write tokenizer.model plus the transformers LlamaTokenizer files for it into `out`.

    `<image>` and `<pad>` are added after the pieces (ids n and n+1, as llava-hf), `<pad>`
    is the pad token, BOS is added and EOS is not. `legacy` is transformers' LLaMA flag
    (False: no dummy-prefix space after a special token, as llava-hf) and is written to
    tokenizer_config.json so transformers and xllava_jax.tokenizer.load_tokenizer agree.
    `model` is a tokenizer.model path, an HF tokenizer directory holding one, or its bytes.
    """
    import transformers

    if isinstance(model, bytes):
        data, name, proto = model, "the model", pb.ModelProto.FromString(model)
    else:
        data, name, proto = model_path(model).read_bytes(), model_path(model), read_model_proto(model)
    if proto.trainer_spec.model_type != pb.TrainerSpec.BPE:
        raise ValueError(f"transformers' LlamaTokenizer needs a BPE SentencePiece model; {name} is "
                         f"{pb.TrainerSpec.ModelType.Name(proto.trainer_spec.model_type)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "tokenizer.model").write_bytes(data)
        tok = transformers.LlamaTokenizer.from_pretrained(tmp, legacy=legacy, add_bos_token=True,
                                                          add_eos_token=False, local_files_only=True)
    tok.add_tokens([transformers.AddedToken(IMAGE_TOKEN, special=True, normalized=False)], special_tokens=True)
    tok.add_special_tokens({"pad_token": PAD_TOKEN})
    if model_max_length:
        tok.model_max_length = model_max_length
    for name in HF_GENERATED_FILES:  # stale files of an earlier tokenizer would override ours
        (out / name).unlink(missing_ok=True)
    (out / "tokenizer.model").write_bytes(data)
    tok.save_pretrained(str(out))
    update_tokenizer_config(out, legacy=legacy, add_bos_token=True, add_eos_token=False)
    return out


def update_tokenizer_config(out: str | os.PathLike, **values: Any) -> None:
    """Set keys of out/tokenizer_config.json (transformers' save_pretrained does not write `legacy` back; without
    it a later load may rebuild the tokenizer non-legacy)."""
    config_file = Path(out) / "tokenizer_config.json"
    config = json.loads(config_file.read_text())
    config.update(values)
    config_file.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")



def export_hf_tokenizer(source: str | os.PathLike, out: str | os.PathLike, chat_template: str | None = None) -> Any:
    """The HF tokenizer of `source` (a tokenizer directory) written into `out` so that it tokenizes like training.

    Training tokenizes each text chunk around `<image>` on its own, with SentencePiece's dummy prefix
    (LLaVA's tokenizer_image_token), which is transformers' `legacy=True`; the export is written legacy
    whatever `source` says, with `chat_template` (Jinja) when given. Returns the transformers tokenizer (whoever
    saves it again, e.g. a processor, calls update_tokenizer_config(out, legacy=True) after).
    """
    import transformers

    source, out = Path(source), Path(out)
    tok = transformers.AutoTokenizer.from_pretrained(str(source), legacy=True, local_files_only=True)
    if chat_template is not None:
        tok.chat_template = chat_template
    out.mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(str(out))
    if (source / "tokenizer.model").is_file():  # our load_tokenizer reads it
        (out / "tokenizer.model").write_bytes((source / "tokenizer.model").read_bytes())
    update_tokenizer_config(out, legacy=True)
    return tok
