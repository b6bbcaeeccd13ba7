"""Metrics against hand-worked cases from the published rules (VQA/EvalAI, GQA, POPE, MMBench)."""

import pytest

from xllava_jax.eval.metrics import (gqa_match, language_summary, mmbench_circular, mmbench_match, normalize_answer,
                                     pope_answer, pope_metrics, vqa_accuracy)


@pytest.mark.parametrize("raw,norm", [
    ("Yes", "yes"),
    ("Two", "2"),                       # number words -> digits
    ("the red car", "red car"),         # articles dropped
    ("A dog.", "dog"),                  # period at the end dropped
    ("3.5", "3.5"),                     # decimal point kept
    ("dont", "don't"),                  # contraction restored
    ("yes, it is!", "yes it is"),       # ',' removed; '!' next to nothing -> space, collapsed
    ("black-and-white", "black and white"),  # '-' not next to a space -> space
    ("hot - dog", "hot dog"),           # '-' next to a space -> removed
    ("1,000", "1000"),                  # comma removed
    ("What's\tup\n", "what 's up"),    # 's split, tab/newline -> space, '?' removed
])
def test_normalize_answer(raw, norm):
    assert normalize_answer(raw) == norm


@pytest.mark.parametrize("matches,acc", [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (10, 1.0)])
def test_vqa_leave_one_out(matches, acc):
    # matches of 10: each of the 10 subsets of 9 scores min(1, m_i / 3);
    # e.g. 1 match -> 9 subsets see 1 (1/3), one sees 0 -> 9/30 = 0.3; 3 matches -> (7*1 + 3*2/3)/10 = 0.9
    gts = ["cat"] * matches + ["dog"] * (10 - matches)
    assert vqa_accuracy("Cat.", gts) == pytest.approx(acc)


def test_vqa_normalizes_both_sides():
    assert vqa_accuracy("two", ["2"] * 10) == 1.0
    assert vqa_accuracy("The Table", ["table"] * 3 + ["desk"] * 7) == pytest.approx(0.9)


def test_gqa_match():
    assert gqa_match("Yes.", "yes") and gqa_match("left", "left")
    assert not gqa_match("on the left", "left") and not gqa_match("yes,", "yes")


@pytest.mark.parametrize("text,ans", [
    ("No, there is no dog.", "no"), ("Yes, there is a dog in the image.", "yes"),
    ("There is not a dog.", "no"), ("Yes. No other objects.", "yes"),  # only the first sentence counts
    ("Nope", "yes"), ("no", "no"), ("NO", "yes"),  # LLaVA matches 'No'/'no'/'not' exactly
])
def test_pope_answer_parsing(text, ans):
    assert pope_answer(text) == ans


def test_pope_metrics_hand_worked():
    preds = ["Yes", "Yes", "No", "No", "Yes", "No"]
    labels = ["yes", "no", "no", "yes", "yes", "no"]
    # TP=2 (0,4), FP=1 (1), TN=2 (2,5), FN=1 (3)
    m = pope_metrics(preds, labels)
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["precision"] == pytest.approx(2 / 3) and m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 / 3) and m["yes_ratio"] == pytest.approx(3 / 6)
    assert pope_metrics(["No"], ["no"])["precision"] == 0.0  # no positive predictions: defined as 0
    with pytest.raises(ValueError, match="2 predictions but 1 labels"):
        pope_metrics(["a", "b"], ["yes"])


OPTS = {"A": "red", "B": "blue", "C": "green", "D": "yellow"}


@pytest.mark.parametrize("pred,letter", [
    ("B", "B"), ("B.", "B"), ("(C) green", "C"), ("The answer is D", "D"),
    ("blue", "B"), ("It is green.", "C"), ("A or B", None), ("purple", None), ("red and blue", None),
    ("A", "A"), ("A cat is red", "A"),  # "A" in an answer of more than 3 words: the article, so the text decides
    ("E", "E"),  # MMBench's matcher reads A-E whatever the number of options
])
def test_mmbench_match(pred, letter):
    assert mmbench_match(pred, OPTS) == letter


def test_mmbench_circular_groups_copies_by_index_mod_a_million():
    rows = ([{"index": i * 1_000_000 + 1, "pred": a, "answer": a} for i, a in enumerate("ABCD")]  # all right
            + [{"index": 2, "pred": "A", "answer": "A"}, {"index": 1_000_002, "pred": "C", "answer": "B"}]
            + [{"index": 3, "pred": None, "answer": "A"}, {"index": 1_000_003, "pred": "B", "answer": "B"}]
            + [{"index": 4, "pred": None, "answer": "A"}, {"index": 1_000_004, "pred": "D", "answer": "B"}])
    s = mmbench_circular(rows)
    assert s["questions"] == 4 and s["accuracy"] == pytest.approx(1 / 4) and s["unresolved"] == 1
    assert s["accuracy_if_unresolved_right"] == pytest.approx(2 / 4) and s["unresolved_questions"] == [3]


def test_language_summary():
    s = language_summary({"en": 80.0, "ko": 60.0, "zh": 70.0})
    assert s["non_english_avg"] == pytest.approx(65.0) and s["avg"] == pytest.approx(70.0)
    assert s["per_language"]["ko"] == 60.0


def test_language_table_says_which_instruction_language():
    from xllava_jax.eval.metrics import language_table
    s = {**language_summary({"en": 80.0, "ko": 60.0}), "instruction_lang": "en"}
    assert "instruction line: en" in language_table(s, "accuracy")
    assert "instruction line" not in language_table(language_summary({"en": 1.0, "ko": 0.5}), "accuracy")
