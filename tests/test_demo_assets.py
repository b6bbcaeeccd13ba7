"""The demo's assets: the tokenizer report's held-out text is out of sample (its own sentence templates and
vocabulary, no line or word of it in any training file), and the assets carry the settings that made them
(a changed setting regenerates them and says so; unchanged settings reuse them)."""

import json
import logging
import re
import shutil

import sentencepiece as spm

from xllava_jax import demo
from xllava_jax.data import synthetic
from xllava_jax.data.templates import VICUNA_SYSTEM
from xllava_jax.tokenizer.report import read_lines

PUNCTUATION = ".,?!，。？"


def words(text: str) -> set[str]:
    """Whitespace-separated words, punctuation stripped (English lower-cased)."""
    return {w.strip(PUNCTUATION).lower() for w in text.split()} - {""}


def zh_fragments() -> set[str]:
    """The Chinese held-out vocabulary: slot fillers, and each template's text between slots and punctuation."""
    fillers = {w for ws in synthetic.HELDOUT_WORDS["zh"].values() for w in ws}
    literal = {f for t in synthetic.HELDOUT_TEMPLATES["zh"] for f in re.split(r"\{\w+\}|[，。？]", t) if f}
    return fillers | literal


def test_heldout_text_occurs_in_no_training_file(demo_data_root):
    paths = synthetic.dataset_paths(demo_data_root)
    files = synthetic.training_files(demo_data_root)
    names = {p.name for p in files}
    assert {"text_en.txt", "text_ko.txt", "text_zh.txt", "text_ko_zh.txt", "captions.jsonl", "qa.jsonl"} <= names
    assert not names & {"questions.jsonl", *(f"heldout_text_{la}.txt" for la in synthetic.LANGS)}
    # what the English tokenizer trains on beside text_en.txt (demo.prepare), as one more "file"
    training = {p.name: p.read_text(encoding="utf-8") for p in files}
    training["tokenizer template line"] = f"{VICUNA_SYSTEM} USER: ASSISTANT:"
    training_words = set().union(*map(words, training.values()))
    for lang in synthetic.LANGS:
        held_out = read_lines(paths[f"heldout_text_{lang}"])
        assert len(held_out) == len(set(held_out)) == 6  # num_eval distinct lines
        for line in held_out:  # exact match anywhere in any training file
            hits = [name for name, text in training.items() if line in text]
            assert not hits, (lang, line, hits)
        if lang == "zh":  # no spaces between words: each held-out word and template phrase, as a substring
            for fragment in zh_fragments():
                assert not [n for n, t in training.items() if fragment in t], fragment
        else:
            shared = words(" ".join(held_out)) & training_words
            assert not shared, (lang, shared)


def test_heldout_text_is_not_a_rewording_of_the_training_sentences():
    """Every held-out sentence comes from HELDOUT_TEMPLATES; none of those templates' words is a training word."""
    scenes = synthetic.random_scenes(200, 0)
    for lang in synthetic.LANGS:
        training = set(synthetic.text_corpus(scenes, lang)) | {synthetic.caption(s, lang) for s in scenes}
        training |= {synthetic.QUESTIONS[k][lang] for k in synthetic.QUESTIONS}
        lines = synthetic.heldout_text(60, lang, seed=3)
        assert len(set(lines)) == 60
        assert not set(lines) & training
        if lang != "zh":
            fixed = words(" ".join(re.sub(r"\{\w+\}", " ", t) for t in synthetic.HELDOUT_TEMPLATES[lang]))
            assert fixed and not fixed & words(" ".join(training)), lang


def snapshot(root):
    """mtime_ns of the files each part of the assets is judged by."""
    return {name: (root / name).stat().st_mtime_ns for name in
            ("questions.jsonl", "heldout_text_en.txt", "tokenizer_en/tokenizer.model", "tokenizer/tokenizer.model",
             "tokenizer_report.json")}


def test_assets_are_reused_when_unchanged_and_regenerated_when_a_setting_changes(demo_data_root, tmp_path, caplog):
    root = tmp_path / "data"
    shutil.copytree(demo_data_root, root)
    caplog.set_level(logging.INFO, logger="xllava_jax.demo")
    fingerprint = json.loads((root / demo.FINGERPRINT_FILE).read_text())
    assert fingerprint["version"] == demo.ASSETS_VERSION
    assert fingerprint["dataset"] == {"num_train": 120, "num_eval": 6, "image_size": 64, "seed": 0}
    assert fingerprint["tokenizers"] == {"base_vocab": 600, "new_pieces": 300}

    # same settings (the conftest fixture's): everything reused, and the log says so
    before = snapshot(root)
    demo.prepare(root, num_train=120, num_eval=6)
    assert snapshot(root) == before
    assert "reusing" in caplog.text and "regenerating" not in caplog.text

    # a dataset setting changed: dataset and tokenizers made again, the record updated, the log names the change
    caplog.clear()
    demo.prepare(root, num_train=120, num_eval=8)
    after = snapshot(root)
    assert all(after[k] != before[k] for k in before)
    assert "dataset settings changed (num_eval 6 -> 8)" in caplog.text
    questions = (root / "questions.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(questions) == 8 * len(synthetic.QUESTIONS) * len(synthetic.LANGS)
    assert len(list((root / "images").glob("eval_*.png"))) == 8
    assert json.loads((root / demo.FINGERPRINT_FILE).read_text())["dataset"]["num_eval"] == 8

    # a tokenizer setting changed: the dataset is kept, the tokenizers are made again
    caplog.clear()
    demo.prepare(root, num_train=120, num_eval=8, new_pieces=200)
    again = snapshot(root)
    assert again["questions.jsonl"] == after["questions.jsonl"]
    assert again["tokenizer/tokenizer.model"] != after["tokenizer/tokenizer.model"]
    assert "tokenizer settings changed (new_pieces 300 -> 200)" in caplog.text
    sp = spm.SentencePieceProcessor(model_file=str(root / "tokenizer" / "tokenizer.model"))
    assert sp.get_piece_size() == 600 + 200
    assert json.loads((root / "tokenizer_report.json").read_text())["new_pieces"] == 200

    # assets without a record (made before records, or by a run stopped half-way) are made again
    caplog.clear()
    (root / demo.FINGERPRINT_FILE).unlink()
    demo.prepare(root, num_train=120, num_eval=8, new_pieces=200)
    assert "no settings record" in caplog.text
    assert snapshot(root)["questions.jsonl"] != again["questions.jsonl"]
    assert (root / demo.FINGERPRINT_FILE).exists()
