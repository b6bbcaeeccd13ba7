"""User errors end in one `error: <message>` line and exit 2, with nothing half-written; --help exits 0 and shows
defaults. Entry points are called in-process where they can be (each subprocess costs seconds of imports)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from data_fixtures import make_parallel_records
from xllava_jax import checkpoint
from xllava_jax.convert.__main__ import main as convert_main
from xllava_jax.convert.hf import load_hf_llava
from xllava_jax.data.cli import main as data_main
from xllava_jax.tokenizer.__main__ import main as tokenizer_main

REPO = Path(__file__).parents[1]


def error_lines(capsys) -> list[str]:
    """stderr lines of the last call, and check it is a single `error:` line without a traceback."""
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    return lines


def siblings(path: Path) -> list[str]:
    """Entries next to `path` whose names start with it (an output or a temporary directory left behind)."""
    return sorted(p.name for p in path.parent.iterdir() if p.name.lstrip(".").startswith(path.name))


@pytest.fixture(scope="module")
def llava_checkpoint(tiny_llava_hf_dir, tmp_path_factory) -> Path:
    """An Orbax checkpoint of the random tiny LLaVA (no tokenizer inside)."""
    model, params = load_hf_llava(tiny_llava_hf_dir)
    return checkpoint.save_params(tmp_path_factory.mktemp("ckpt") / "ckpt", params, model.cfg)


def test_export_with_mismatched_tokenizer_writes_nothing(llava_checkpoint, hf_llama_tokenizer_dir, demo_data_root,
                                                         tmp_path, capsys):
    out = tmp_path / "hf"
    rc = convert_main(["orbax-to-hf", "--checkpoint", str(llava_checkpoint), "--out", str(out),
                       "--tokenizer_dir", str(demo_data_root / "tokenizer")])
    assert rc == 2
    (line,) = error_lines(capsys)
    assert "does not match the checkpoint" in line and "image_token_id" in line
    assert siblings(out) == []
    # a good export, then a failing one into the same place: the good one stays whole
    assert convert_main(["orbax-to-hf", "--checkpoint", str(llava_checkpoint), "--out", str(out),
                         "--tokenizer_dir", str(hf_llama_tokenizer_dir)]) == 0
    before = sorted(p.name for p in out.iterdir())
    assert {"config.json", "tokenizer.model", "chat_template.jinja", "processor_config.json"} <= set(before)
    assert json.loads((out / "tokenizer_config.json").read_text())["legacy"] is True
    capsys.readouterr()
    assert convert_main(["orbax-to-hf", "--checkpoint", str(llava_checkpoint), "--out", str(out),
                         "--tokenizer_dir", str(demo_data_root / "tokenizer")]) == 2
    error_lines(capsys)
    assert sorted(p.name for p in out.iterdir()) == before and siblings(out) == ["hf"]
    assert convert_main(["orbax-to-hf", "--checkpoint", str(tmp_path / "missing"), "--out", str(out)]) == 2
    assert "missing" in error_lines(capsys)[0]


def test_data_and_tokenizer_cli_errors_and_summaries(hf_llama_tokenizer_dir, tmp_path, capsys):
    from PIL import Image
    (tmp_path / "img").mkdir()
    records = make_parallel_records(4)
    for i in range(3):  # record 3's image is missing
        Image.new("RGB", (20, 20), (i * 60, 90, 30)).save(tmp_path / "img" / f"{i}.jpg")
    parallel = tmp_path / "parallel.json"
    parallel.write_text(json.dumps(records, ensure_ascii=False))
    english = tmp_path / "en.json"
    english.write_text(json.dumps([{**r, "conversations": [{"from": t["from"], "value": t["value"]["en"]}
                                                           for t in r["conversations"]]} for r in records]))
    # pack in strict mode stops at the missing image and leaves no output directory
    out = tmp_path / "shards"
    assert data_main(["pack", "--data", str(english), "--image_root", str(tmp_path), "--out", str(out),
                      "--strict"]) == 2
    assert "par3" in error_lines(capsys)[0] and siblings(out) == []
    # inspect on a parallel file without --lang says to pass one
    tok = str(hf_llama_tokenizer_dir)
    assert data_main(["inspect", "--data", str(parallel), "--tokenizer", tok, "--image_root", str(tmp_path)]) == 0
    assert "pass --lang" in capsys.readouterr().err
    # stats reports lengths before and after truncation
    assert data_main(["stats", "--data", str(english), "--tokenizer", tok, "--image_tokens", "4",
                      "--max_len", "80", "--image_root", str(tmp_path)]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["length"]["max"] <= 80 < stats["length_before_truncation"]["max"]
    assert stats["truncated"] > 0
    # a missing data file, a missing tokenizer, a flag that needs another
    assert data_main(["stats", "--data", str(tmp_path / "nope.json"), "--tokenizer", tok]) == 2
    assert "nope.json" in error_lines(capsys)[0]
    assert data_main(["stats", "--data", str(english)]) == 2
    assert "--tokenizer" in error_lines(capsys)[0]
    assert tokenizer_main(["expand", "--base", tok, "--train-corpus", str(english), "--out", str(tmp_path / "t")]) == 2
    assert "--new-pieces" in error_lines(capsys)[0] and siblings(tmp_path / "t") == []


def test_every_entry_point_help_exits_0_with_defaults(capsys):
    from xllava_jax.datagen.__main__ import main as datagen_main
    from xllava_jax.eval.__main__ import main as eval_main
    from xllava_jax.infer.__main__ import main as infer_main
    cases = [(convert_main, ["orbax-to-hf"]), (tokenizer_main, ["expand"]), (data_main, ["stats"]),
             (infer_main, ["generate"]), (eval_main, ["run"]), (datagen_main, [])]
    for main, sub in cases:
        with pytest.raises(SystemExit) as e:
            main([*sub, "--help"])
        assert e.value.code == 0
        text = capsys.readouterr().out
        assert "(default:" in text and "--verbose" in text, (main.__module__, text)


def run_main(args: list[str], env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "xllava_jax.main", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.slow
def test_train_main_help_typos_and_missing_init_checkpoint(tmp_path, train_subprocess_env):
    help_ = run_main(["--help"], train_subprocess_env)
    assert help_.returncode == 0 and "--workdir" in help_.stdout and "--config" in help_.stdout
    typo = run_main(["--config", "configs/llava15_7b.py", "--workdir", str(tmp_path / "w"),
                     "--config.train.batchsize=8"], train_subprocess_env)
    assert typo.returncode == 2 and "Traceback" not in typo.stderr, typo.stderr
    assert typo.stderr.strip().splitlines()[-1] == ("error: --config.train.batchsize: no setting 'batchsize' in "
                                                    "config.train; did you mean --config.train.batch_size?")
    missing = run_main(["--config", "configs/demo.py:stage2", "--workdir", str(tmp_path / "w2"),
                        "--config.init.source=checkpoint", f"--config.init.checkpoint={tmp_path / 'nope'}",
                        f"--config.data.root={tmp_path / 'data'}"], train_subprocess_env)
    assert missing.returncode == 2 and "Traceback" not in missing.stderr, missing.stderr
    assert f"init.checkpoint='{tmp_path / 'nope'}' does not exist" in missing.stderr
    assert "orbax" not in missing.stderr.lower() and "cannot schedule" not in missing.stderr


def test_stage_list_override_names_the_stages():
    from xllava_jax.main import load_config_file
    from xllava_jax.train.validate import override_problem
    config = load_config_file(str(REPO / "configs/demo.py"))
    problem = override_problem(config, "train.batch_size")
    assert "stage list" in problem and "--config.stage2.train.batch_size" in problem
    assert override_problem(config, "stage2.train.batch_size") is None
