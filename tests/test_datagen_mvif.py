"""End-to-end mvif runs against the fault-injecting fake server: retries, rejects, kill/resume, budget, no key leak."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import FAKE_API_KEY
from fake_openai import Faults
from xllava_jax.datagen.mvif import MvifConfig, run_mvif
from xllava_jax.datagen.parse import validate_record
from xllava_jax.datagen.prompts import DEFAULT_TURNS
from xllava_jax.jsonl import read_jsonl
from xllava_jax.datagen.vg import SelectionConfig, select_from_files
from xllava_jax.openai_api import ApiConfig, ChatClient

ROOT = Path(__file__).resolve().parents[1]
FAULTS = Faults(p429=0.1, p500=0.1, phang=0.03, malformed=0.08, partial=0.08, hang_s=0.8)


def _expected_ids(vg):
    images = select_from_files(vg["objects"], vg["image_data"], SelectionConfig())
    return {f"vg{i.image_id}_{t}" for i in images for t in DEFAULT_TURNS}


def _all_ids(out):
    recs = [r["id"] for r in read_jsonl(out)]
    rejects = [r["id"] for r in read_jsonl(out + ".rejects.jsonl") if r["reason"] != "request_failed"]
    return recs, rejects


def _assert_no_key(*paths_and_texts):
    for item in paths_and_texts:
        if isinstance(item, Path) and item.is_dir():
            for p in item.rglob("*"):
                if p.is_file():
                    assert FAKE_API_KEY.encode() not in p.read_bytes(), p
        else:
            assert FAKE_API_KEY not in item


def test_fault_injected_run_then_rerun_is_free(fake_openai, fake_api_env, vg_dataset, tmp_path, caplog):
    import logging
    caplog.set_level(logging.DEBUG)
    server = fake_openai(FAULTS, seed=3)
    fake_api_env(server, OPENAI_CONCURRENCY="4")
    out = str(tmp_path / "out" / "mvif.jsonl")
    cfg = MvifConfig(str(vg_dataset["objects"]), str(vg_dataset["image_data"]), str(vg_dataset["root"]), out,
                     progress=False)
    summary = run_mvif(cfg, ChatClient(ApiConfig.from_env()))
    recs, rejects = _all_ids(out)
    assert summary["duplicates"] == 0 and len(recs) == len(set(recs)) == summary["written"] > 0
    assert set(recs) | set(rejects) == _expected_ids(vg_dataset) and not set(recs) & set(rejects)
    assert summary["rejects_total"] == len(rejects) > 0 and set(summary["rejects"]) <= {
        "invalid_json", "missing_language", "turn_count", "truncated"}
    assert summary["api"]["retries"] > 0 and summary["api"]["requests"] == server.counts["requests"]
    for rec in read_jsonl(out):
        validate_record(rec, turns=DEFAULT_TURNS[rec["type"]])
    meta = {m["id"]: m for m in read_jsonl(out + ".meta.jsonl")}
    assert all(meta[i]["scene_graph"] for i in recs if i.endswith("_location"))
    print("fault-injected mvif run:", json.dumps(summary))

    before = server.counts["requests"]
    again = run_mvif(cfg, ChatClient(ApiConfig.from_env()))
    assert server.counts["requests"] == before and again["written"] == 0
    assert again["skipped_done"] == again["tasks_total"]
    _assert_no_key(tmp_path, caplog.text, json.dumps(summary))


def test_budget_cap_stops_and_resumes(fake_openai, fake_api_env, vg_dataset, tmp_path):
    server = fake_openai(seed=4)
    fake_api_env(server, OPENAI_CONCURRENCY="2", OPENAI_PRICE_INPUT_PER_1M="10", OPENAI_PRICE_OUTPUT_PER_1M="0")
    out = str(tmp_path / "mvif.jsonl")
    cfg = MvifConfig(str(vg_dataset["objects"]), str(vg_dataset["image_data"]), str(vg_dataset["root"]), out,
                     progress=False)
    s1 = run_mvif(cfg, ChatClient(ApiConfig.from_env(budget_usd=0.05)))  # $0.01 per request -> 5 requests
    assert s1["stopped_by_budget"] and s1["api"]["cost_usd"] <= 0.05 + 1e-9 and s1["written"] == 5
    s2 = run_mvif(cfg, ChatClient(ApiConfig.from_env()))
    recs, rejects = _all_ids(out)
    assert not s2["stopped_by_budget"] and len(recs) == len(set(recs)) == len(_expected_ids(vg_dataset))
    assert s2["written"] == len(_expected_ids(vg_dataset)) - 5


def test_sigkill_mid_run_then_resume_loses_and_duplicates_nothing(fake_openai, vg_dataset, tmp_path):
    server = fake_openai(Faults(p429=0.1, p500=0.1, malformed=0.05), seed=5)
    out = tmp_path / "run" / "mvif.jsonl"
    env = {**os.environ, "OPENAI_BASE_URL": server.url, "OPENAI_MODEL": "fake", "OPENAI_API_KEY": FAKE_API_KEY,
           "OPENAI_TIMEOUT_S": "0.5", "OPENAI_BACKOFF_BASE_S": "0.01", "OPENAI_BACKOFF_MAX_S": "0.05",
           "OPENAI_RPM": "1200", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "xllava_jax.datagen", "mvif", "--objects", str(vg_dataset["objects"]),
           "--image_data", str(vg_dataset["image_data"]), "--image_root", str(vg_dataset["root"]),
           "--out", str(out), "--concurrency", "2"]
    logs = tmp_path / "run" / "logs"
    logs.mkdir(parents=True)
    with open(logs / "first.out", "w") as so, open(logs / "first.err", "w") as se:
        proc = subprocess.Popen(cmd, env=env, stdout=so, stderr=se, cwd=tmp_path)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (not out.exists() or len(out.read_bytes().splitlines()) < 6):
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    first = [r["id"] for r in read_jsonl(out)]
    assert 6 <= len(first) < len(_expected_ids(vg_dataset)), "kill should land mid-run"
    with open(logs / "second.out", "w") as so, open(logs / "second.err", "w") as se:
        subprocess.run(cmd + ["--rpm", "0"], env=env, stdout=so, stderr=se, cwd=tmp_path, check=True, timeout=90)
    summary = json.loads((logs / "second.out").read_text().strip().splitlines()[-1])
    recs, rejects = _all_ids(str(out))
    assert len(recs) == len(set(recs)) and summary["duplicates"] == 0
    assert set(first) <= set(recs) and set(recs) | set(rejects) == _expected_ids(vg_dataset)
    assert summary["skipped_done"] >= len(first)
    _assert_no_key(tmp_path)
