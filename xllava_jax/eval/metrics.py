"""Benchmark metrics matching LLaVA's evaluation code (docs/reference.md).

- ``normalize_answer``: EvalAI / VQA answer normalization as LLaVA's ``EvalAIAnswerProcessor``
  (lower case; drop ``,`` ``?``; split ``'s``; punctuation removed or spaced; periods not
  between digits dropped; number words zero..ten -> digits; articles dropped; EvalAI's
  contraction table).
- ``vqa_accuracy``: mean over the 10 leave-one-annotator-out subsets of min(1, matches/3).
- ``gqa_match``: ``pred.rstrip('.').lower()`` exact match (LLaVA's GQA conversion).
- ``pope_answer`` / ``pope_metrics``: LLaVA's POPE parsing for English (first sentence, commas
  removed, "No"/"not"/"no" -> no, else yes); a yes/no lexicon per language for the others
  (unmatched -> unparsed, counted wrong); then accuracy, precision, recall, F1, yes-ratio.
- ``mmbench_match`` / ``mmbench_circular``: MMBench's own rule-based answer matcher (its evaluation script's
  ``can_infer``: a lone option letter A-E, bare or in one of its punctuation frames, else exactly one option
  text inside the answer) and CircularEval over the TSV's circular copies (a question, ``index mod 10^6``,
  counts when every copy is right; an answer the rules cannot read is what MMBench asks ChatGPT about:
  reported as unresolved).
"""

from __future__ import annotations

import re
from typing import Any, Iterable, Mapping, Sequence

# EvalAI contraction forms; each maps every spelling with exactly one apostrophe removed to itself.
_CONTRACTION_FORMS = (
    "ain't aren't can't could've couldn't couldn't've didn't doesn't don't hadn't hadn't've hasn't haven't "
    "he'd he'd've he's how'd how'll how's isn't it'd it'd've it'll ma'am mightn't mightn't've might've mustn't "
    "must've needn't not've o'clock oughtn't 'ow's'at shan't she'd've should've shouldn't shouldn't've "
    "somebody'd've somebody'll somebody's someone'd someone'd've someone'll someone's something'd "
    "something'd've something'll that's there'd there'd've there're there's they'd they'd've they'll they're "
    "they've 'twas wasn't we'd've we've weren't what'll what're what's what've when's where'd where's where've "
    "who'd who'd've who'll who's who've why'll why're why's won't would've wouldn't wouldn't've y'all y'all'll "
    "y'all'd've you'd you'd've you'll you're you've"
).split()


def _contractions() -> dict[str, str]:
    """Map from each one-apostrophe-dropped spelling to the contraction (EvalAI's table)."""
    table: dict[str, str] = {}
    for form in _CONTRACTION_FORMS:
        for i, ch in enumerate(form):
            if ch == "'":
                table[form[:i] + form[i + 1:]] = form
    table["somebody'd"] = "somebodyd"  # EvalAI's table has this entry reversed; kept for parity
    return table


CONTRACTIONS = _contractions()
NUMBER_WORDS = {w: str(i) for i, w in enumerate("zero one two three four five six seven eight nine ten".split())}
NUMBER_WORDS["none"] = "0"
ARTICLES = frozenset({"a", "an", "the"})
PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!")
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")  # EvalAI's (odd) lookbehind spelling, kept for parity
_COMMA_BETWEEN_DIGITS = re.compile(r"(?<=\d)(\,)+(?=\d)")


def _punctuation(text: str) -> str:
    """EvalAI punctuation rule: delete a mark next to a space (or if digits have commas), else space it."""
    out = text
    for p in PUNCTUATION:
        if p + " " in text or " " + p in text or _COMMA_BETWEEN_DIGITS.search(text):
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD_STRIP.sub("", out, re.UNICODE)  # EvalAI passes re.UNICODE as `count`: at most 32 periods go


