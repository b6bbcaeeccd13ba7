"""Bad input: each kind is skipped, counted and logged with its record id; strict mode stops on the first."""

import json
import subprocess
import sys

import pytest
from PIL import Image

from xllava_jax.data import formats, pipeline
from xllava_jax.data.processing import SampleProcessor
from xllava_jax.data.report import DataError, DataStats
from xllava_jax.tokenizer.spm import load_tokenizer


def good(i, image=None):
    rec = {"id": f"good{i}", "conversations": [{"from": "human", "value": "<image>\nwhat is there"},
                                                  {"from": "gpt", "value": "a red cat"}]}
    if image:
        rec["image"] = image
    return rec


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    Image.new("RGB", (30, 20), (1, 2, 3)).save(root / "ok.jpg")
    (root / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    lines = [json.dumps(good(i, "ok.jpg" if i % 2 else None)) for i in range(6)]
    lines += [
        '{"id": "broken", "conversations": [',                                            # malformed JSON
        json.dumps({"id": "nofield"}),                                                    # missing conversations
        json.dumps({"id": "novalue", "conversations": [{"from": "human"}]}),              # missing value
        json.dumps({"id": "twohuman", "conversations": [{"from": "human", "value": "q"},
                                                        {"from": "human", "value": "q"}]}),  # not alternating
        json.dumps({"id": "empty", "conversations": [{"from": "human", "value": "q"},
                                                     {"from": "gpt", "value": "  "}]}),   # empty answer
        json.dumps({**good(90), "id": "missingimg", "image": "nope.jpg"}),                 # missing image
        json.dumps({**good(91), "id": "corruptimg", "image": "corrupt.jpg"}),              # corrupt image
    ]
    path = root / "data.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


EXPECTED = {"malformed_json": 1, "missing_field": 2, "turns_not_alternating": 1, "empty_answer": 1,
            "missing_image": 1, "corrupt_image": 1}


@pytest.mark.slow
def test_each_bad_kind_counted_with_id(planted, spm_model_path, caplog):
    tok = load_tokenizer(spm_model_path)
    stats = DataStats()
    records = formats.load_llava(planted, image_root=str(planted.parent), stats=stats)
    proc = SampleProcessor(tok, "vicuna_v1", max_len=128, num_image_tokens=4, image_size=14)
    sp = pipeline.BatchSpec(2, 128, tok.pad_id, image_shape=(14, 14, 3), drop_remainder=False)
    batches = list(pipeline.make_pipeline(records, proc, sp, stats=stats, num_workers=2))
    assert dict(stats.skipped) == EXPECTED and stats.kept == 6
    assert sum(int(b["num_samples"]) for b in batches) == 6
    assert stats.examples["missing_image"] == ["missingimg"] and stats.examples["corrupt_image"] == ["corruptimg"]
    assert "twohuman" in caplog.text and "empty" in caplog.text
    print(stats.summary("planted"))


def test_strict_mode_stops_with_record_id(planted, spm_model_path):
    with pytest.raises(DataError, match="broken|data.jsonl:7"):
        formats.load_llava(planted, strict=True)
    tok = load_tokenizer(spm_model_path)
    proc = SampleProcessor(tok, max_len=128, num_image_tokens=4, image_size=14, strict=True)
    with pytest.raises(DataError, match="missingimg"):
        proc({"id": "missingimg", "image": "nope.jpg", "image_root": str(planted.parent),
              "turns": [["human", "<image>\nq"], ["gpt", "a"]]})


def test_inspect_and_stats_cli(planted, spm_model_path):
    base = [sys.executable, "-m", "xllava_jax.data"]
    args = ["--data", str(planted), "--tokenizer", str(spm_model_path), "--image_root", str(planted.parent),
            "--image_tokens", "4", "--template", "vicuna_v1"]
    out = subprocess.run(base + ["inspect", *args, "--limit", "3"], capture_output=True, text=True, check=True)
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert [r["id"] for r in rows] == ["good0", "good1", "good2"]
    assert rows[0]["trained_text"] == "a red cat</s>" and "ASSISTANT: a red cat</s>" in rows[0]["text"]
    assert rows[1]["text"].count("<image>") == 1 and len(rows[1]["input_ids"]) == len(rows[1]["labels"])
    out = subprocess.run(base + ["stats", *args, "--check_images"], capture_output=True, text=True, check=True)
    st = json.loads(out.stdout)
    assert st["samples"] == 6 and st["skipped"] == EXPECTED and "skipped" in out.stderr
