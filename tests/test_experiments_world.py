"""The experiments' synthetic world: held-out scenes, questions and text never occur in a training file (exact
match), the premises hold (scarce Korean, knowledge only in text pretraining and English QA, poor base tokenizer)."""

import hashlib
import json

import pytest

from xllava_jax.experiments import config, world


@pytest.fixture(scope="module")
def small_world(tmp_path_factory):
    w = config.apply_quick(config.suite_config("xllava_table2")).world
    return world.prepare(tmp_path_factory.mktemp("world"), w), w


def _lines(path):
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]


def test_held_out_never_in_training_files(small_world):
    p, _ = small_world
    training = {f: f.read_text(encoding="utf-8") for f in world.training_files(p)}
    questions = _lines(p["questions"])
    assert questions
    for q in questions:  # the image a held-out question shows is in no training file
        assert all(q["image"] not in text for text in training.values()), q
    for la in world.LANGS:  # held-out text (captions of held-out scenes) is in no training file
        for line in p[f"heldout_text_{la}"].read_text(encoding="utf-8").splitlines():
            assert all(line not in text for text in training.values()), line
    train_images = set()
    for f in world.training_files(p):
        if f.suffix == ".jsonl":
            train_images |= {hashlib.sha1((p["root"] / r["image"]).read_bytes()).hexdigest() for r in _lines(f)}
    eval_images = {hashlib.sha1((p["root"] / q["image"]).read_bytes()).hexdigest() for q in questions}
    assert not eval_images & train_images


def test_premises(small_world):
    p, w = small_world
    assert len(_lines(p["qa_en"])) > len(_lines(p["qa_ko"]))  # English rich, Korean scarce
    ko_instructions = "".join(p[n].read_text(encoding="utf-8") for n in ("qa_ko", "mvif", "parallel"))
    assert world.FRUIT_QUESTION["ko"] not in ko_instructions  # the knowledge question: never in Korean QA
    assert all(f["ko"] not in ko_instructions for f in world.FRUITS.values())
    assert world.FRUIT_QUESTION["en"] in p["qa_en"].read_text(encoding="utf-8")
    ko_text = p["text_ko"].read_text(encoding="utf-8")
    assert all(f["ko"] in ko_text for f in world.FRUITS.values())  # ... but its facts are in the text pretraining
    report = json.loads(p["tokenizer_report"].read_text(encoding="utf-8"))["languages"]["ko"]
    assert report["before"]["tokens_per_char"] > 2 * report["after"]["tokens_per_char"]  # base serves Korean poorly


def test_text_only_baseline_by_hand(small_world):
    p, _ = small_world
    b = world.text_only_baseline(p)
    qs = _lines(p["questions"])
    # Korean fruit questions have no Korean training answer: the baseline cannot get them
    ko = [q for q in qs if q["lang"] == "ko"]
    assert b["text_only"]["acc_ko"] <= 1 - sum(q["kind"] == "fruit" for q in ko) / len(ko) + 1e-9
    # chance: mean over questions of 1 / (answers of its kind): kinds have 4, 3, 4, 4 answers, equally often
    assert b["chance"]["acc_en"] == pytest.approx((1 / 4 + 1 / 3 + 1 / 4 + 1 / 4) / 4)
    # held-out majority: per (kind, language), the count of its most common held-out answer, over the questions
    for lang in ("en", "ko", "zh"):
        mine = [q for q in qs if q["lang"] == lang]
        top = sum(max(sum(r["answer"] == a for r in mine if r["kind"] == k) for a in {r["answer"] for r in mine
                                                                                      if r["kind"] == k})
                  for k in {q["kind"] for q in mine})
        assert b["heldout_majority"][f"acc_{lang}"] == pytest.approx(top / len(mine))
