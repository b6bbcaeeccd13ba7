"""Tokenizers: SentencePiece LLaMA loading (spm.py), vocabulary expansion (expand.py), HF tokenizer files
(hf_export.py), the expansion report (report.py), and growing checkpoints to a new vocabulary (grow.py)."""
