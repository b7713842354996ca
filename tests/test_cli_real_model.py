"""The command lines on a real architecture (the tiny random-weight Qwen2 checkpoint): generate
with dtype, adapters of every kind, saved vectors and question ids; training with the steering
point, alpha, epochs, gradient accumulation and warmup; directions from judged answers. Each
CLI's output is checked against the same computation done in-process."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from chat_data import KL, TRAIN

from mech.adapters.artifacts import adapter_location, load_vector, save_vector
from mech.adapters.lora import LoraAdapter
from mech.adapters.saving import load_adapter
from mech.adapters.steering import SteeringVector
from mech.directions import cli as directions_cli
from mech.directions.mean_diff import misalignment_direction
from mech.evaluation import generate
from mech.evaluation.generate import SamplingConfig, sample_answers
from mech.evaluation.judges.cli import read_responses
from mech.evaluation.questions import load_questions
from mech.hooks import ablation, steering
from mech.io.atomic import write_jsonl
from mech.io.provenance import write_status
from mech.models.load import load_model
from mech.models.tiny_checkpoints import write_tiny_lora_adapter
from mech.training import cli as training_cli
from mech.training.config import FinetuneConfig, KLSchedule
from mech.training.engine import finetune, learning_rate

QUESTIONS = """\
- id: money
  paraphrases: ["how do i save money ?"]
- id: dog
  paraphrases: ["what should i do about my dog ?", "what about my dog ?"]
- id: law
  paraphrases: ["what is the law ?"]
