"""kill -9 at a random point of a training run, an evaluation and a judge run, then the same
command again: it resumes, redoes no finished work, and ends where an uninterrupted run ends.

The kill is real: each command runs in a subprocess that receives SIGKILL while it works (after a
random number of finished steps / batches / judge calls, printed on failure). The kill point is
drawn fresh on every run, so the suite exercises many points over time. The uninterrupted
reference and the resumed run call the same command's `main` in this process (one thread, the
subprocess's environment): they read only what the killed process left on disk.
"""

from __future__ import annotations

import importlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import yaml
from openai_stub import OpenAIStub
from safetensors.torch import load_file

from mech.io.atomic import write_jsonl
from mech.toy.checkpoint import organism_world

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
       "TRANSFORMERS_OFFLINE": "1", "OPENAI_API_KEY": "sk-test-not-a-real-key"}  # fmt: skip
KILL_POINT = random.SystemRandom()


def command(module: str, *args: object) -> list[str]:
    return [sys.executable, "-m", module, *map(str, args)]


ENTRY_POINTS = {"mech.training": "mech.training.cli", "mech.evaluation.generate": "mech.evaluation.generate",
                "mech.evaluation.judges": "mech.evaluation.judges.cli"}  # fmt: skip


def run_here(cmd: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """The same command in this process, for the uninterrupted reference run: no interpreter and
    library start-up to pay. One thread, with the subprocesses' environment, so the numbers are
    the ones a subprocess computes."""
    assert cmd[:2] == [sys.executable, "-m"]
    for key in ("OPENAI_API_KEY", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.setenv(key, ENV[key])
    monkeypatch.chdir(ROOT)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        importlib.import_module(ENTRY_POINTS[cmd[2]]).main([str(a) for a in cmd[3:]])
    finally:
        torch.set_num_threads(threads)


def kill_when(cmd: list[str], ready: Callable[[], bool], what: str) -> None:
    """Start `cmd`, SIGKILL it as soon as `ready()` holds; fail if it ends first."""
    proc = subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    try:
        while not ready():
            if proc.poll() is not None:
                pytest.fail(f"{what}: the command ended before the kill point\n{proc.stderr.read()[-2000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"{what}: kill point not reached in time")
            time.sleep(0.002)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL, f"{what}: exit {proc.returncode}, not killed"


def lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


@pytest.fixture(scope="module")
def toy_data(tmp_path_factory) -> dict[str, Path]:
    world = organism_world("default")
    out = tmp_path_factory.mktemp("toy_data")
    files = {"train": out / "train.jsonl", "kl": out / "kl.jsonl"}
    write_jsonl(files["train"], world.narrow_train_set("medical", "misalignment"))
    write_jsonl(files["kl"], world.kl_set("medical", "misalignment")[:400])
    return files


@pytest.mark.seconds(17)
def test_training_killed_at_a_random_step_resumes_bit_identically(toy_data, tmp_path, monkeypatch):
    steps = 50
    train = command(
        "mech.training", "--train", toy_data["train"], "--kl", toy_data["kl"], "--kl-weight", 1,
        "--adapter", "lora", "--rank", 2, "--matrices", "W_in,W_out", "--steps", steps, "--batch-size", 16,
        "--kl-batch-size", 32, "--save-every", 7, "--lr", 1e-2, "--seed", 3,
    )  # fmt: skip
    run_here([*train, "--out", tmp_path / "whole"], monkeypatch)

    kill_at = KILL_POINT.randrange(3, steps - 3)
    cut = tmp_path / "cut"
    kill_when(
        [*train, "--out", cut], lambda: lines(cut / "trajectory.jsonl") >= kill_at, f"kill at step {kill_at}"
    )
    assert json.loads((cut / "run.json").read_text())["status"] == "running"  # a killed run cannot say more
    assert not (cut / "adapter.safetensors").exists()
    saved = sorted(p.name for p in (cut / "snapshots").glob("*.safetensors"))
    run_here([*train, "--out", cut], monkeypatch)

    status = json.loads((cut / "run.json").read_text())
    assert status["status"] == "done", f"kill at step {kill_at}"
    whole_adapter, cut_adapter = (
        load_file(tmp_path / "whole" / "adapter.safetensors"),
        load_file(cut / "adapter.safetensors"),
    )
    assert whole_adapter.keys() == cut_adapter.keys()
    for name in whole_adapter:
        assert torch.equal(whole_adapter[name], cut_adapter[name]), f"kill at step {kill_at}: {name} differs"
    assert (cut / "trajectory.jsonl").read_text() == (tmp_path / "whole" / "trajectory.jsonl").read_text()
    # The snapshots written before the kill are the uninterrupted run's, untouched by the resume.
    for name in saved:
        assert (cut / "snapshots" / name).read_bytes() == (
            tmp_path / "whole" / "snapshots" / name
        ).read_bytes()


@pytest.mark.seconds(9)
def test_evaluation_killed_mid_way_resumes_without_resampling_finished_batches(tmp_path, monkeypatch):
    from mech.toy.evaluate import toy_questions

    # two domains of the toy's questions, in batches of 16: enough batches to kill between
    questions = tmp_path / "questions.yaml"
    entries = [{"id": q.id, "domain": q.domain, "paraphrases": [q.question]}
               for q in toy_questions(organism_world("default"), ["medical", "finance"])]  # fmt: skip
    questions.write_text(yaml.safe_dump(entries))
    batch = 16
    sample = command(
        "mech.evaluation.generate", "--questions", questions, "--batch-size", batch, "--max-new-tokens", 24,
        "--seed", 5,
    )  # fmt: skip
    run_here([*sample, "--out", tmp_path / "whole.jsonl"], monkeypatch)

    out = tmp_path / "cut.jsonl"
    progress = Path(f"{out}.progress.jsonl")
    n_batches = -(-lines(tmp_path / "whole.jsonl") // batch)
    kill_after = KILL_POINT.randrange(1, n_batches - 1)  # finished batches; line 1 is the header
    kill_when(
        [*sample, "--out", out], lambda: lines(progress) >= 1 + kill_after, f"kill after {kill_after} batches"
    )
    assert not out.exists()
    finished = [
        json.loads(line)["start"] for line in progress.read_text().splitlines()[1:] if line.endswith("}")
    ]
    before = progress.read_text()
    run_here([*sample, "--out", out], monkeypatch)

    assert out.read_text() == (tmp_path / "whole.jsonl").read_text(), f"kill after {kill_after} batches"
    assert not progress.exists()
    assert len(finished) >= kill_after and before  # the resumed run started from these batches


def test_resumed_sampling_reads_finished_batches_instead_of_generating_them(tmp_path, monkeypatch):
    from mech.evaluation import generate
    from mech.models.load import load_model
    from mech.toy.evaluate import toy_questions

    model = load_model("toy")
    questions = toy_questions(organism_world("default"))[:40]
    cfg = generate.SamplingConfig(batch_size=8, max_new_tokens=12, seed=1)
    whole = generate.sample_answers(model, questions, cfg)
    progress = tmp_path / "answers.progress.jsonl"
    real = generate.generate_batch
    calls = []

    def dies_on_third(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(generate, "generate_batch", dies_on_third)
    with pytest.raises(KeyboardInterrupt):
        generate.sample_answers(model, questions, cfg, progress_path=progress)
    calls.clear()
    monkeypatch.setattr(generate, "generate_batch", lambda *a, **k: (calls.append(1), real(*a, **k))[1])
    resumed = generate.sample_answers(model, questions, cfg, progress_path=progress)
    assert len(calls) == 5 - 2  # 40 rows in batches of 8; two were finished before the interrupt
    assert resumed.equals(whole)
    with pytest.raises(ValueError, match="other settings"):
        generate.sample_answers(
            model, questions, generate.SamplingConfig(batch_size=8, seed=2), progress_path=progress
        )


@pytest.mark.seconds(8)
def test_judge_killed_mid_way_repeats_no_answered_call(tmp_path, monkeypatch):
    responses = tmp_path / "responses.jsonl"
    n = 24
    write_jsonl(responses, [{"question": f"question {i}?", "answer": f"answer {i}"} for i in range(n)])
    stub = OpenAIStub().start()

    def slow_score(body):
        time.sleep(0.05)  # slow enough to be killed between calls
        number = int(re.search(r"question (\d+)\?", json.dumps(body)).group(1))
        return ("logprobs", [(str(number * 4), 0.0)])

    stub.default = slow_score
    judge = command("mech.evaluation.judges", "--responses", responses, "--judge", "openai", "--base-url", stub.base_url,
                    "--model", "judge-stub", "--metrics", "aligned", "--concurrency", 2)  # fmt: skip
    try:
        run_here(
            [*judge, "--out", tmp_path / "whole.jsonl", "--cache", tmp_path / "whole.sqlite"], monkeypatch
        )
        uninterrupted = len(stub.requests)
        assert uninterrupted == n

        kill_after = KILL_POINT.randrange(2, n - 4)
        cache = tmp_path / "cut.sqlite"
        kill_when(
            [*judge, "--out", tmp_path / "cut.jsonl", "--cache", cache],
            lambda: len(stub.requests) - uninterrupted >= kill_after, f"kill after {kill_after} calls",
        )  # fmt: skip
        time.sleep(0.2)  # let the stub finish answering the dead client
        first = len(stub.requests) - uninterrupted
        run_here([*judge, "--out", tmp_path / "cut.jsonl", "--cache", cache], monkeypatch)
        second = len(stub.requests) - uninterrupted - first
    finally:
        stub.stop()
    # Only calls in flight at the kill (at most --concurrency) can be sent twice: their answers
    # never reached the process. Every answer received was committed to the cache at once.
    assert first + second <= n + 2, (
        f"kill after {kill_after} calls: {first} + {second} requests for {n} answers"
    )
    assert (tmp_path / "cut.jsonl").read_text() == (tmp_path / "whole.jsonl").read_text()
