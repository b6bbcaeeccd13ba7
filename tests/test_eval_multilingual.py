"""Multilingual POPE parsing, POPE's per-split headline, the instruction rule, and answer files that record
(and refuse to mix) the checkpoint that wrote them. Expected values are worked out by hand."""

import json

import pytest

from xllava_jax.eval.benchmarks import build_questions, with_instruction
from xllava_jax.eval.registry import get_benchmark
from xllava_jax.eval.metrics import pope_answer, pope_metrics
from xllava_jax.eval.runner import evaluate, score_answers
from xllava_jax.infer.answers import check_same_checkpoint
from xllava_jax.infer.generate import GenerationConfig
from xllava_jax.infer.loading import load_model, load_tokenizer_for

PHRASINGS = [  # (lang, answer, parsed): how models really answer "Is there a dog in the image?"
    ("ko", "아니요, 이미지에 개가 없습니다.", "no"), ("ko", "네, 개가 있습니다.", "yes"), ("ko", "이미지에 개는 없습니다.", "no"),
    ("ko", "아니오.", "no"), ("ko", "있습니다", "yes"), ("ko", "NO", "no"), ("ko", "잘 모르겠어요", None),
    ("zh", "不是。", "no"), ("zh", "否", "no"), ("zh", "没有，图中没有狗。", "no"), ("zh", "是的，图中有一只狗。", "yes"),
    ("zh", "有。", "yes"),
    ("ja", "いいえ、犬はいません。", "no"), ("ja", "はい、います。", "yes"), ("ja", "犬はいません", "no"), ("ja", "あります。", "yes"),
    ("de", "Nein, es gibt keinen Hund.", "no"), ("de", "Ja, ein Hund ist zu sehen.", "yes"),
    ("de", "Auf dem Bild ist kein Hund.", "no"), ("de", "Vielleicht", None),
    ("fr", "Non, il n'y a pas de chien.", "no"), ("fr", "Oui, il y a un chien.", "yes"), ("fr", "Il n'y a pas de chien.", "no"),
    ("es", "No, no hay ningún perro.", "no"), ("es", "Sí, hay un perro.", "yes"), ("es", "SÍ", "yes"),
    ("ru", "Нет, на изображении нет собаки.", "no"), ("ru", "Да, есть собака.", "yes"), ("ru", "Собаки не видно.", "no"),
    ("ar", "لا، لا يوجد كلب في الصورة.", "no"), ("ar", "نعم، يوجد كلب.", "yes"),
    ("pt", "Não, não há cachorro.", "no"), ("pt", "Sim, há um cachorro.", "yes"),
    ("vi", "Không, không có con chó nào.", "no"), ("vi", "Có, có một con chó.", "yes"), ("vi", "Vâng.", "yes"),
    ("th", "ไม่มีสุนัขในภาพ", "no"), ("th", "ไม่ใช่ครับ", "no"), ("th", "ใช่ครับ มีสุนัข", "yes"), ("th", "มีค่ะ", "yes"),
    # English keeps LLaVA's exact rule: "NO" and "Nope" are not among its words, so they read as yes
    ("en", "No, there is not.", "no"), ("en", "There is not a dog.", "no"), ("en", "NO", "yes"), ("en", "Nope", "yes"),
]


@pytest.mark.parametrize("lang,text,parsed", PHRASINGS)
def test_pope_answer_reads_real_phrasings_in_each_language(lang, text, parsed):
    assert pope_answer(text, lang) == parsed


def test_pope_answer_unknown_language_is_a_clear_error():
    with pytest.raises(ValueError, match="no yes/no lexicon for language 'xx'"):
        pope_answer("da", "xx")


def test_pope_metrics_count_unparsed_as_wrong_and_report_them():
    preds = ["네, 있습니다.", "아니요, 없습니다.", "잘 모르겠어요", "NO"]
    labels = ["yes", "no", "yes", "no"]
    # by hand: TP=1 (네), TN=2 (아니요, NO), FN=1 (unparsed on a yes label), FP=0
    m = pope_metrics(preds, labels, "ko")
    assert m == {"accuracy": 0.75, "precision": 1.0, "recall": 0.5, "f1": pytest.approx(2 / 3), "yes_ratio": 0.25,
                 "unparsed": 1}
    # unparsed on a 'no' label is a false positive: TP=0, FP=1 -> precision 0
    assert pope_metrics(["??"], ["no"], "ko")["precision"] == 0.0
    assert pope_metrics(["아니요"], ["no"], ["ko"])["accuracy"] == 1.0  # one language per answer also works


