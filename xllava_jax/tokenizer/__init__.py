"""Tokenizers: SentencePiece LLaMA loading (spm.py) and vocabulary expansion (expand.py)."""
