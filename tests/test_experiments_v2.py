"""CI: `python -m xllava_jax.experiments run --study v2 --quick` end to end (plumbing only: the world, the
frozen ViT, three arms' stages with their streams, generation and forced-choice evaluation, the report). SLOW:
4-9 minutes on the shared 2-core CPU (load 7-10). No claims are checked."""

import json

import pytest

from test_experiments import run_experiments
from xllava_jax.experiments.v2.config import apply_quick, study_config
from xllava_jax.experiments.v2.study import study_arms

EXPECTED = {"acc_en", "acc_ko", "acc_zh", "acc_non_en", "acc_ko_position", "acc_ko_fruit_text", "acc_ko_fruit_trained",
            "acc_ko_comp", "lo_ko", "lo_non_en", "fc_ko", "tokens_per_char_ko", "train_chars_per_s", "modality_gap"}


@pytest.mark.slow
def test_quick_run_study_v2(tmp_path):
    out = tmp_path / "v2"
    run_experiments("run", "--study", "v2", "--quick", "--out", str(out))
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))["v2"]
    assert list(results) == [a.name for a in study_arms(apply_quick(study_config()))]
    for entry in results.values():
        assert entry["seeds"] == [0] and EXPECTED <= set(entry["metrics"])
    details = json.loads((out / "details.json").read_text(encoding="utf-8"))["v2"]
    assert details["quick"] and set(details["vit_probe"]) >= {"color", "shape", "position"}
    for arm, e in details["arms"].items():
        book = e["per_seed"][0]
        assert book["stage2_max_len"] % 16 == 0 and book["max_new_tokens"] >= 3, arm
        assert book["stages"]["stage2"]["steps"] == 6
    streams = list((out / "streams" / "seed0").glob("*.jsonl"))
    assert len(streams) == 3 and all(len(s.read_text(encoding="utf-8").splitlines()) == 6 * 16 for s in streams)
    text = (out / "report.md").read_text(encoding="utf-8")
    for section in ("## Gate", "## Primary family", "## Exploratory", "## Arms", "--quick run"):
        assert section in text
    assert (out / "v2_accuracy.png").exists()
