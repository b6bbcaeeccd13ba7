"""Test-set submission files, written as LLaVA's scripts/convert_*_for_submission.py write them.

- VQAv2 test-dev: a JSON list ``[{"question_id", "answer"}]`` over every question of the test split, answers
  EvalAI-normalised, an unanswered question gets "" (convert_vqav2_for_submission.py).
- VizWiz test: a JSON list ``[{"image", "answer"}]``, answers EvalAI-normalised; every question must be answered
  (convert_vizwiz_for_submission.py).
- MMBench / MMBench-CN test: the benchmark TSV without the hint, category, source, image, comment and l2-category
  columns, with a ``prediction`` column (the raw answer) inserted as the 7th column, as ``.xlsx`` (what the
  leaderboard takes; written with the standard library) or ``.tsv`` (convert_mmbench_for_submission.py).
"""

from __future__ import annotations

import csv
import json
import os
import sys
import zipfile
from typing import Any, Sequence
from xml.sax.saxutils import escape

from xllava_jax.jsonl import read_jsonl
from xllava_jax.eval.metrics import normalize_answer

MMBENCH_DROPPED = ("hint", "category", "source", "image", "comment", "l2-category")
MMBENCH_PREDICTION_COLUMN = 6  # 0-based position LLaVA inserts the prediction column at


def answers_by_id(path: str | os.PathLike) -> dict[str, str]:
    """{str(question_id): text} of an answers JSONL."""
    return {str(r["question_id"]): r["text"] for r in read_jsonl(path) if "question_id" in r}


def _write_json(obj: Any, out: str | os.PathLike) -> None:
    """Write JSON, creating the parent directory."""
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        json.dump(obj, f)


def vqav2_submission(questions: Sequence[dict], answers: dict[str, str], out: str | os.PathLike) -> dict:
    """VQAv2 test-dev/test-std upload JSON; returns counts (unanswered questions get "")."""
    rows = [{"question_id": q["question_id"], "answer": normalize_answer(answers[str(q["question_id"])])
             if str(q["question_id"]) in answers else ""} for q in questions]
    _write_json(rows, out)
    return {"questions": len(rows), "unanswered": sum(str(q["question_id"]) not in answers for q in questions)}


def vizwiz_submission(questions: Sequence[dict], answers: dict[str, str], out: str | os.PathLike) -> dict:
    """VizWiz test upload JSON [{"image", "answer"}]; a question without an answer is an error naming it."""
    rows = []
    for q in questions:
        qid = str(q.get("question_id", q["image"]))
        if qid not in answers:
            raise ValueError(f"vizwiz: question {qid!r} has no answer (the upload needs every test question)")
        rows.append({"image": q["image"], "answer": normalize_answer(answers[qid])})
    _write_json(rows, out)
    return {"questions": len(rows)}


