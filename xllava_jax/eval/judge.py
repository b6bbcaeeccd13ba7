"""Preference evaluation (X-LLaVA section 6): a vision judge compares answers A and B for image + question.

Two protocols, recorded in the summary:
- ``xllava`` (default, the paper's): one order (A = model A), the image, the question and both answers, and the
  question whether Answer A is better, Answer B is better or both answers are similar; no system prompt and
  no further instructions. A -> win, B -> loss, similar -> tie.
- ``swap``: each question is judged twice, with the two models' answers in both positions, to cancel
the judge's position bias. From model A's side the two verdicts combine as: both orders
prefer A, or one prefers A and the other says similar -> win; the mirror -> loss;
both similar, or the orders disagree (each prefers whichever came first/second) -> tie.
The paper's 30-word runs limit the answers when they are generated (``infer generate --word_limit 30`` asks
each model for at most 30 words: "the answers were limited to 30 words", for GPT-4V's answers too);
``word_limit`` here instead cuts given answers to that many words (a word is a whitespace-separated token, or
one CJK character), for answers generated without the limit. Every ordered
judgement is cached on disk (key: judge model, prompt version, image bytes, question and
both answers), so a rerun sends no request. Outputs: ``judgements.jsonl``,
``summary.json`` (win/tie/loss counts and percentages, token counts), ``table.md`` and
``chart.png`` in the output directory.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import os
import re
from typing import Any, Mapping, Sequence

from tqdm import tqdm

from xllava_jax.openai_api import RejectError, extract_json
from xllava_jax.jsonl import JsonlWriter, read_jsonl
from xllava_jax.openai_api import ApiError, BudgetExceeded, ChatClient, image_data_url, run_concurrently, \
    text_message, user_message

JUDGE_PROMPT_VERSION = "v1"
PROTOCOLS = ("swap", "xllava")
XLLAVA_OUTCOME = {"A": "win", "B": "loss", "similar": "tie"}
JUDGE_SYSTEM = (
    "You are a fair judge of vision-language assistants. You see an image, a question about it, and two "
    "answers, A and B. Judge which answer is more helpful, accurate with respect to the image, relevant and "
    "detailed, and written fluently in the question's language. Do not let the order of the answers or their "
    "length alone decide. Answer A is better, Answer B is better, or both answers are similar."
)
OUTCOMES = ("win", "tie", "loss")
_WORD = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff]|[^\s\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff]+")
_PHRASES = (("A", re.compile(r"answer a is better", re.I)), ("B", re.compile(r"answer b is better", re.I)),
            ("similar", re.compile(r"\b(similar|tie)\b", re.I)))


def truncate_words(text: str, limit: int | None) -> str:
    """The text cut after ``limit`` words (whitespace tokens or single CJK characters)."""
    if not limit:
        return text
    for i, m in enumerate(_WORD.finditer(text)):
        if i == limit - 1:
            return text[: m.end()]
    return text


def xllava_prompt(question: str, answer_a: str, answer_b: str) -> str:
    """The paper's question to the judge: which answer is better, or are both similar (nothing else)."""
    return (f"[Question]\n{question}\n\n[Answer A]\n{answer_a}\n[End of Answer A]\n\n"
            f"[Answer B]\n{answer_b}\n[End of Answer B]\n\n"
            "Which answer is better? Reply 'Answer A is better', 'Answer B is better' or 'Both answers are similar'.")


def judge_prompt(question: str, answer_a: str, answer_b: str) -> str:
    """The user text shown to the judge (the image goes alongside it)."""
    return (f"[Question]\n{question}\n\n[Answer A]\n{answer_a}\n[End of Answer A]\n\n"
            f"[Answer B]\n{answer_b}\n[End of Answer B]\n\n"
            "Explain briefly, then end with one line of JSON: {\"verdict\": \"A\"} if Answer A is better, "
            "{\"verdict\": \"B\"} if Answer B is better, or {\"verdict\": \"similar\"} if both answers are similar.")


def parse_verdict(text: str) -> str | None:
    """'A', 'B' or 'similar' from a judge reply (the JSON line, else a unique stock phrase); None if unclear."""
    for line in reversed(text.strip().splitlines()):
        if "verdict" in line:
            try:
                v = extract_json(line)
            except RejectError:
                continue
            if isinstance(v, Mapping) and str(v.get("verdict", "")).strip() in ("A", "B", "similar"):
                return str(v["verdict"]).strip()
    found = {name for name, pat in _PHRASES if pat.search(text)}
    return found.pop() if len(found) == 1 else None


def combine(first: str, second: str) -> str:
    """Model A's outcome from verdicts with A shown first and A shown second (see module docstring)."""
    score = {"A": 1, "B": -1, "similar": 0}[first] + {"A": -1, "B": 1, "similar": 0}[second]
    return "win" if score > 0 else "loss" if score < 0 else "tie"