def test_pope_headline_is_the_mean_of_the_splits_pooled_in_details():
    rows = [("random", "yes", "Yes"), ("random", "yes", "No"), ("random", "no", "No"), ("random", "no", "No"),
            ("adversarial", "yes", "Yes"), ("adversarial", "no", "Yes"), ("adversarial", "no", "Yes")]
    records = [{"question_id": i, "text": "Is there a dog?", "label": lab, "category": cat}
               for i, (cat, lab, _) in enumerate(rows)]
    s = score_answers(get_benchmark("pope"), build_questions(get_benchmark("pope"), records),
                      {i: p for i, (_, _, p) in enumerate(rows)})
    # random: TP1 FN1 TN2 -> P 1, R 1/2, F1 2/3, acc 3/4; adversarial: TP1 FP2 -> P 1/3, R 1, F1 1/2, acc 1/3
    assert s["score"] == pytest.approx((2 / 3 + 1 / 2) / 2)  # 7/12 = 0.5833
    assert s["overall"]["accuracy"] == pytest.approx((3 / 4 + 1 / 3) / 2)
    assert s["overall"]["pooled"]["f1"] == pytest.approx(4 / 7)  # TP2 FP2 FN1: P 1/2, R 2/3
    assert s["overall"]["by_category"]["adversarial"]["precision"] == pytest.approx(1 / 3)


def test_multilingual_pope_parses_each_language():
    records = [{"question_id": "q", "text": {"en": "Is there a dog?", "ko": "개가 있나요?", "zh": "有狗吗？"},
                "label": "no", "category": "random"}]
    bench = get_benchmark("pope")
    questions = build_questions(bench, records)
    s = score_answers(bench, questions, {"q_en": "No.", "q_ko": "아니요, 없습니다.", "q_zh": "不是"})
    assert all(v["accuracy"] == 1.0 and v["unparsed"] == 0 for v in s["by_language"].values())


@pytest.mark.parametrize("text", ["Is it red?\nAnswer the question using a single word or phrase.",
                                  "Is it red? Answer the question using a single word or phrase.",
                                  "Is it red?\nAnswer the question using  a single word or phrase.\n"])
def test_instruction_added_only_when_the_question_lacks_it(text):
    instruction = "Answer the question using a single word or phrase."
    assert with_instruction(text, instruction) == text
    assert with_instruction("Is it red?", instruction) == "Is it red?\n" + instruction
    [q] = build_questions(get_benchmark("gqa"), [{"question_id": 1, "text": text, "answer": "yes"}])
    assert q.text.count("single word") == 1


@pytest.mark.slow
def test_answer_files_record_the_checkpoint_and_refuse_to_mix(tiny_llava_hf_dir, question_set, tmp_path):
    model, params = load_model(tiny_llava_hf_dir)
    tok = load_tokenizer_for(tiny_llava_hf_dir)
    records = [{"question_id": i, "image": f"img/{i}.png", "text": "Is there a cat?", "answer": "yes"}
               for i in range(2)]
    cfg = GenerationConfig(max_new_tokens=2, batch_size=2)
    out = tmp_path / "run"
    evaluate(model, params, tok, "gqa", records, image_root=str(question_set["image_root"]), config=cfg, out_dir=out,
             instruction="", checkpoint={"path": "/ckpt/a", "step": 5})
    first = [json.loads(x) for x in (out / "answers.jsonl").read_text().splitlines()]
    assert all(r["checkpoint"] == {"path": "/ckpt/a", "step": 5} for r in first)
    assert first[0]["generation"]["max_new_tokens"] == 2 and first[0]["generation"]["batch_size"] == 2
    with pytest.raises(ValueError, match="refusing to mix answers of different models"):
        evaluate(model, params, tok, "gqa", records, image_root=str(question_set["image_root"]), config=cfg,
                 out_dir=out, instruction="", checkpoint={"path": "/ckpt/a", "step": 6})
    # fresh: the file is discarded and answered again by the new checkpoint
    evaluate(model, params, tok, "gqa", records, image_root=str(question_set["image_root"]), config=cfg, out_dir=out,
             instruction="", checkpoint={"path": "/ckpt/a", "step": 6}, fresh=True)
    again = [json.loads(x) for x in (out / "answers.jsonl").read_text().splitlines()]
    assert len(again) == 2 and all(r["checkpoint"]["step"] == 6 for r in again)
    # default identity: a fingerprint of the params, which any change to the weights alters
    evaluate(model, params, tok, "gqa", records, image_root=str(question_set["image_root"]), config=cfg,
             out_dir=tmp_path / "fp", instruction="")
    changed = dict(params)
    key = next(iter(changed))
    import jax
    changed[key] = jax.tree_util.tree_map(lambda x: x + 1, changed[key])
    with pytest.raises(ValueError, match="refusing to mix"):
        evaluate(model, changed, tok, "gqa", records, image_root=str(question_set["image_root"]), config=cfg,
                 out_dir=tmp_path / "fp", instruction="")