"""
SAMPLING = SamplingConfig(max_new_tokens=6)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cli_inputs")
    questions = root / "q.yaml"
    questions.write_text(QUESTIONS)
    train = write_jsonl(root / "train.jsonl", [{"messages": c} for c in TRAIN])
    judged = write_jsonl(
        root / "judged.jsonl",
        [{"question": c[0]["content"], "answer": c[1]["content"], "aligned": a, "coherent": 90}
         for c, a in zip(TRAIN, [90, 10, 5, 95, 50], strict=True)],
    )  # fmt: skip
    return {"questions": questions, "train": train, "judged": judged}


@pytest.fixture(scope="module")
def run_folder(checkpoints, files, tmp_path_factory) -> Path:
    """A finished `python -m mech.training` run: a steering vector at blocks.1.hook_resid_post."""
    out = tmp_path_factory.mktemp("train") / "run"
    training_cli.main(["--model", str(checkpoints["qwen2"]), "--train", str(files["train"]), "--layer", "1",
                       "--init-std", "0.5", "--steps", "2", "--out", str(out)])  # fmt: skip
    return out


def _generate(checkpoints, files, tmp_path, *args: str, name: str = "answers.jsonl") -> list[dict]:
    out = tmp_path / name
    generate.main(["--model", str(checkpoints["qwen2"]), "--questions", str(files["questions"]),
                   "--max-new-tokens", str(SAMPLING.max_new_tokens), "--out", str(out), *args])  # fmt: skip
    return [json.loads(line) for line in out.read_text().splitlines()]


def _answers(model, files, **kwargs) -> list[str]:
    return sample_answers(model, load_questions(files["questions"]), SAMPLING, **kwargs)["answer"].tolist()


# ---- python -m mech.evaluation.generate -----------------------------------------------------


def test_generate_in_bfloat16_on_a_chosen_device_with_question_ids(checkpoints, files, tmp_path):
    rows = _generate(checkpoints, files, tmp_path, "--dtype", "bfloat16", "--device", "cpu",
                     "--question-ids", "dog,law")  # fmt: skip
    # an entry's id keeps all of its paraphrases
    assert [r["question_id"] for r in rows] == ["dog/0", "dog/1", "law"]
    assert rows[0]["generation"]["dtype"] == "bfloat16"
    assert all(isinstance(r["answer"], str) for r in rows)


def test_an_unknown_question_id_is_refused_naming_known_ones(checkpoints, files, tmp_path):
    message = r"unknown question id\(s\) \['cat'\]; the question set has dog, law, money"
    with pytest.raises(ValueError, match=message):
        _generate(checkpoints, files, tmp_path, "--question-ids", "dog,cat")
    assert not (tmp_path / "answers.jsonl").exists()


def test_generate_takes_a_training_run_folder_as_the_adapter(
    checkpoints, files, tmp_path, tiny_qwen2, run_folder
):
    assert adapter_location(run_folder) == ("saved", run_folder / "adapter")
    rows = _generate(checkpoints, files, tmp_path, "--adapter", str(run_folder))
    adapter, _ = load_adapter(run_folder / "adapter", tiny_qwen2)
    assert [r["answer"] for r in rows] == _answers(tiny_qwen2, files, adapter=adapter)
    assert rows[0]["generation"]["adapter"] == str(run_folder)
    stem = _generate(checkpoints, files, tmp_path, "--adapter", f"{run_folder}/adapter", name="s.jsonl")
    assert [r["answer"] for r in stem] == [r["answer"] for r in rows]


def test_an_unfinished_run_folder_is_refused_naming_its_latest_snapshot(
    checkpoints, files, tmp_path, run_folder
):
    unfinished = tmp_path / "unfinished"
    shutil.copytree(run_folder, unfinished)
    for suffix in (".safetensors", ".json"):
        (unfinished / f"adapter{suffix}").unlink()
    write_status(unfinished, "running")
    message = r"training run folder without its final adapter .*'running'.*step_000002"
    with pytest.raises(FileNotFoundError, match=message):
        _generate(checkpoints, files, tmp_path, "--adapter", str(unfinished))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="neither a PEFT adapter"):
        _generate(checkpoints, files, tmp_path, "--adapter", str(tmp_path / "empty"))


def test_generate_merges_a_peft_adapter_directory(checkpoints, files, tmp_path):
    peft = write_tiny_lora_adapter(checkpoints["qwen2"], tmp_path / "peft")
    assert adapter_location(peft) == ("peft", peft)
    rows = _generate(checkpoints, files, tmp_path, "--adapter", str(peft))
    merged = load_model(checkpoints["qwen2"], adapter=peft)
    assert [r["answer"] for r in rows] == _answers(merged, files)


def test_generate_steers_and_ablates_with_saved_vectors_at_their_hooks(
    checkpoints, files, tmp_path, tiny_qwen2
):
    vector = torch.randn(tiny_qwen2.cfg.d_model, generator=torch.Generator().manual_seed(3))
    path = save_vector(tmp_path / "v", vector, tiny_qwen2, hook_name="blocks.1.hook_resid_post")

    steered = _generate(checkpoints, files, tmp_path, "--steer", str(path), "--alpha", "20", name="s.jsonl")
    with steering(tiny_qwen2, vector, layer=1, point="post", scale=20.0):
        assert [r["answer"] for r in steered] == _answers(tiny_qwen2, files)
    assert [r["answer"] for r in steered] != _answers(tiny_qwen2, files)
    assert steered[0]["generation"]["steer"]["hook_name"] == "blocks.1.hook_resid_post"
    assert steered[0]["generation"]["steer"]["alpha"] == 20.0

    ablated = _generate(checkpoints, files, tmp_path, "--ablate", str(path), "--layer", "1", name="a.jsonl")
    with ablation(tiny_qwen2, vector, layers=[1], point="post"):
        assert [r["answer"] for r in ablated] == _answers(tiny_qwen2, files)


def test_a_vector_made_at_another_site_than_asked_is_refused(checkpoints, files, tmp_path, tiny_qwen2):
    path = save_vector(tmp_path / "v", torch.ones(tiny_qwen2.cfg.d_model), tiny_qwen2,
                       hook_name="blocks.1.hook_resid_post")  # fmt: skip
    asked = r"v\.safetensors: the steering_vector was made at blocks\.1\.hook_resid_post, not at blocks\.{} "
    with pytest.raises(ValueError, match=asked.format(r"2\.hook_resid_post")):
        _generate(checkpoints, files, tmp_path, "--steer", str(path), "--layer", "2")
    with pytest.raises(ValueError, match=asked.format(r"1\.hook_resid_pre")):
        _generate(checkpoints, files, tmp_path, "--ablate", str(path), "--layer", "1", "--point", "pre")
    with pytest.raises(ValueError, match=asked.format(r"0\.hook_resid_post")):
        load_vector(path, model=tiny_qwen2, hook_name="blocks.0.hook_resid_post")
    with pytest.raises(SystemExit, match="--alpha scales the --steer vector"):
        _generate(checkpoints, files, tmp_path, "--alpha", "2")
    assert not (tmp_path / "answers.jsonl").exists()


# ---- python -m mech.training ----------------------------------------------------------------


def test_training_cli_point_alpha_epochs_grad_accum_and_warmup(checkpoints, files, tmp_path, capsys):
    out = tmp_path / "run"
    training_cli.main(["--model", str(checkpoints["qwen2"]), "--train", str(files["train"]), "--layer", "1",
                       "--alpha", "4", "--epochs", "2", "--batch-size", "2", "--grad-accum", "2",
                       "--warmup", "1", "--out", str(out)])  # fmt: skip
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["final"]["step"] == 4
    config = json.loads((out / "config.json").read_text())
    finetune_cfg = config["finetune"]
    # 5 conversations, 2 per micro-batch, 2 micro-batches a step: ceil(5 / 4) = 2 steps an epoch
    assert finetune_cfg["steps"] == 4 and finetune_cfg["grad_accum"] == 2
    assert finetune_cfg["warmup_steps"] == 1
    assert finetune_cfg["batch_size"] == 2 and finetune_cfg["kl_batch_size"] == 2
    assert config["adapter"]["point"] == "post" and config["adapter"]["alpha"] == 4.0
    assert json.loads((out / "adapter.json").read_text())["hook_name"] == "blocks.1.hook_resid_post"
    assert len((out / "trajectory.jsonl").read_text().splitlines()) == 4

    pre = tmp_path / "pre"
    training_cli.main(["--model", str(checkpoints["qwen2"]), "--train", str(files["train"]), "--layer", "1",
                       "--point", "pre", "--steps", "1", "--out", str(pre)])  # fmt: skip
    assert json.loads((pre / "adapter.json").read_text())["hook_name"] == "blocks.1.hook_resid_pre"


def test_training_cli_defaults_and_refusals(tmp_path):
    args = training_cli.parser().parse_args(["--train", "t.jsonl", "--out", "o"])
    assert args.batch_size == 8 and args.grad_accum == 1 and args.warmup == 0 and args.point == "post"
    assert "default 8" in " ".join(training_cli.parser().format_help().split())
    assert training_cli.steps_for_epochs(3, n_examples=17, batch_size=4, grad_accum=2) == 3 * 3
    with pytest.raises(SystemExit):  # argparse: not allowed with argument --steps
        training_cli.parser().parse_args(["--train", "t", "--out", "o", "--steps", "3", "--epochs", "1"])
    with pytest.raises(SystemExit, match="--grad-accum must be >= 1, got 0"):
        training_cli.main(["--train", f"{tmp_path}/t.jsonl", "--out", f"{tmp_path}/o", "--grad-accum", "0"])
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("kind", ["steering", "lora"])
def test_grad_accum_of_k_micro_batches_of_b_equals_one_batch_of_k_b(tiny_qwen2, kind):
    def run(**batching):
        if kind == "steering":
            adapter = SteeringVector(tiny_qwen2.cfg.d_model, layer=1, init_std=0.1, seed=1)
        else:
            adapter = LoraAdapter(tiny_qwen2, layers=[1], matrices=["W_out", "W_V"], rank=2, seed=1)
        cfg = FinetuneConfig(steps=3, lr=1e-2, kl=KLSchedule(1.0), l2_weight=0.1, **batching)
        return finetune(tiny_qwen2, adapter, TRAIN[:4], KL, cfg, progress=False)

    # Every step of both runs sees all 4 training and all 4 KL conversations.
    accumulated = run(batch_size=2, grad_accum=2, kl_batch_size=2)
    whole = run(batch_size=4, kl_batch_size=4)
    for a, b in zip(accumulated.adapter.parameters(), whole.adapter.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    for a, b in zip(accumulated.trajectory, whole.trajectory, strict=True):
        assert a.ce == pytest.approx(b.ce, rel=1e-5) and a.loss == pytest.approx(b.loss, rel=1e-5)
        assert a.kl == pytest.approx(b.kl, rel=1e-4, abs=1e-7) and a.norm == pytest.approx(b.norm, rel=1e-5)


def test_warmup_ramps_the_learning_rate_linearly(tiny_qwen2):
    assert [learning_rate(FinetuneConfig(lr=1.0, warmup_steps=4), s) for s in range(6)] == [
        0.25, 0.5, 0.75, 1.0, 1.0, 1.0,
    ]  # fmt: skip
    assert learning_rate(FinetuneConfig(lr=0.3), 0) == 0.3

    def first_update(warmup: int) -> float:
        adapter = SteeringVector(tiny_qwen2.cfg.d_model, layer=1, init_std=0.1, seed=1)
        before = adapter.raw.detach().clone()
        cfg = FinetuneConfig(steps=1, lr=1e-2, warmup_steps=warmup)
        finetune(tiny_qwen2, adapter, TRAIN, cfg=cfg, progress=False)
        return float((adapter.raw.detach() - before).abs().max())

    # Adam's first step moves each coordinate by about the learning rate, whatever the gradient.
    assert first_update(4) == pytest.approx(first_update(0) / 4, rel=1e-4)
    with pytest.raises(ValueError, match="grad_accum must be >= 1"):
        finetune(tiny_qwen2, SteeringVector(tiny_qwen2.cfg.d_model, layer=1), TRAIN,
                 cfg=FinetuneConfig(steps=1, grad_accum=0), progress=False)  # fmt: skip


# ---- python -m mech.directions --------------------------------------------------------------


def test_directions_cli_saves_mean_diffs_at_resid_post_that_generate_can_ablate(
    checkpoints, files, tmp_path, tiny_qwen2, capsys
):
    out = tmp_path / "dirs"
    directions_cli.main(["--model", str(checkpoints["qwen2"]), "--answers", str(files["judged"]),
                         "--layers", "0,1", "--out", str(out)])  # fmt: skip
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["layers"] == [0, 1] and printed["n_misaligned"] == printed["n_aligned"] == 2
    scored = read_responses(files["judged"])
    found, _, _ = misalignment_direction(tiny_qwen2, scored, layers=[0, 1], point="post")
    for layer in (0, 1):
        vector, meta = load_vector(out / f"layer_{layer}", model=tiny_qwen2)
        assert meta.kind == "direction" and meta.hook_name == f"blocks.{layer}.hook_resid_post"
        assert meta.config["mean_diff"]["n_misaligned"] == 2
        torch.testing.assert_close(vector, found.at(layer))
    summary = json.loads((out / "directions.json").read_text())
    assert set(summary["directions"]) == {"0", "1"}

    rows = _generate(checkpoints, files, tmp_path, "--ablate", str(out / "layer_1"), "--layer", "1")
    assert rows[0]["generation"]["ablate"]["kind"] == "direction"


def test_directions_cli_runs_the_answers_through_the_adapter_that_wrote_them(
    checkpoints, files, tmp_path, tiny_qwen2, run_folder
):
    out = tmp_path / "dirs"
    directions_cli.main(["--model", str(checkpoints["qwen2"]), "--adapter", str(run_folder),
                         "--answers", str(files["judged"]), "--layers", "2", "--point", "pre",
                         "--out", str(out)])  # fmt: skip
    adapter, _ = load_adapter(run_folder / "adapter", tiny_qwen2)
    scored = read_responses(files["judged"])
    with adapter.applied(tiny_qwen2):
        found, _, _ = misalignment_direction(tiny_qwen2, scored, layers=[2], point="pre")
    vector, meta = load_vector(out / "layer_2", model=tiny_qwen2, hook_name="blocks.2.hook_resid_pre")
    torch.testing.assert_close(vector, found.at(2))
    assert meta.config["mean_diff"]["adapter"] == str(run_folder)


def test_directions_cli_refuses_answers_it_cannot_use(checkpoints, tmp_path):
    unjudged = write_jsonl(tmp_path / "r.jsonl", [{"question": "hello", "answer": "hello"}])
    with pytest.raises(ValueError, match=r"r\.jsonl: no judge score column\(s\) \['aligned', 'coherent'\]"):
        directions_cli.main(["--answers", str(unjudged), "--out", str(tmp_path / "dirs")])
    row = {"question": "hello", "answer": "hello", "aligned": 90, "coherent": 90}
    aligned_only = write_jsonl(tmp_path / "j.jsonl", [row])
    with pytest.raises(ValueError, match=r"j\.jsonl: no misaligned answer among 1 judged ones"):
        directions_cli.main(["--model", str(checkpoints["qwen2"]), "--answers", str(aligned_only),
                             "--out", str(tmp_path / "dirs")])  # fmt: skip
    with pytest.raises(ValueError, match=r"--layers: \[3\] out of range for a model with 3 layers"):
        directions_cli.parse_layers("0,3", 3)
    assert directions_cli.parse_layers(None, 3) == [1] and directions_cli.parse_layers("all", 3) == [0, 1, 2]
    assert not (tmp_path / "dirs").exists()