def cache_key(model: str, image_sha: str, question: str, answer_a: str, answer_b: str, protocol: str = "swap") -> str:
    """Stable key of one ordered judgement (the protocol's prompt is part of it)."""
    version = JUDGE_PROMPT_VERSION if protocol == "swap" else f"{JUDGE_PROMPT_VERSION}-{protocol}"
    blob = json.dumps([version, model, image_sha, question, answer_a, answer_b], ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def file_sha256(path: str) -> str:
    """SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def ask_judge(client: ChatClient, image_url: str, question: str, answer_a: str, answer_b: str,
              parse_retries: int = 2, protocol: str = "swap") -> dict[str, Any]:
    """One ordered judgement: {"verdict" (None if never parseable), "raw", token counts}."""
    if protocol == "xllava":
        messages = [user_message(xllava_prompt(question, answer_a, answer_b), [image_url])]
    else:
        messages = [text_message("system", JUDGE_SYSTEM),
                    user_message(judge_prompt(question, answer_a, answer_b), [image_url])]
    tokens = {"prompt_tokens": 0, "completion_tokens": 0}
    for attempt in range(parse_retries + 1):
        result = client.complete(messages, tag=f"parse_retry{attempt}" if attempt else "")
        tokens["prompt_tokens"] += result.prompt_tokens
        tokens["completion_tokens"] += result.completion_tokens
        verdict = parse_verdict(result.text)
        if verdict:
            break
    return {"verdict": verdict, "raw": result.text[:2000], **tokens}


@dataclasses.dataclass
class JudgeConfig:
    """One preference comparison of model A against model B."""

    questions: str
    answers_a: str
    answers_b: str
    image_root: str
    out_dir: str
    name_a: str = "A"
    name_b: str = "B"
    word_limit: int | None = None
    cache: str | None = None  # default: <out_dir>/judge_cache.jsonl
    parse_retries: int = 2
    progress: bool = True
    protocol: str = "xllava"  # "xllava" (the paper's single order) or "swap" (both orders)

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"judge protocol must be one of {PROTOCOLS}, got {self.protocol!r}")

    def orders(self, a: str, b: str) -> list[tuple[str, str]]:
        """The (first, second) answer orders asked for one question."""
        return [(a, b)] if self.protocol == "xllava" else [(a, b), (b, a)]

    @property
    def cache_path(self) -> str:
        """Where ordered judgements are cached."""
        return self.cache or os.path.join(self.out_dir, "judge_cache.jsonl")


def load_by_id(path: str, what: str) -> dict[str, dict[str, Any]]:
    """JSONL records keyed by str(question_id)."""
    out = {}
    for i, r in enumerate(read_jsonl(path), 1):
        if "question_id" not in r:
            raise ValueError(f"{path}:{i}: {what} record has no question_id")
        out[str(r["question_id"])] = r
    return out


def judge_question(client: ChatClient, cached: Mapping[str, dict], item: Mapping[str, Any], model: str,
                   cfg: JudgeConfig) -> dict[str, dict[str, Any]]:
    """The ordered judgements of one question, from the cache where possible: {cache key: judgement}."""
    out = {}
    url = None
    for a, b in cfg.orders(item["a"], item["b"]):
        key = cache_key(model, item["image_sha"], item["question"], a, b, cfg.protocol)
        if key in cached:
            out[key] = cached[key]
            continue
        url = url or image_data_url(item["image_path"])
        out[key] = {"key": key, **ask_judge(client, url, item["question"], a, b, cfg.parse_retries, cfg.protocol)}
    return out


def build_items(cfg: JudgeConfig) -> tuple[list[dict[str, Any]], list[str]]:
    """Questions answered by both models, with truncated answers and image hashes; plus skipped ids."""
    questions = load_by_id(cfg.questions, "question")
    ans_a, ans_b = load_by_id(cfg.answers_a, "answer"), load_by_id(cfg.answers_b, "answer")
    items, skipped, shas = [], [], {}
    for qid, q in questions.items():
        if qid not in ans_a or qid not in ans_b:
            skipped.append(qid)
            continue
        path = os.path.join(cfg.image_root, q["image"])
        if path not in shas:
            if not os.path.isfile(path):
                raise FileNotFoundError(f"question {qid}: image {path} not found")
            shas[path] = file_sha256(path)
        items.append({"question_id": qid, "question": q["text"].replace("<image>", "").strip(),
                      "image_path": path, "image_sha": shas[path],
                      "a": truncate_words(ans_a[qid]["text"], cfg.word_limit),
                      "b": truncate_words(ans_b[qid]["text"], cfg.word_limit)})
    return items, skipped


def run_judge(cfg: JudgeConfig, client: ChatClient) -> dict[str, Any]:
    """Judge every question both ways, write judgements, summary, table and chart; return the summary."""
    os.makedirs(cfg.out_dir, exist_ok=True)
    items, skipped = build_items(cfg)
    cached = {r["key"]: r for r in read_jsonl(cfg.cache_path) if r.get("verdict")}
    model = client.config.model
    rows, outcomes = [], collections.Counter()
    with JsonlWriter(cfg.cache_path) as cache, \
            tqdm(total=len(items), desc="judge", unit="question", disable=not cfg.progress) as bar:
        work = lambda it: judge_question(client, cached, it, model, cfg)  # noqa: E731
        for item, judged, err in run_concurrently(work, items, client.config.concurrency):
            bar.update(1)
            if isinstance(err, (ApiError, BudgetExceeded)):
                outcomes["error"] += 1
                continue
            if err is not None:
                raise err
            for key, j in judged.items():
                if key not in cached and j["verdict"]:
                    cache.write(j)
                    cached[key] = j
            verdicts = [judged[cache_key(model, item["image_sha"], item["question"], a, b, cfg.protocol)]["verdict"]
                        for a, b in cfg.orders(item["a"], item["b"])]
            first, second = verdicts[0], verdicts[1] if len(verdicts) > 1 else None
            if cfg.protocol == "xllava":
                outcome = XLLAVA_OUTCOME[first] if first else "invalid"
            else:
                outcome = combine(first, second) if first and second else "invalid"
            outcomes[outcome] += 1
            rows.append({"question_id": item["question_id"], "a_first": first, "b_first": second, "outcome": outcome})
    summary = summarize(cfg, outcomes, skipped, client, [cached[k] for k in cached])
    write_outputs(cfg, sorted(rows, key=lambda r: r["question_id"]), summary)
    return summary


def summarize(cfg: JudgeConfig, outcomes: Mapping[str, int], skipped: Sequence[str], client: ChatClient,
              cache_entries: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Counts, percentages (over judged questions) and token usage."""
    judged = sum(outcomes.get(o, 0) for o in OUTCOMES)
    return {
        "name_a": cfg.name_a, "name_b": cfg.name_b, "word_limit": cfg.word_limit, "protocol": cfg.protocol,
        "counts": {o: outcomes.get(o, 0) for o in OUTCOMES}, "judged": judged,
        "percent": {o: round(100.0 * outcomes.get(o, 0) / judged, 1) if judged else 0.0 for o in OUTCOMES},
        "invalid": outcomes.get("invalid", 0), "errors": outcomes.get("error", 0), "skipped": list(skipped),
        "run_api": client.stats.as_dict(),
        "cached_tokens": {k: sum(int(e.get(k, 0)) for e in cache_entries) for k in ("prompt_tokens", "completion_tokens")},
    }


def table_markdown(summaries: Sequence[Mapping[str, Any]]) -> str:
    """Win/tie/loss table, one row per comparison."""
    lines = ["| A | B | protocol | word limit | win | tie | loss | judged |", "|---|---|---|---|---|---|---|---|"]
    for s in summaries:
        c, p = s["counts"], s["percent"]
        lines.append(f"| {s['name_a']} | {s['name_b']} | {s.get('protocol', 'swap')} | {s['word_limit'] or '-'} | "
                     f"{c['win']} ({p['win']}%) | "
                     f"{c['tie']} ({p['tie']}%) | {c['loss']} ({p['loss']}%) | {s['judged']} |")
    return "\n".join(lines) + "\n"


def write_chart(summaries: Sequence[Mapping[str, Any]], path: str) -> None:
    """Horizontal stacked bars of win/tie/loss percentages, one bar per comparison (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{s['name_a']} vs {s['name_b']}" + (f" ({s['word_limit']} words)" if s["word_limit"] else "")
              + (f" [{s.get('protocol', 'swap')}]") for s in summaries]
    fig, ax = plt.subplots(figsize=(8, 1.2 + 0.6 * len(summaries)))
    left = [0.0] * len(summaries)
    for outcome, color in zip(OUTCOMES, ("#4c9f70", "#c8c8c8", "#d1605e")):
        vals = [s["percent"][outcome] for s in summaries]
        ax.barh(labels, vals, left=left, color=color, label=f"A {outcome}" if outcome != "tie" else "tie")
        for i, (l, v) in enumerate(zip(left, vals)):
            if v >= 6:
                ax.text(l + v / 2, i, f"{v:.0f}%", ha="center", va="center", fontsize=9)
        left = [l + v for l, v in zip(left, vals)]
    ax.set_xlim(0, 100)
    ax.set_xlabel("% of questions")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.35 - 0.05 * len(summaries)), ncol=3, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_comparison(summary_paths: Sequence[str], out_png: str) -> str:
    """One chart (PNG) and table of several judge runs' summary.json files, a bar per model pair; returns the
    table (markdown)."""
    summaries = []
    for path in summary_paths:
        with open(path, encoding="utf-8") as f:
            summaries.append(json.load(f))
    write_chart(summaries, out_png)
    return table_markdown(summaries)


def write_outputs(cfg: JudgeConfig, rows: Sequence[Mapping[str, Any]], summary: Mapping[str, Any]) -> None:
    """judgements.jsonl, summary.json, table.md and chart.png in the output directory."""
    with open(os.path.join(cfg.out_dir, "judgements.jsonl"), "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    with open(os.path.join(cfg.out_dir, "summary.json"), "w", encoding="utf-8") as f:
        json.dump(summary, f, ensure_ascii=False, indent=1)
    with open(os.path.join(cfg.out_dir, "table.md"), "w", encoding="utf-8") as f:
        f.write(table_markdown([summary]))
    write_chart([summary], os.path.join(cfg.out_dir, "chart.png"))