def _digits_articles(text: str) -> str:
    """Number words to digits, articles dropped, contractions restored."""
    words = [NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    return " ".join(CONTRACTIONS.get(w, w) for w in words if w not in ARTICLES)


def normalize_answer(s: str) -> str:
    """EvalAI answer normalization (as LLaVA's EvalAIAnswerProcessor)."""
    s = s.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    s = s.replace("\n", " ").replace("\t", " ").strip()
    return _digits_articles(_punctuation(s))


def vqa_accuracy(pred: str, gt_answers: Sequence[str]) -> float:
    """VQA accuracy: mean over leave-one-out annotator subsets of min(1, #matches / 3), after normalization."""
    if not gt_answers:
        raise ValueError("vqa_accuracy needs at least one ground-truth answer")
    p = normalize_answer(pred)
    gts = [normalize_answer(a) for a in gt_answers]
    scores = [min(1.0, sum(g == p for j, g in enumerate(gts) if j != i) / 3.0) for i in range(len(gts))]
    return sum(scores) / len(scores)


def gqa_match(pred: str, gt: str) -> bool:
    """GQA exact match of ``pred.rstrip('.').lower()`` against the (lower-cased) answer."""
    return pred.strip().rstrip(".").lower() == gt.strip().lower()


def pope_answer_en(text: str) -> str:
    """LLaVA's POPE parsing: first sentence, commas removed; 'No'/'not'/'no' among the words -> 'no', else 'yes'."""
    if "." in text:
        text = text.split(".")[0]
    words = text.replace(",", "").split(" ")
    return "no" if ("No" in words or "not" in words or "no" in words) else "yes"


# Yes/no lexicons per language (matched case-insensitively in the answer's first clause; "no" wins).
# Space-separated languages match whole words; the others (ko, zh, ja, th) match substrings.
# English words are accepted in every language (models often answer "No." to a translated question).
_EN_WORDS = ({"no", "not", "none", "nope"}, {"yes", "yeah", "yep"})
POPE_LEXICONS: dict[str, tuple[frozenset[str], frozenset[str]]] = {  # lang -> (no markers, yes markers)
    "de": (frozenset({"nein", "nicht", "kein", "keine", "keinen", "keiner", "nichts"}), frozenset({"ja", "doch", "jawohl"})),
    "fr": (frozenset({"non", "pas", "aucun", "aucune", "n'y", "ni"}), frozenset({"oui", "si"})),
    "es": (frozenset({"no", "ningún", "ninguna", "ninguno", "nada"}), frozenset({"sí", "si", "claro"})),
    "pt": (frozenset({"não", "nao", "nenhum", "nenhuma", "nada"}), frozenset({"sim", "claro"})),
    "ru": (frozenset({"нет", "не", "никаких", "ни"}), frozenset({"да", "есть", "конечно"})),
    "ar": (frozenset({"لا", "كلا", "ليس", "ليست", "لم", "لن"}), frozenset({"نعم", "أجل", "بلى", "اجل"})),
    "vi": (frozenset({"không", "khong", "chẳng", "chưa", "ko"}), frozenset({"có", "vâng", "đúng", "phải", "dạ", "co"})),
    "ko": (frozenset({"아니", "없", "않", "못"}), frozenset({"네", "예", "있", "맞", "그렇"})),
    "zh": (frozenset({"不", "否", "没", "沒", "无", "無"}), frozenset({"是", "有", "对", "對", "确实", "確實"})),
    "ja": (frozenset({"いいえ", "いや", "ない", "ません", "無い", "なし"}),
           frozenset({"はい", "ええ", "ある", "あり", "いる", "います", "そう"})),
    "th": (frozenset({"ไม่"}), frozenset({"ใช่", "มี", "ครับ", "ค่ะ"})),
}
_SUBSTRING_LANGS = frozenset({"ko", "zh", "ja", "th"})
_CLAUSE_END = re.compile(r"[.。．!！?？,，、;；:：\n،؟]")
_WORD_EDGE = re.compile(r"^[\"'“”«»¿¡()\[\]*]+|[\"'“”«»()\[\]*]+$")


def pope_answer(text: str, lang: str = "en") -> str | None:
    """'yes', 'no' or None (unparsed) for a POPE answer in `lang`; English keeps LLaVA's exact rule (never None)."""
    lang = (lang or "en").split("-")[0].lower()
    if lang == "en":
        return pope_answer_en(text)
    if lang not in POPE_LEXICONS:
        raise ValueError(f"no yes/no lexicon for language {lang!r}; known: en, {', '.join(sorted(POPE_LEXICONS))}")
    no, yes = POPE_LEXICONS[lang]
    clause = _CLAUSE_END.split(text.strip().casefold(), maxsplit=1)[0]
    words = {_WORD_EDGE.sub("", w) for w in clause.split()}
    if words & (no | _EN_WORDS[0]) or (lang in _SUBSTRING_LANGS and any(m in clause for m in no)):
        return "no"
    if words & (yes | _EN_WORDS[1]) or (lang in _SUBSTRING_LANGS and any(m in clause for m in yes)):
        return "yes"
    return None


def _ratio(num: float, den: float) -> float:
    """num / den, 0.0 when den is 0."""
    return num / den if den else 0.0


def pope_metrics(preds: Sequence[str], labels: Sequence[str], lang: str | Sequence[str] = "en") -> dict[str, float]:
    """Accuracy, precision, recall, F1, yes-ratio ('yes' positive) and the count of unparsed answers.

    `lang` is one language or one per answer. An unparsed answer counts as wrong: as a 'no' for a 'yes'
    label (false negative) and as a 'yes' for a 'no' label (false positive); it is not in the yes-ratio.
    """
    if len(preds) != len(labels):
        raise ValueError(f"pope_metrics: {len(preds)} predictions but {len(labels)} labels")
    langs = [lang] * len(preds) if isinstance(lang, str) else list(lang)
    if len(langs) != len(preds):
        raise ValueError(f"pope_metrics: {len(preds)} predictions but {len(langs)} languages")
    parsed = [pope_answer(x, la) for x, la in zip(preds, langs)]
    y = [str(l).strip().lower() != "no" for l in labels]
    p = [(a == "yes") if a is not None else (not b) for a, b in zip(parsed, y)]
    tp = sum(a and b for a, b in zip(p, y))
    fp = sum(a and not b for a, b in zip(p, y))
    tn = sum(not a and not b for a, b in zip(p, y))
    fn = sum(not a and b for a, b in zip(p, y))
    precision, recall = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    return {"accuracy": _ratio(tp + tn, len(p)), "precision": precision, "recall": recall,
            "f1": _ratio(2 * precision * recall, precision + recall),
            "yes_ratio": _ratio(sum(a == "yes" for a in parsed), len(p)), "unparsed": sum(a is None for a in parsed)}


MMBENCH_LETTERS = "ABCDE"  # the letters MMBench's matcher looks for, whatever the number of options
MMBENCH_REJECTIONS = ("Failed to obtain answer via API",)
_MMBENCH_FRAMES = (("", "."), ("", ","), ("", ":"), ("", ")"), ("", ")."), ("(", ")"), ("(", ")."), (":", ""),
                   (":", ","), (":", "."), (":", ")"), (":", ")."))


def mmbench_letter(answer: str) -> str | None:
    """MMBench's can_infer_option: the one letter A-E that is a whitespace-separated word of the answer (unless
    "A" is such a word of a longer answer: then maybe the article), else the one letter in a punctuation frame
    ("B.", "(C)", ":D", ...) when exactly one letter appears in that frame."""
    if any(r in answer for r in MMBENCH_REJECTIONS):
        return None
    splits = [x.strip() for x in answer.split()]
    if sum(c in splits for c in MMBENCH_LETTERS) == 1 and not ("A" in splits and len(splits) > 3):
        return next(c for c in MMBENCH_LETTERS if c in splits)
    for pre, post in _MMBENCH_FRAMES:
        framed = [c for c in MMBENCH_LETTERS if pre + c + post in splits]
        if len(framed) == 1:
            return framed[0]
    return None


def mmbench_match(answer: str, options: Mapping[str, str]) -> str | None:
    """MMBench's rule-based matcher (can_infer): the option letter, else the one option whose text (lower-cased)
    is inside the lower-cased answer; None when the rules cannot tell (MMBench then asks ChatGPT)."""
    letter = mmbench_letter(answer)
    if letter:
        return letter
    low = answer.lower()
    found = [k for k, v in options.items() if str(v).lower() in low]
    return found[0] if len(found) == 1 else None


MMBENCH_CIRCULAR_OFFSET = 1_000_000  # circular copies of question i are rows i + k * 10^6


def mmbench_circular(results: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """CircularEval: results carry ``index`` (a TSV row), ``pred`` (letter or None) and ``answer``; a question
    (index mod 10^6) is right when every copy is; one read wrong makes it wrong; otherwise one unread copy leaves
    it unresolved (counted wrong in ``accuracy``, right in ``accuracy_if_unresolved_right``)."""
    groups: dict[int, list[tuple[Any, Any]]] = {}
    for r in results:
        groups.setdefault(int(r["index"]) % MMBENCH_CIRCULAR_OFFSET, []).append((r.get("pred"), r["answer"]))
    wrong = {g for g, rows in groups.items() if any(p is not None and p != a for p, a in rows)}
    unresolved = {g for g, rows in groups.items() if g not in wrong and any(p is None for p, _ in rows)}
    right = len(groups) - len(wrong) - len(unresolved)
    return {"accuracy": _ratio(right, len(groups)), "questions": len(groups), "unresolved": len(unresolved),
            "accuracy_if_unresolved_right": _ratio(right + len(unresolved), len(groups)),
            "unresolved_questions": sorted(unresolved)}


def language_summary(scores: Mapping[str, float], english: str = "en") -> dict[str, Any]:
    """Per-language scores plus the non-English average and the all-language average (LRM-LLaVA style)."""
    others = [v for k, v in scores.items() if k != english]
    return {"per_language": dict(scores),
            "non_english_avg": sum(others) / len(others) if others else None,
            "avg": sum(scores.values()) / len(scores) if scores else None}


def language_table(summary: Mapping[str, Any], metric: str, english: str = "en") -> str:
    """Markdown table of a `language_summary`: one column per language (English first), then the non-English
    average (LRM-LLaVA's table layout); then the language of the instruction lines when `summary` records it."""
    langs = sorted(summary["per_language"], key=lambda k: (k != english, k))
    avg = summary["non_english_avg"]
    cells = [f"{summary['per_language'][k]:.4f}" for k in langs] + ["-" if avg is None else f"{avg:.4f}"]
    return (f"| {metric} | " + " | ".join(langs) + " | non-en avg |\n|" + "---|" * (len(langs) + 2) + "\n"
            + "| score | " + " | ".join(cells) + " |\n"
            + (f"\ninstruction line: {summary['instruction_lang']}\n" if summary.get("instruction_lang") else ""))
