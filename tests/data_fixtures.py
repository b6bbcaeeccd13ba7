"""Tiny data for data/tokenizer tests: a LLaMA-style SentencePiece model, LLaVA and parallel records, images."""

from __future__ import annotations

import io
import random
from pathlib import Path

_EN = ("the a cat dog sits on table red blue green image picture shows what is there how many "
       "people street car tree sky water person man woman child holding looking standing "
       "describe color left right top bottom answer question yes no two three four").split()
_KO = ("이 사진 에 는 고양이 개 가 있습니다 무엇 입니까 색 빨간 파란 사람 거리 자동차 나무 하늘 "
       "물 남자 여자 아이 설명 해 주세요 왼쪽 오른쪽 질문 답변 예 아니요 두 세").split()
_ZH = ("这 张 图片 中 有 一只 猫 狗 桌子 上 红色 蓝色 人 街道 汽车 树 天空 水 男人 女人 孩子 "
       "描述 颜色 左边 右边 问题 回答 是 不是 两 三 什么 多少").split()


def generate_multilingual_text(num_lines: int = 3000, seed: int = 0) -> list[str]:
    """Return generated English/Korean/Chinese sentences (plus LLaVA prompt words) for tokenizer training."""
    rng = random.Random(seed)
    lines = []
    for i in range(num_lines):
        words = (_EN, _KO, _ZH)[i % 3]
        sep = "" if words is _ZH else " "
        lines.append(sep.join(rng.choice(words) for _ in range(rng.randint(4, 14))) + rng.choice([".", "?", "!"]))
    lines += ["A chat between a curious user and an artificial intelligence assistant. USER: ASSISTANT:"] * 20
    lines += ["[INST] <<SYS>> You are a helpful language and vision assistant. <</SYS>> [/INST]"] * 20
    return lines


def train_llama_style_spm(out_prefix: Path, vocab_size: int = 1000, lines: list[str] | None = None) -> Path:
    """Train a LLaMA-style SentencePiece BPE model (unk=0, bos=1, eos=2, byte fallback) and return its path."""
    import sentencepiece as spm

    lines = lines if lines is not None else generate_multilingual_text()
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=model, vocab_size=vocab_size, model_type="bpe",
        character_coverage=1.0, byte_fallback=True, split_digits=True, allow_whitespace_only_pieces=True,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, normalization_rule_name="identity",
        remove_extra_whitespaces=False, add_dummy_prefix=True, num_threads=1, minloglevel=2)
    path = Path(f"{out_prefix}.model")
    path.write_bytes(model.getvalue())
    return path


def save_hf_llama_tokenizer(spm_model_path: Path, out: Path) -> Path:
    """Save a llava-hf style tokenizer directory (tokenizer.model + `<image>`, `<pad>`) with transformers."""
    import shutil

    from transformers import AddedToken, LlamaTokenizer

    shutil.copy(spm_model_path, out / "tokenizer.model")
    tok = LlamaTokenizer.from_pretrained(out, legacy=True, add_bos_token=True, add_eos_token=False)
    tok.add_tokens([AddedToken("<image>", special=True, normalized=False)], special_tokens=True)
    tok.add_special_tokens({"pad_token": "<pad>"})
    tok.save_pretrained(out)
    return out


QA = {
    "en": [("What is on the table?", "A red cat sits on the table."), ("How many people are there?", "Two people.")],
    "ko": [("테이블 위에 무엇이 있습니까?", "빨간 고양이가 테이블 위에 있습니다."), ("사람이 몇 명 있습니까?", "두 명 있습니다.")],
    "zh": [("桌子上有什么？", "桌子上有一只红色的猫。"), ("有多少人？", "有两个人。")],
}


def write_llava_dataset(root: Path, num_records: int = 24, size_cycle=((64, 48), (40, 80), (50, 50))) -> Path:
    """Write `root/data.jsonl` (LLaVA format, en/ko/zh, every 4th record text-only) and JPEG images under `root/img`."""
    import json

    import numpy as np
    from PIL import Image

    (root / "img").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    lines = []
    for i in range(num_records):
        lang = ("en", "ko", "zh")[i % 3]
        rec = {"id": f"rec{i}", "conversations": []}
        for j, (q, a) in enumerate(QA[lang][: 1 + i % 2]):
            rec["conversations"] += [{"from": "human", "value": ("<image>\n" if j == 0 and i % 4 else "") + q},
                                     {"from": "gpt", "value": a + " " * 0 + ("!" * (i % 5))}]
        if i % 4:
            w, h = size_cycle[i % len(size_cycle)]
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / "img" / f"{i}.jpg")
            rec["image"] = f"img/{i}.jpg"
        lines.append(json.dumps(rec, ensure_ascii=False))
    path = root / "data.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def make_parallel_records(num_records: int = 12, langs=("en", "ko", "zh")) -> list[dict]:
    """Raw parallel multilingual LLaVA records ({lang: text} values) built from QA."""
    recs = []
    for i in range(num_records):
        conv = []
        for q_idx in range(1 + i % 2):
            conv.append({"from": "human", "value": {la: ("<image>\n" if q_idx == 0 else "") + QA[la][q_idx][0] for la in langs}})
            conv.append({"from": "gpt", "value": {la: QA[la][q_idx][1] for la in langs}})
        recs.append({"id": f"par{i}", "image": f"img/{i}.jpg", "conversations": conv, "type": "conv"})
    return recs
