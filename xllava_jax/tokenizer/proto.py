"""Reading SentencePiece model files (a tokenizer.model, or an HF tokenizer directory holding one)."""

from __future__ import annotations

import os
from pathlib import Path

from sentencepiece import sentencepiece_model_pb2 as pb


def model_path(path: str | os.PathLike) -> Path:
    """`path` itself, or the tokenizer.model inside an HF tokenizer directory."""
    path = Path(path)
    return path / "tokenizer.model" if path.is_dir() else path


def read_model_proto(path: str | os.PathLike) -> pb.ModelProto:
    """The SentencePiece ModelProto of a tokenizer.model file (or an HF tokenizer directory holding one)."""
    file = model_path(path)
    if not file.is_file():
        raise FileNotFoundError(f"no SentencePiece model at {file}")
    proto = pb.ModelProto()
    try:
        proto.ParseFromString(file.read_bytes())
    except Exception as e:  # protobuf raises DecodeError subclasses
        raise ValueError(f"{file} is not a SentencePiece model: {e}") from e
    if not proto.pieces:
        raise ValueError(f"{file} is not a SentencePiece model: it has no pieces")
    return proto