def mmbench_table(tsv: str | os.PathLike, answers: dict[str, str]) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of the MMBench upload: dropped columns removed, `prediction` inserted (the answer to the row,
    question id `<index>`); a row without an answer keeps an empty cell."""
    csv.field_size_limit(sys.maxsize)
    with open(tsv, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f, delimiter="\t")
        rows = list(reader)
        header = [c for c in reader.fieldnames or [] if c not in MMBENCH_DROPPED]
    header = header[:MMBENCH_PREDICTION_COLUMN] + ["prediction"] + header[MMBENCH_PREDICTION_COLUMN:]
    out = []
    for row in rows:
        pred = answers.get(str(row["index"]), "")
        out.append([pred if c == "prediction" else row.get(c, "") for c in header])
    return header, out


def _column(i: int) -> str:
    """Spreadsheet column letters of 0-based column i (0 -> A, 26 -> AA)."""
    name = ""
    i += 1
    while i:
        i, r = divmod(i - 1, 26)
        name = chr(65 + r) + name
    return name


def write_xlsx(header: Sequence[str], rows: Sequence[Sequence[Any]], out: str | os.PathLike) -> None:
    """A one-sheet .xlsx (inline strings; numbers stay numbers) with the standard library."""
    def cell(ref: str, value: Any) -> str:
        text = str(value)
        try:
            float(text)
            if text.strip() and text.strip().lower() not in ("nan", "inf", "-inf"):
                return f'<c r="{ref}"><v>{escape(text.strip())}</v></c>'
        except ValueError:
            pass
        return f'<c r="{ref}" t="inlineStr"><is><t xml:space="preserve">{escape(text)}</t></is></c>'

    sheet_rows = [f'<row r="{r + 1}">' + "".join(cell(f"{_column(c)}{r + 1}", v) for c, v in enumerate(values))
                  + "</row>" for r, values in enumerate([list(header), *map(list, rows)])]
    ns = "http://schemas.openxmlformats.org"
    files = {
        "[Content_Types].xml": (
            f'<?xml version="1.0" encoding="UTF-8"?><Types xmlns="{ns}/package/2006/content-types">'
            '<Default Extension="rels" ContentType="application/vnd.openxmlformats-package.relationships+xml"/>'
            '<Default Extension="xml" ContentType="application/xml"/>'
            '<Override PartName="/xl/workbook.xml" '
            'ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.sheet.main+xml"/>'
            '<Override PartName="/xl/worksheets/sheet1.xml" '
            'ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.worksheet+xml"/></Types>'),
        "_rels/.rels": (
            f'<?xml version="1.0" encoding="UTF-8"?><Relationships xmlns="{ns}/package/2006/relationships">'
            f'<Relationship Id="rId1" Type="{ns}/officeDocument/2006/relationships/officeDocument" '
            'Target="xl/workbook.xml"/></Relationships>'),
        "xl/workbook.xml": (
            f'<?xml version="1.0" encoding="UTF-8"?><workbook xmlns="{ns}/spreadsheetml/2006/main" '
            f'xmlns:r="{ns}/officeDocument/2006/relationships"><sheets>'
            '<sheet name="Sheet1" sheetId="1" r:id="rId1"/></sheets></workbook>'),
        "xl/_rels/workbook.xml.rels": (
            f'<?xml version="1.0" encoding="UTF-8"?><Relationships xmlns="{ns}/package/2006/relationships">'
            f'<Relationship Id="rId1" Type="{ns}/officeDocument/2006/relationships/worksheet" '
            'Target="worksheets/sheet1.xml"/></Relationships>'),
        "xl/worksheets/sheet1.xml": (
            f'<?xml version="1.0" encoding="UTF-8"?><worksheet xmlns="{ns}/spreadsheetml/2006/main"><sheetData>'
            + "".join(sheet_rows) + "</sheetData></worksheet>"),
    }
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        for name, text in files.items():
            z.writestr(name, text)


def mmbench_submission(tsv: str | os.PathLike, answers: dict[str, str], out: str | os.PathLike) -> dict:
    """MMBench(-CN) upload as .xlsx or .tsv (by `out`'s suffix)."""
    header, rows = mmbench_table(tsv, answers)
    if str(out).endswith(".tsv"):
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        with open(out, "w", encoding="utf-8", newline="") as f:
            writer = csv.writer(f, delimiter="\t")
            writer.writerow(header)
            writer.writerows(rows)
    elif str(out).endswith(".xlsx"):
        write_xlsx(header, rows, out)
    else:
        raise ValueError(f"mmbench submission {out}: expected a .xlsx or .tsv path")
    return {"questions": len(rows), "unanswered": sum(not r[header.index("prediction")] for r in rows)}


def write_submission(benchmark: str, data: str | os.PathLike, answers_path: str | os.PathLike,
                     out: str | os.PathLike) -> dict:
    """Write the upload file of `benchmark` (vqav2, vizwiz, mmbench) from its test questions and our answers."""
    answers = answers_by_id(answers_path)
    if benchmark == "vqav2":
        return vqav2_submission(list(read_jsonl(data)), answers, out)
    if benchmark == "vizwiz":
        from xllava_jax.eval.registry import load_benchmark_records
        return vizwiz_submission(load_benchmark_records("vizwiz", data), answers, out)
    if benchmark == "mmbench":
        return mmbench_submission(data, answers, out)
    raise ValueError(f"no submission format for {benchmark!r}; expected vqav2, vizwiz or mmbench")
