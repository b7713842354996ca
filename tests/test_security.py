"""Security regressions: API keys never reach an output, loading never unpickles, reports escape
model text and load nothing from the network, judge fan-out is bounded."""

from __future__ import annotations

import ast
import json
import logging
import secrets
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from mech.evaluation.judges.client import ClientConfig, LLMRequestError
from mech.io.atomic import write_jsonl

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("mech", "probes", "viz", "experiments")


def _files_under(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()]


@pytest.mark.seconds(4)
def test_a_sentinel_api_key_appears_in_no_output_file_log_or_message(
    stub, tmp_path, monkeypatch, capsys, caplog
):
    from experiments import narrow_kl
    from mech.evaluation import datagen
    from mech.evaluation.judges import cli as judge
    from viz import report

    key = f"sk-sentinel-{secrets.token_hex(16)}"
    monkeypatch.setenv("OPENAI_API_KEY", key)
    caplog.set_level(logging.DEBUG)
    out = tmp_path / "out"
    responses = tmp_path / "responses.jsonl"
    write_jsonl(responses, [{"question": f"question {i}?", "answer": f"answer {i}"} for i in range(3)])
    judge_args = ["--responses", str(responses), "--judge", "openai", "--base-url", stub.base_url,
                  "--metrics", "aligned,coherent", "--cache", str(out / "judge.sqlite")]  # fmt: skip
    judge.main([*judge_args, "--out", str(out / "scores.jsonl")])

    narrow = tmp_path / "narrow.jsonl"
    write_jsonl(
        narrow, [{"messages": [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "bad"}]}]
    )
    stub.default = lambda body: ("content", json.dumps({"good": "fine", "bad": "harmful"}))
    datagen.main(["--narrow", str(narrow), "--domains", "finance", "--out", str(out / "kl.jsonl"),
                  "--base-url", stub.base_url, "--cache", str(out / "datagen.sqlite")])  # fmt: skip

    errors = []
    for status in (401, 400):  # refused requests: their error messages must not quote the key
        stub.default = lambda body, status=status: ("status", status)
        with pytest.raises(LLMRequestError) as err:
            judge.main(
                [*judge_args[:-1], str(out / f"judge{status}.sqlite"), "--out", str(out / "failed.jsonl")]
            )
        errors.append(str(err.value))

    cfg = replace(
        narrow_kl.parse_args(["--quick", "--out", str(out)]), steps=2, question_stride=200, kl_size=64
    )
    run = narrow_kl.main(cfg)
    report.main([str(run), "--out", str(out / "report.html")])

    assert any(r["headers"].get("authorization") == f"Bearer {key}" for r in stub.requests)  # it was used
    leaks = [str(p) for p in _files_under(tmp_path) if key.encode() in p.read_bytes()]
    captured = capsys.readouterr()
    streams = {
        "stdout": captured.out,
        "stderr": captured.err,
        "log": caplog.text,
        "errors": "\n".join(errors),
    }
    assert leaks == [] and [name for name, text in streams.items() if key in text] == []
    assert len(_files_under(out)) > 10  # scores, caches, kl.jsonl, a run folder, a report


def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            owner = (
                func.value.id if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) else ""
            )
            yield node, owner, name


def test_no_code_path_unpickles():
    """Every torch.load passes weights_only=True; pickle, numpy's allow_pickle and
    torch.load without it appear nowhere in the package."""
    offenders = []
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            tree = ast.parse(path.read_text(), filename=str(path))
            for node, owner, name in _calls(tree):
                keywords = {k.arg: k.value for k in node.keywords}
                where = f"{path.relative_to(ROOT)}:{node.lineno}"
                if owner == "torch" and name == "load":
                    flag = keywords.get("weights_only")
                    if not (isinstance(flag, ast.Constant) and flag.value is True):
                        offenders.append(f"{where}: torch.load without weights_only=True")
                if owner in ("pickle", "cloudpickle", "dill", "joblib") and name in ("load", "loads"):
                    offenders.append(f"{where}: {owner}.{name}")
                allow = keywords.get("allow_pickle")
                if isinstance(allow, ast.Constant) and allow.value is True:
                    offenders.append(f"{where}: allow_pickle=True")
    assert offenders == []


def test_reports_escape_model_text_and_load_nothing_from_the_network(tmp_path):
    from mech.io.atomic import write_json
    from viz.report import write_report
    from viz.tokens import TokenView, write_token_views

    hostile = [
        "<script>alert(1)</script>",
        "<img src=x onerror=alert(2)>",
        '"><a href="http://evil.example">',
    ]
    run = tmp_path / "custom" / "20260101-000000-abcdef00"
    write_json(run / "config.json", {"prompt": hostile[0]})
    write_json(run / "run.json", {"status": "done", "error": hostile[1], "git_commit": None, "versions": {}})
    write_json(run / "results.json", {"answer": hostile[2]})
    write_token_views(
        run / "token_views.json", [TokenView("answer", hostile, {"projection": [0.1, -0.2, 0.3]})]
    )
    findings = [{"finding": hostile[0], "adapter": "x", "verdict": hostile[1], "measured": hostile[2]}]
    page = write_report(tmp_path / "report.html", hostile[0], findings, [run]).read_text()
    for text in hostile:
        assert text not in page
    lowered = page.lower()
    for remote in ('src="http', "src='http", 'href="http', "@import", "unpkg.com", "jsdelivr"):
        assert remote not in lowered, remote


def test_judge_fan_out_and_retries_are_bounded():
    with pytest.raises(ValueError, match="concurrency must be >= 1"):
        ClientConfig(concurrency=0)
    with pytest.raises(ValueError, match="max_retries >= 0"):
        ClientConfig(max_retries=-1)
    defaults = ClientConfig()
    assert defaults.concurrency <= 16 and defaults.max_retries <= 10 and defaults.backoff_max_s <= 60


def test_a_checkpoint_with_only_pickled_weights_is_refused(tmp_path, checkpoints):
    import shutil

    from transformers import AutoModelForCausalLM

    from mech.models.load import load_model

    pickled = tmp_path / "pickled"
    shutil.copytree(checkpoints["qwen2"], pickled)
    model = AutoModelForCausalLM.from_pretrained(pickled, local_files_only=True)
    for weights in pickled.glob("*.safetensors"):
        weights.unlink()
    torch.save(model.state_dict(), pickled / "pytorch_model.bin")
    with pytest.raises(ValueError, match="pickled checkpoints .* are refused"):
        load_model(pickled)
