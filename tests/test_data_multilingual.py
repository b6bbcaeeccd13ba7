"""LRM-LLaVA task instructions: structure of MVQA / EP-VQA / BVQA, the mix ratio, weights, determinism."""

import json

import pytest

from data_fixtures import QA, make_parallel_records
from xllava_jax.data import formats
from xllava_jax.data.multilingual import TaskMixConfig, build_bvqa, build_ep_vqa, build_mvqa, build_task_mix
from xllava_jax.data.report import DataError


@pytest.fixture(scope="module")
def parallel(tmp_path_factory):
    path = tmp_path_factory.mktemp("par") / "par.jsonl"
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in make_parallel_records()), encoding="utf-8")
    return formats.load_parallel(path, image_root="/imgs")


def test_mvqa_same_language(parallel):
    s = build_mvqa(parallel[1], "ko")
    assert s["turns"][0] == ["human", "<image>\n" + QA["ko"][0][0]]
    assert [t[1] for t in s["turns"][1::2]] == [a for _, a in QA["ko"]]
    assert s["image"] == "img/1.jpg" and s["image_root"] == "/imgs" and s["lang"] == "ko"


def test_ep_vqa_translates_then_answers(parallel):
    s = build_ep_vqa(parallel[0], "zh")
    q = s["turns"][0][1]
    assert q.startswith("<image>\n" + QA["zh"][0][0] + "\n") and "英语" in q
    answer = s["turns"][1][1]
    assert QA["en"][0][0] in answer and answer.endswith(QA["zh"][0][1])
    assert answer.index(QA["en"][0][0]) < answer.index(QA["zh"][0][1])
    with pytest.raises(ValueError, match="par0"):
        build_ep_vqa(parallel[0], "en")


def test_bvqa_cross_language_one_english(parallel):
    s = build_bvqa(parallel[1], "ko", "en")
    assert s["turns"][0][1].startswith("<image>\n" + QA["ko"][0][0]) and "영어" in s["turns"][0][1]
    assert [t[1] for t in s["turns"][1::2]] == [a for _, a in QA["en"]]
    s2 = build_bvqa(parallel[1], "en", "zh")
    assert "Chinese" in s2["turns"][0][1] and s2["turns"][1][1] == QA["zh"][0][1]
    with pytest.raises(ValueError):
        build_bvqa(parallel[1], "ko", "zh")


def test_mix_ratio_weights_and_determinism(parallel, capsys):
    cfg = TaskMixConfig(lang_weights={"en": 0.5, "ko": 0.375, "zh": 0.125}, seed=4)
    samples, summary = build_task_mix(parallel * 10, cfg)
    assert "[task mix]" in capsys.readouterr().out
    assert summary["english"] == 120 and summary["non_english"] == 120
    assert set(summary["by_task"]) == {"mvqa", "ep_vqa", "bvqa"}
    ko = sum(v for k, v in summary["by_language"].items() if "ko" in k)
    zh = sum(v for k, v in summary["by_language"].items() if "zh" in k)
    assert ko > 2 * zh
    again, _ = build_task_mix(parallel * 10, cfg, verbose=False)
    assert again == samples
    other, _ = build_task_mix(parallel * 10, TaskMixConfig(lang_weights=cfg.lang_weights, seed=5), verbose=False)
    assert other != samples
    for s in samples:
        assert s["turns"][0][1].startswith("<image>\n")


def test_pretraining_mix_is_mvqa_only_with_ratio(parallel):
    samples, summary = build_task_mix(parallel, TaskMixConfig(tasks={"mvqa": 1.0}, non_english_ratio=0.5),
                                      verbose=False)
    assert summary["by_task"] == {"mvqa": 18} and summary["non_english"] == 6


def test_bad_setting_named():
    with pytest.raises(DataError, match="tasks"):
        build_task_mix([], TaskMixConfig(tasks={"xvqa": 1.0}), verbose=False)
