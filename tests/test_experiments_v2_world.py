"""Study v2's world premises (checked on the written files by exact search), the common-random-numbers stream
plan, and the forced-choice log-odds by hand."""

import collections
import math

import pytest

from xllava_jax.data.synthetic import COLORS, POSITIONS, QUESTIONS, SHAPES, Scene, caption, draw
from xllava_jax.experiments.v2 import streams
from xllava_jax.experiments.v2 import world as w2
from xllava_jax.experiments.v2.config import apply_quick, study_config
from xllava_jax.experiments.v2.scoring import answer_sets, log_odds, summarize
from xllava_jax.experiments.world import FRUIT_QUESTION, FRUITS
from xllava_jax.jsonl import read_jsonl


@pytest.fixture(scope="module")
def small_world(tmp_path_factory):
    w = apply_quick(study_config()).world
    return w2.write_world(tmp_path_factory.mktemp("v2world"), w), w


def test_composition_triples_balanced():
    t = w2.composition_triples()
    assert len(t) == len(set(t)) == 12
    assert len({(c, s) for c, s, _ in t}) == 12 and len({(s, p) for _, s, p in t}) == 12
    for i, names in enumerate((COLORS, SHAPES, POSITIONS)):
        counts = collections.Counter(x[i] for x in t)
        assert set(counts) == set(names) and len(set(counts.values())) == 1


def _texts(path):
    for r in read_jsonl(path):
        for turn in r["conversations"]:
            yield from (turn["value"].values() if isinstance(turn["value"], dict) else [turn["value"]])


def test_non_english_files_never_ask_position_and_fruit_only_for_trained_colours(small_world):
    p, _ = small_world
    for name in ("qa_ko", "qa_zh", "qa_gate_ko"):
        lang = "ko" if "ko" in name else "zh"
        texts = list(_texts(p[name]))
        assert (QUESTIONS["position"][lang] in " ".join(texts)) == (name == "qa_gate_ko")
        assert FRUIT_QUESTION[lang] in " ".join(texts)
        for color in ("blue", "yellow"):
            assert FRUITS[color][lang] not in texts  # never a trained answer
    korean_text = (p["root"] / "text_ko.txt").read_text(encoding="utf-8")
    assert all(FRUITS[c]["ko"] in korean_text for c in COLORS)  # every fact is in stage-0 text
    assert QUESTIONS["position"]["ko"] in korean_text


def test_composition_triples_only_in_english(small_world):
    p, _ = small_world
    comp = w2.composition_triples()
    ko = {caption(Scene(c, s, q, 0.2, (0, 0)), "ko") for c, s, q in comp}
    en = {caption(Scene(c, s, q, 0.2, (0, 0)), "en") for c, s, q in comp}
    ko_lines = [t for name in ("captions_ko", "captions_parallel") for t in _texts(p[name])]
    ko_lines += (p["root"] / "text_ko.txt").read_text(encoding="utf-8").splitlines()
    assert not any(line.startswith(x) for line in ko_lines for x in ko)
    en_lines = list(_texts(p["captions_en"])) + (p["root"] / "text_en.txt").read_text().splitlines()
    assert any(line.startswith(x) for line in en_lines for x in en)


def test_evaluation_covers_every_triple_with_groups(small_world):
    p, w = small_world
    qs = list(read_jsonl(p["questions"]))
    images = {q["image"] for q in qs}
    assert len(images) == w.eval_per_triple * 48
    assert sum(q["comp"] for q in qs) == 12 * w.eval_per_triple * 4 * 3
    fruit = [q for q in qs if q["kind"] == "fruit" and q["lang"] == "ko"]
    assert {q["fruit_group"] for q in fruit if q["answer"] in ("블루베리", "바나나")} == {"text"}
    groups = w2.metric_groups(next(q for q in qs if q["kind"] == "fruit" and q["comp"]))
    assert any(g.endswith("_comp") for g in groups) and any("_fruit_" in g for g in groups)
    train_bytes = {f.read_bytes() for f in (p["root"] / "images").glob("*.png") if not f.name.startswith("eval")}
    assert not any((p["root"] / i).read_bytes() in train_bytes for i in images)


