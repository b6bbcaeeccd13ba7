"""Checking an HF export: re-import it and compare logits with the source params; where torch is
installed, also load it with transformers and compare its logits."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from xllava_jax.models.llava import Llava


def max_abs_diff(a: Any, b: Any) -> float:
    """max |a - b| in float64."""
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def llava_logits(model: Llava, params: dict, inputs: dict[str, np.ndarray]) -> np.ndarray:
    """Our logits [B, T, V] for {input_ids, pixel_values, attention_mask}."""
    return np.asarray(model.apply({"params": params}, **inputs), np.float32)


def transformers_llava_logits(hf_dir: str | os.PathLike, inputs: dict[str, np.ndarray]) -> np.ndarray | None:
    """transformers' LlavaForConditionalGeneration logits of an HF directory (None without torch)."""
    try:
        import torch
    except ImportError:
        return None
    import transformers
    hf = transformers.LlavaForConditionalGeneration.from_pretrained(str(hf_dir), dtype=torch.float32,
                                                                    local_files_only=True).eval()
    with torch.no_grad():
        out = hf(input_ids=torch.from_numpy(np.asarray(inputs["input_ids"], np.int64)),
                 pixel_values=torch.from_numpy(np.asarray(inputs["pixel_values"], np.float32)).permute(0, 3, 1, 2),
                 attention_mask=torch.from_numpy(np.asarray(inputs["attention_mask"], np.int64)))
    return out.logits.float().numpy()


def verify_llava_export(model: Llava, params: dict, hf_dir: str | os.PathLike, inputs: dict[str, np.ndarray]
                        ) -> dict[str, Any]:
    """Logit differences of an exported LLaVA against `params` on `inputs`: re-imported into Flax, and
    loaded in transformers (None where torch is missing). Also the scale (max |logit|)."""
    from xllava_jax.convert.hf import load_hf_llava
    want = llava_logits(model, params, inputs)
    reimported, reimported_params = load_hf_llava(hf_dir)
    torch_logits = transformers_llava_logits(hf_dir, inputs)
    return {"max_abs_logit": float(np.max(np.abs(want))),
            "reimport_max_abs_diff": max_abs_diff(llava_logits(reimported, reimported_params, inputs), want),
            "transformers_max_abs_diff": None if torch_logits is None else max_abs_diff(torch_logits, want)}


def question_messages(text: str, has_image: bool) -> list[dict]:
    """A one-question conversation in transformers' chat format (the image first, as LLaVA places it)."""
    content = ([{"type": "image"}] if has_image else []) + [{"type": "text", "text": text}]
    return [{"role": "user", "content": content}]


def processor_answers(hf_dir: str | os.PathLike, questions: list[tuple[str, Any]], max_new_tokens: int = 16,
                      batch_size: int = 16) -> tuple[list[list[int]], list[list[int]], list[str]]:
    """Prompt ids and greedy answers of an export used the standard way: AutoProcessor's chat template with
    add_generation_prompt, the processor on text + image, LlavaForConditionalGeneration.generate.

    `questions`: (text, PIL image or None). Prompts are left-padded in batches. Returns (prompt ids unpadded,
    generated ids up to the first EOS, answer texts).
    """
    import torch
    import transformers
    processor = transformers.AutoProcessor.from_pretrained(str(hf_dir), local_files_only=True)
    model = transformers.LlavaForConditionalGeneration.from_pretrained(str(hf_dir), dtype=torch.float32,
                                                                       local_files_only=True).eval()
    tok = processor.tokenizer
    tok.padding_side = "left"
    all_ids: list[list[int]] = []
    generated: list[list[int]] = []
    answers: list[str] = []
    for start in range(0, len(questions), batch_size):
        batch = questions[start:start + batch_size]
        prompts = [processor.apply_chat_template(question_messages(t, img is not None), add_generation_prompt=True)
                   for t, img in batch]
        images = [img for _, img in batch if img is not None]
        inputs = processor(text=prompts, images=images or None, return_tensors="pt", padding=True)
        mask = inputs["attention_mask"].numpy().astype(bool)
        all_ids += [row[m].tolist() for row, m in zip(inputs["input_ids"].numpy(), mask)]
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                                 eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        for row in out[:, inputs["input_ids"].shape[1]:].tolist():
            cut = row.index(tok.eos_token_id) if tok.eos_token_id in row else len(row)
            generated.append(row[:cut])
            answers.append(tok.decode(row[:cut], skip_special_tokens=True).strip())
    return all_ids, generated, answers


def verify_processor(hf_dir: str | os.PathLike, questions: list[tuple[str, Any]], our_ids: list[list[int]],
                     our_answers: list[str], max_new_tokens: int = 16) -> dict[str, Any]:
    """The AutoProcessor path of an export against our engine on the same questions: how many prompts give
    our ids exactly, how many greedy answers equal ours, and the first mismatch of each (None: all equal)."""
    ids, _, answers = processor_answers(hf_dir, questions, max_new_tokens)
    id_diff = [i for i, (a, b) in enumerate(zip(ids, our_ids)) if list(a) != list(b)]
    answer_diff = [i for i, (a, b) in enumerate(zip(answers, our_answers)) if a != b.strip()]
    return {"questions": len(questions), "ids_equal": len(questions) - len(id_diff),
            "answers_equal": len(questions) - len(answer_diff),
            "first_id_mismatch": None if not id_diff else {"question": id_diff[0], "hf": ids[id_diff[0]],
                                                           "ours": list(our_ids[id_diff[0]])},
            "first_answer_mismatch": None if not answer_diff else {
                "question": answer_diff[0], "hf": answers[answer_diff[0]], "ours": our_answers[answer_diff[0]]},
            "answers": answers}