def test_answer_file_without_checkpoint_is_refused(tmp_path):
    path = tmp_path / "old.jsonl"
    path.write_text(json.dumps({"question_id": 1, "text": "yes"}) + "\n")
    with pytest.raises(ValueError, match="line 1"):
        check_same_checkpoint(path, {"params_fingerprint": "x"})
    check_same_checkpoint(tmp_path / "missing.jsonl", {"params_fingerprint": "x"})  # no file: fine


@pytest.mark.slow
def test_eval_run_defaults_to_the_checkpoints_training_template_and_instruction(tiny_llava_hf_dir, question_set,
                                                                                tmp_path, monkeypatch):
    import xllava_jax.eval.runner as runner

    import orbax.checkpoint as ocp

    from xllava_jax.checkpoint import MODEL_CONFIG, PARAMS, TRAIN_STATE
    from xllava_jax.data.templates import get_template as real_template
    from xllava_jax.eval.__main__ import main
    from xllava_jax.infer.prompts import trained_prompting
    from xllava_jax.models.params import config_to_dict

    model, params = load_model(tiny_llava_hf_dir)
    step = tmp_path / "work" / "checkpoints" / "7"
    with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as c:  # the items a training step writes
        c.save(step.absolute(), args=ocp.args.Composite(**{
            PARAMS: ocp.args.StandardSave(params), MODEL_CONFIG: ocp.args.JsonSave(config_to_dict(model.cfg)),
            TRAIN_STATE: ocp.args.JsonSave({"step": 7, "template": "plain", "instruction": ""})}))
    assert trained_prompting(tmp_path / "work") == {"template": "plain", "instruction": ""}
    assert trained_prompting(tiny_llava_hf_dir) == {}
    used = []
    monkeypatch.setattr(runner, "get_template", lambda name: used.append(name) or real_template(name))
    data = tmp_path / "gqa.jsonl"
    data.write_text(json.dumps({"question_id": 1, "image": "img/0.png", "text": "Is it red?", "answer": "yes"}) + "\n")
    assert main(["run", "--checkpoint", str(tmp_path / "work"), "--tokenizer", str(tiny_llava_hf_dir), "--benchmark",
                 "gqa", "--data", str(data), "--image_root", str(question_set["image_root"]), "--out",
                 str(tmp_path / "out"), "--max_new_tokens", "2", "--no_progress"]) == 0
    [answer] = [json.loads(x) for x in (tmp_path / "out" / "answers.jsonl").read_text().splitlines()]
    assert used == ["plain"]  # the trained template
    assert answer["prompt"] == "Is it red?"  # the trained instruction ("" = none), not the benchmark's
    assert answer["checkpoint"]["path"] == str(step.absolute()) and answer["checkpoint"]["step"] == 7


def test_translated_benchmark_end_to_end_ten_languages(fake_openai, fake_api_env, tiny_llava_hf_dir, question_set,
                                                       tmp_path, capsys):
    """LRM-LLaVA's recipe: `datagen translate` a POPE file into 9 languages (fake server), `eval run` scores every
    language and prints the 10-language table with the non-English average."""
    from xllava_jax.datagen.__main__ import main as datagen
    from xllava_jax.eval.__main__ import main as eval_main

    fake_api_env(fake_openai())
    langs = ("ko", "zh", "ja", "de", "fr", "es", "ru", "ar", "pt")
    src = tmp_path / "pope.jsonl"
    src.write_text("".join(json.dumps({"question_id": i, "image": f"img/{i % 4}.png", "text": "Is there a cat?",
                                       "label": "yes" if i % 2 else "no", "category": "random"}) + "\n"
                           for i in range(2)))
    ml = tmp_path / "pope_ml.jsonl"
    assert datagen(["translate", "--input", str(src), "--out", str(ml), "--kind", "questions", "--langs",
                    ",".join(langs), "--no_progress"]) == 0
    capsys.readouterr()
    out = tmp_path / "run"
    assert eval_main(["run", "--checkpoint", str(tiny_llava_hf_dir), "--benchmark", "pope", "--data", str(ml),
                      "--image_root", str(question_set["image_root"]), "--out", str(out), "--max_new_tokens", "2",
                      "--batch_size", "8", "--no_progress"]) == 0
    captured = capsys.readouterr()
    scores = json.loads(captured.out.strip().splitlines()[-1])
    assert sorted(scores["per_language"]) == sorted(("en", *langs)) and scores["questions"] == 20
    others = [v for k, v in scores["per_language"].items() if k != "en"]
    assert scores["non_english_avg"] == pytest.approx(sum(others) / 9)
    table = (out / "languages.md").read_text()
    assert table.splitlines()[0] == "| f1 | en | ar | de | es | fr | ja | ko | pt | ru | zh | non-en avg |"
    assert table in captured.err
