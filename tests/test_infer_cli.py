"""The chat and generate CLIs on a tiny HF LLaVA checkpoint with a real SentencePiece tokenizer."""

import io
import json

import pytest

from xllava_jax.data.templates import get_template
from xllava_jax.jsonl import read_jsonl
from xllava_jax.infer.__main__ import main
from xllava_jax.infer.generate import Engine, GenerationConfig
from xllava_jax.infer.loading import load_model, load_tokenizer_for
from xllava_jax.infer.prompts import load_image, question_prompt

COMMON = ["--max_new_tokens", "6", "--batch_size", "2"]


def run_cli(argv, monkeypatch, capsys, stdin=""):
    monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    assert main(argv) == 0
    return capsys.readouterr().out


def test_chat_streams_answers_over_several_turns_in_any_language(tiny_llava_hf_dir, question_set, monkeypatch,
                                                                 capsys):
    image = question_set["image_root"] / "img" / "0.png"
    out = run_cli(["chat", "--checkpoint", str(tiny_llava_hf_dir), "--image", str(image), *COMMON],
                  monkeypatch, capsys, stdin="What is this?\n\n사진에 무엇이 있습니까?\n/exit\nnever read\n")
    answers = [line[len("ASSISTANT: "):] for line in out.splitlines() if line.startswith("ASSISTANT: ")]
    assert len(answers) == 2
    # the first streamed answer equals a plain (non-streamed) generation of the same prompt
    model, params = load_model(tiny_llava_hf_dir)
    tok = load_tokenizer_for(tiny_llava_hf_dir)
    ids = question_prompt(tok, get_template("vicuna_v1"), "What is this?", True, model.cfg.num_image_tokens)
    want = Engine(model, params, tok).generate([ids], [[load_image(str(image), None, 56)]],
                                               GenerationConfig(max_new_tokens=6, batch_size=1))[0]
    assert answers[0] == want.text


@pytest.mark.slow
def test_generate_writes_llava_answers_and_resumes_after_a_torn_line(tiny_llava_hf_dir, question_set, tmp_path,
                                                                     monkeypatch, capsys):
    out = tmp_path / "answers.jsonl"
    argv = ["generate", "--checkpoint", str(tiny_llava_hf_dir), "--questions", str(question_set["questions"]),
            "--image_root", str(question_set["image_root"]), "--out", str(out), "--model_id", "tiny", *COMMON]
    summary = json.loads(run_cli(argv, monkeypatch, capsys).strip().splitlines()[-1])
    assert summary["answered_now"] == 5
    first = list(read_jsonl(out))
    assert [r["question_id"] for r in first] == [f"q{i}" for i in range(5)]
    assert set(first[0]) >= {"question_id", "prompt", "text", "answer_id", "model_id"}
    assert first[1]["prompt"] == "사진에 무엇이 있습니까?" and first[0]["model_id"] == "tiny"
    lines = out.read_bytes().split(b"\n")
    out.write_bytes(b"\n".join(lines[:3]) + b"\n" + lines[3][:10])  # q0..q2 whole, q3 torn mid-line
    summary = json.loads(run_cli(argv, monkeypatch, capsys).strip().splitlines()[-1])
    assert summary["answered_now"] == 2
    again = list(read_jsonl(out))
    assert [r["question_id"] for r in again] == [f"q{i}" for i in range(5)]
    assert [r["text"] for r in again] == [r["text"] for r in first]  # greedy: the same answers


@pytest.mark.slow
def test_orbax_checkpoint_needs_a_tokenizer_flag(tiny_llava_hf_dir, question_set, tmp_path, monkeypatch, capsys):
    from xllava_jax.checkpoint import save_params
    model, params = load_model(tiny_llava_hf_dir)
    ckpt = save_params(tmp_path / "ckpt", params, model.cfg)
    argv = ["generate", "--checkpoint", str(ckpt), "--questions", str(question_set["questions"]),
            "--image_root", str(question_set["image_root"]), "--out", str(tmp_path / "a.jsonl"), *COMMON]
    assert main(argv) == 2  # a user error: one line, exit 2
    assert "--tokenizer" in capsys.readouterr().err.strip().splitlines()[-1]
    run_cli([*argv, "--tokenizer", str(tiny_llava_hf_dir / "tokenizer.model"), "--no_progress"], monkeypatch, capsys)
    assert len(list(read_jsonl(tmp_path / "a.jsonl"))) == 5


def test_missing_image_is_named(tiny_llava_hf_dir, tmp_path, monkeypatch, capsys):
    q = tmp_path / "q.jsonl"
    q.write_text(json.dumps({"question_id": 1, "image": "nope.png", "text": "hi"}) + "\n")
    assert main(["generate", "--checkpoint", str(tiny_llava_hf_dir), "--questions", str(q), "--image_root",
                 str(tmp_path), "--out", str(tmp_path / "a.jsonl"), *COMMON]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("error: cannot read image") and "nope.png" in last
