"""Image selection, prompts, reply parsing/validation and the crash-safe JSONL store."""

import json
from pathlib import Path

import pytest

from xllava_jax.datagen.parse import RejectError, reply_to_record, validate_record
from xllava_jax.datagen.prompts import DEFAULT_TURNS, SYSTEM_MESSAGES, build_messages
from xllava_jax.jsonl import JsonlWriter, read_jsonl
from xllava_jax.datagen.vg import SelectionConfig, area_share, image_relpath, main_objects, select_from_files

# the project's shared folder sits beside the repository (../shared from its root), on developer machines and in CI
PAPERS = Path(__file__).resolve().parents[2] / "shared" / "papers"
PAPER = PAPERS / "000_c96d60d13b0a717c.txt"  # the X-LLaVA paper's text


@pytest.mark.skipif(not PAPERS.is_dir(), reason=f"no shared papers folder at {PAPERS} (../shared/papers beside the "
                                                "repository; present on the project's machines and in CI)")
def test_system_messages_are_verbatim_from_the_paper():
    text = PAPER.read_text(encoding="utf-8")
    for msg in SYSTEM_MESSAGES.values():
        assert msg in text
    assert len(SYSTEM_MESSAGES) == 4


def test_main_objects_definition():
    objs = [{"x": 0, "y": 0, "w": 50, "h": 50, "names": ["Cup "]},     # 25% of 100x100
            {"x": 90, "y": 90, "w": 50, "h": 50, "names": ["plate"]},  # clipped to 10x10 = 1%
            {"x": 0, "y": 0, "w": 5, "h": 5, "names": ["speck"]},      # 0.25%: too small
            {"x": 10, "y": 10, "w": 20, "h": 20, "names": ["cup"]},    # duplicate name
            {"x": 0, "y": 0, "w": 30, "h": 30, "names": ["table"]}]
    assert area_share(objs[1], 100, 100) == pytest.approx(0.01)
    assert main_objects(objs, 100, 100, 0.01) == ("cup", "table", "plate")
    assert image_relpath({"image_id": 7, "url": "https://x/rak248/VG_100K_2/7.jpg"}) == "VG_100K_2/7.jpg"


def test_select_keeps_3_to_10(vg_dataset):
    sel = select_from_files(vg_dataset["objects"], vg_dataset["image_data"], SelectionConfig())
    assert sel and all(3 <= len(s.main_objects) <= 10 for s in sel)
    assert all("speck" not in s.main_objects for s in sel)
    narrow = select_from_files(vg_dataset["objects"], vg_dataset["image_data"],
                               SelectionConfig(min_objects=5, max_objects=5, max_images=1))
    assert len(narrow) == 1 and len(narrow[0].main_objects) == 5
    with pytest.raises(ValueError, match="min_objects"):
        SelectionConfig(min_objects=4, max_objects=3)


def _reply(n, langs=("en", "ko", "zh")):
    text = {"en": ("What is it?", "A cup."), "ko": ("무엇인가요?", "컵입니다."), "zh": ("这是什么？", "一个杯子。")}
    return {lang: [{"question": text[lang][0], "answer": text[lang][1]} for _ in range(n)] for lang in langs}


def test_reply_to_record_format():
    rec, graph = reply_to_record("```json\n" + json.dumps({**_reply(8), "scene_graph": "g"}) + "\n```", "stop",
                                 image_id=5, image="VG_100K/5.jpg", mvif_type="conversation", turns=8)
    assert graph == "g" and rec["id"] == "vg5_conversation" and rec["type"] == "conversation"
    assert len(rec["conversations"]) == 16
    assert [t["from"] for t in rec["conversations"][:2]] == ["human", "gpt"]
    assert all(v.startswith("<image>\n") for v in rec["conversations"][0]["value"].values())
    assert not any(v.startswith("<image>") for v in rec["conversations"][2]["value"].values())
    validate_record(rec, turns=8)


@pytest.mark.parametrize("text,finish,reason", [
    ("no json here", "stop", "invalid_json"),
    (json.dumps(_reply(2, ("en", "ko"))), "stop", "missing_language"),
    (json.dumps({**_reply(2), "ko": _reply(1)["ko"]}), "stop", "turn_count"),
    (json.dumps({**_reply(2), "zh": _reply(2)["en"]}), "stop", "wrong_language"),
    (json.dumps({**_reply(2), "en": [{"question": "", "answer": "x"}] * 2}), "stop", "empty_text"),
    (json.dumps(_reply(2))[:40], "length", "truncated"),
])
def test_reply_rejects_have_reasons(text, finish, reason):
    with pytest.raises(RejectError) as e:
        reply_to_record(text, finish, image_id=1, image="a.jpg", mvif_type="object", turns=2)
    assert e.value.reason == reason


def test_messages_carry_system_seeds_and_image():
    seeds = [{"main_objects": ["cup"], "description": "d", "reply": _reply(2)}] * 2
    msgs = build_messages("object", "data:image/jpeg;base64,AAAA", ["cup", "plate"], 2, seeds, [None, None])
    assert msgs[0] == {"role": "system", "content": SYSTEM_MESSAGES["object"]}
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "user", "assistant", "user"]
    last = msgs[-1]["content"]
    assert last[0]["image_url"]["url"].startswith("data:image/jpeg;base64,")
    assert "Main objects: cup, plate" in last[1]["text"] and "exactly 2 question-answer pairs" in last[1]["text"]
    assert DEFAULT_TURNS["conversation"] == 8


def test_jsonl_store_drops_torn_tail_and_locks(tmp_path):
    path = tmp_path / "o.jsonl"
    with JsonlWriter(path) as w:
        w.write({"id": "a"})
        w.write({"id": "b"})
        with pytest.raises(RuntimeError, match="locked"):
            JsonlWriter(path)
    with open(path, "a") as f:
        f.write('{"id": "c", "conv')  # killed mid-write
    assert [r["id"] for r in read_jsonl(path)] == ["a", "b"]
    with JsonlWriter(path) as w:
        w.write({"id": "c"})
    assert [r["id"] for r in read_jsonl(path)] == ["a", "b", "c"]
    path.write_text('{"id": 1}\nnot json\n{"id": 2}\n')
    with pytest.raises(ValueError, match=":2: corrupt"):
        list(read_jsonl(path))