def test_stream_plan_common_random_numbers():
    plain = streams.stream_plan(10, 0, 35, seed=3)
    assert [s for s, _ in plain] == ["base"] * 35
    assert sorted(i for _, i in plain[:10]) == list(range(10))  # each pass is a permutation
    with_extra = streams.stream_plan(10, 5, 35, seed=3)
    base_order = [i for s, i in with_extra if s == "base"]
    assert base_order == [i for _, i in plain][:len(base_order)]  # same master order, seed-determined
    slots = [j for j, (s, _) in enumerate(with_extra) if s == "extra"]
    assert len(slots) == math.floor(35 * 5 / 15) and all(b - a in (2, 3, 4) for a, b in zip(slots, slots[1:]))
    assert streams.stream_plan(10, 5, 35, seed=3) == with_extra  # identical for the same recipe
    assert streams.stream_plan(10, 5, 35, seed=4) != with_extra


def test_stream_file_round_trips(small_world, tmp_path):
    p, _ = small_world
    base = streams.file_records(p["root"], ("qa_en", "qa_ko", "qa_zh"))
    extra = streams.file_records(p["root"], ("mvif",))
    path = streams.write_stream(tmp_path / "s.jsonl", base, extra, 50, seed=0)
    from xllava_jax.data import formats
    back = formats.load_llava(path, strict=True)
    plan = streams.stream_plan(len(base), len(extra), 50, 0)
    assert [r["turns"] for r in back] == [(base if s == "base" else extra)[i]["turns"] for s, i in plan]


def test_log_odds_by_hand():
    s = {"a": math.log(0.5), "b": math.log(0.3), "c": math.log(0.2)}
    assert log_odds(s, "a") == pytest.approx(math.log(0.5 / 0.5))
    assert log_odds(s, "c") == pytest.approx(math.log(0.2 / 0.8))
    out = summarize([{"lang": "ko", "lo": 1.0, "fc": 1.0}, {"lang": "ko", "lo": -1.0, "fc": 0.0},
                     {"lang": "zh", "lo": 3.0, "fc": 1.0}])
    assert out["lo_ko"] == 0.0 and out["fc_ko"] == 0.5 and out["lo_non_en"] == 1.5


def test_answer_sets_are_the_kinds_answers(small_world):
    p, _ = small_world
    sets = answer_sets(list(read_jsonl(p["questions"])))
    assert len(sets[("color", "ko")]) == 4 and len(sets[("shape", "en")]) == 3 and len(sets[("fruit", "zh")]) == 4


def test_fresh_scenes_skip_seen_pixels():
    w = study_config().world
    triples = [("red", "circle", "left")]
    first = w2.fresh_scenes(1, triples, 7, set(), w)[0]
    seen = {draw(first, w.image_size).tobytes()}
    again = w2.fresh_scenes(3, triples, 7, seen, w)
    pixels = [draw(s, w.image_size).tobytes() for s in again]
    assert not seen & set(pixels) and len(set(pixels)) == 3  # fresh: neither seen nor repeated


def test_every_arm_has_a_stream(small_world, tmp_path):
    from xllava_jax.experiments.suites import BASE_QA
    from xllava_jax.experiments.v2.study import study_arms
    p, _ = small_world
    base = streams.file_records(p["root"], BASE_QA)
    for arm in study_arms(study_config()):
        extra = streams.file_records(p["root"], [f for f in arm.stage2_files if f not in BASE_QA])
        if arm.stage2_tasks:
            extra += streams.task_mix_records(p["root"], arm.stage2_tasks, arm.non_english_ratio, 0)
        assert bool(extra) == (arm.stage2_files != BASE_QA or bool(arm.stage2_tasks)), arm.name
        assert len(streams.stream_plan(len(base), len(extra), 64, 0)) == 64


def test_world_refuses_other_settings(small_world):
    p, w = small_world
    assert w2.write_world(p["root"], w) == p  # same settings: reused
    other = apply_quick(study_config()).world
    other.eval_per_triple = 2
    with pytest.raises(ValueError, match="other settings"):
        w2.write_world(p["root"], other)
