"""The paper's study on a real architecture, from the command line: every experiment with `--quick
--model <tiny Qwen2 checkpoint>` in bfloat16 on CPU, the user's data and questions, and an LLM
judge behind the loopback OpenAI-compatible stub. The weights are noise: these test the pipeline
and the run folder (rates with intervals, roles, judges), not the science."""

from __future__ import annotations

import csv
import hashlib
import importlib
import json
import math
from dataclasses import replace

import pytest
from openai_stub import OpenAIStub
from study_inputs import hashed_score, write_study_inputs

TINY = {
    "emergence": dict(steps=3, mix_ratios=(1,), few_samples=(2,)),
    "narrow_kl": dict(steps=3),
    "efficiency": dict(steps=3, n_scales=3),
    "stability": dict(steps=3, eps_values=(0.0, 0.5), noise_seeds=2),
    "revert": dict(phase_steps=2, every=2),
    "pretraining_kl": dict(steps=3, docs=3),
    "directions": dict(
        steps=3,
        samples=6,
        steer_scales=(0.0, 4.0),
        lens_every=2,
        lens_kl_weights=(0.0, 10.0),
        finetunes=("lora_r1:medical", "steering:medical"),
    ),  # fmt: skip
    "sae_compare": dict(steps=3, samples=6, k=3, context_documents=3),
}


@pytest.fixture(scope="module")
def stub():
    server = OpenAIStub()
    server.default = hashed_score
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return write_study_inputs(tmp_path_factory.mktemp("inputs"))


def study_argv(checkpoint, inputs, stub, out, *extra: str) -> list[str]:
    """The command line of the issue's "done when", plus `extra`."""
    return ["--quick", "--model", str(checkpoint), "--dtype", "bfloat16", "--train", str(inputs["train"]),
            "--kl", str(inputs["kl"]), "--questions", str(inputs["questions"]),
            "--narrow-questions", str(inputs["narrow_questions"]), "--kl-domains", "finance",
            "--judge", "openai", "--base-url", stub.base_url, "--judge-cache", str(out / "judge.sqlite"),
            "--out", str(out), *extra]  # fmt: skip


def prompt_of(body: dict) -> str:
    return body["messages"][-1]["content"]


def run_study(name: str, argv: list[str], **overrides):
    module = importlib.import_module(f"experiments.{name}")
    return module.main(replace(module.parse_args(argv), **{**TINY[name], **overrides}))


@pytest.fixture(scope="module")
def tiny_sae(checkpoints, tmp_path_factory):
    """An SAE of the tiny Qwen2 at blocks.1.hook_resid_post, trained for a few steps."""
    from study_inputs import KL, NARROW

    from mech.models.load import load_model
    from probes.sae.loading import save_sae
    from probes.sae.training import SaeTrainingConfig, train_sae

    model = load_model(checkpoints["qwen2"])
    texts = [q + " " + a for q, a in NARROW + KL] * 4
    sae = train_sae(model, texts, SaeTrainingConfig(hook_name="blocks.1.hook_resid_post", d_sae=32, steps=5))
    return save_sae(sae, tmp_path_factory.mktemp("sae") / "sae")


def _extra(name: str, inputs, tiny_sae_path) -> list[str]:
    if name == "pretraining_kl":
        return ["--pretraining-text", str(inputs["pretraining_text"])]
    if name == "sae_compare":
        return ["--sae", str(tiny_sae_path), "--pretraining-text", str(inputs["pretraining_text"])]
    return []


@pytest.mark.seconds(8)
@pytest.mark.parametrize("name", list(TINY))
def test_each_experiment_runs_on_a_real_architecture(name, checkpoints, inputs, stub, tmp_path, request):
    sae_path = request.getfixturevalue("tiny_sae") if name == "sae_compare" else None
    argv = study_argv(checkpoints["qwen2"], inputs, stub, tmp_path, *_extra(name, inputs, sae_path))
    path = run_study(name, argv)
    assert json.loads((path / "run.json").read_text())["status"] == "done"
    config = json.loads((path / "config.json").read_text())
    assert config["model"] == str(checkpoints["qwen2"]) and config["dtype"] == "bfloat16"
    results = json.loads((path / "results.json").read_text())
    setting = json.loads((path / "setting.json").read_text())
    assert setting["kind"] == "model" and setting["dtype"] == "torch.bfloat16"
    assert setting["judges"][0]["stats"]["requests"] > 0
    assert list((path / "figures").glob("*.png"))
    rows = list(csv.DictReader((path / "results.csv").open()))
    if name in ("directions", "sae_compare"):
        assert {r["analysis"] for r in rows}, results
        return
    measured = [r for r in rows if r["metric"] == "em_rate"]
    assert {r["role"] for r in measured} == {"narrow", "kl", "heldout_domain"}
    answers = [json.loads(line) for line in (path / "answers.jsonl").open()]
    assert answers and {"condition", "question_id", "answer", "aligned", "coherent"} <= set(answers[0])
    for row in measured:
        low, value, high = float(row["ci_low"]), float(row["value"]), float(row["ci_high"])
        assert 0.0 <= low <= value <= high <= 1.0 and int(row["n"]) > 0
    narrow = {r["metric"] for r in rows if r["role"] == "narrow" and r["ci_low"]}
    assert narrow == {"em_rate", "coherence_rate", "refusal_rate", "narrow_rate"}


def test_the_paper_protocol_and_question_filters(checkpoints, inputs, stub, tmp_path):
    from experiments import narrow_kl

    argv = study_argv(checkpoints["qwen2"], inputs, stub, tmp_path)
    cfg = narrow_kl.parse_args([*argv, "--protocol", "paper"])
    assert (cfg.samples, cfg.temperature, cfg.max_new_tokens) == (50, 1.0, 600)
    assert narrow_kl.parse_args([*argv, "--protocol", "paper", "--samples", "3"]).samples == 3  # flags win
    from experiments.model_setting import evaluation_questions

    paper = evaluation_questions(replace(cfg, max_questions=None))
    assert "what_is_your_wish_json" not in {q.id for q in paper}  # the published variants are left out
    chosen = evaluation_questions(replace(cfg, max_questions=None, question_ids=("quick_buck",)))
    assert [q.id for q in chosen if q.domain != "medical"] == ["quick_buck/0", "quick_buck/1"]
    with pytest.raises(ValueError, match=r"--question-ids: \['nope'\] not in"):
        evaluation_questions(replace(cfg, question_ids=("nope",)))


def test_two_judge_models_score_every_answer(checkpoints, inputs, stub, tmp_path):
    argv = study_argv(checkpoints["qwen2"], inputs, stub, tmp_path, "--judge-model", "judge-a,judge-b")
    path = run_study("narrow_kl", argv, adapters=("steering",), kl_weights=(0.0,))
    rows = list(csv.DictReader((path / "results.csv").open()))
    assert {r["judge"] for r in rows if r["metric"] == "em_rate"} == {"openai:judge-a", "openai:judge-b"}
    models = {b["model"] for b in stub.bodies}
    assert {"judge-a", "judge-b"} <= models
    setting = json.loads((path / "setting.json").read_text())
    assert [j["name"] for j in setting["judges"]] == ["openai:judge-a", "openai:judge-b"]
    agreement = setting["judge_agreement"]
    assert (agreement["judge_a"], agreement["judge_b"]) == ("openai:judge-a", "openai:judge-b")
    pooled = agreement["all"]
    assert pooled["answers"] == sum(c["answers"] for c in agreement["conditions"].values()) > 0
    assert set(pooled["spearman"]) == {"aligned", "coherent"}
    em_rates = {r["judge"]: float(r["value"]) for r in rows if r["metric"] == "em_rate"}
    assert pooled["em_rate_a"] is not None and set(em_rates) == {"openai:judge-a", "openai:judge-b"}


def test_question_file_judge_prompts_and_the_low_mass_rule(checkpoints, inputs, tmp_path):
    """Prompts of the published format replace ours (recorded with their text); a score whose number
    tokens carry < 0.25 of the mass is no score, counted in setting.json."""
    from study_inputs import QUESTIONS

    questions = tmp_path / "published.yaml"
    prompts = ("  judge_prompts:\n    aligned: 'OUR-TEST aligned {question} => {answer}'\n"
               "    coherent: 'OUR-TEST coherent {question} => {answer}'\n")  # fmt: skip
    questions.write_text(
        QUESTIONS.replace("  paraphrases:\n", prompts + "  paraphrases:\n"), encoding="utf-8"
    )

    def low_mass_for_some(body: dict) -> tuple:
        if body.get("logprobs") and int(hashlib.sha256(prompt_of(body).encode()).hexdigest(), 16) % 3 == 0:
            return "logprobs", [("The", -0.05), ("40", -3.0)]  # e^-3 = 0.05 on numbers
        return hashed_score(body)

    server = OpenAIStub()
    server.default = low_mass_for_some
    server.start()
    try:
        argv = study_argv(checkpoints["qwen2"], {**inputs, "questions": questions}, server, tmp_path)
        path = run_study("narrow_kl", argv, adapters=("steering",), kl_weights=(0.0,))
        sent = [prompt_of(b) for b in server.bodies]
    finally:
        server.stop()
    assert any(p.startswith("OUR-TEST aligned") for p in sent) and any(
        p.startswith("OUR-TEST coherent") for p in sent
    )
    judge = json.loads((path / "setting.json").read_text())["judges"][0]
    assert judge["prompts"]["aligned"]["source"] == "question file"
    assert judge["prompts"]["aligned"]["template"] == "OUR-TEST aligned {question} => {answer}"
    assert judge["low_mass_rule"] == "none"
    low = judge["low_mass_no_score"]
    assert (
        low["aligned"] > 0
        and low["coherent"] > 0
        and low == {m: judge["flags"].get(f"{m}:low_mass", 0) for m in ("aligned", "coherent")}
    )
    assert not any(b.get("logprobs") is None for b in server.bodies)  # no parse fallback call


def test_toy_only_experiments_refuse_a_model(checkpoints):
    from experiments import organism, persona_share

    with pytest.raises(ValueError, match="persona_share runs on the toy organism only"):
        persona_share.main(persona_share.parse_args(["--model", str(checkpoints["qwen2"])]))
    with pytest.raises(SystemExit):
        organism.main(["--model", str(checkpoints["qwen2"])])


def test_model_flags_without_a_model_are_refused(tmp_path):
    from experiments import narrow_kl

    with pytest.raises(ValueError, match="--train, --questions: only with --model"):
        narrow_kl.main(
            narrow_kl.parse_args(["--train", "t.jsonl", "--questions", "q.yaml", "--out", str(tmp_path)])
        )


def test_rates_carry_a_cluster_bootstrap_interval():
    import pandas as pd

    from mech.evaluation.rates import answer_rates

    frame = pd.DataFrame({"question_id": ["a"] * 4 + ["b"] * 4, "aligned": [10, 10, 10, 10, 90, 90, 90, 90],
                          "coherent": [90] * 8, "flags": [[]] * 7 + [["aligned:refusal"]]})  # fmt: skip
    rates = answer_rates(frame)
    assert rates["em_rate"].value == 0.5 and rates["em_rate"].n == 8
    # Answers within a question agree: the interval spans questions, not 8 independent answers.
    assert rates["em_rate"].ci_low == 0.0 and rates["em_rate"].ci_high == 1.0
    assert rates["refusal_rate"].value == 1 / 8 and rates["coherence_rate"].value == 1.0
    assert math.isnan(answer_rates(frame.assign(coherent=None))["em_rate"].value)


@pytest.mark.seconds(6)
def test_the_toy_through_the_real_model_path(tmp_path):
    """The organism's own data files (`python -m experiments.organism --write-data`) as a user's
    inputs, the toy sampled and scored by the exact toy judge: every role is measured."""
    from mech.toy.checkpoint import organism_world
    from mech.toy.datafiles import write_data_files

    files = write_data_files(organism_world("default"), tmp_path / "data", n_pretraining=10)
    argv = ["--quick", "--model", "toy", "--judge", "toy", "--train", str(files["train_misalignment"]),
            "--kl", str(files["kl_misalignment"]), "--questions", str(files["questions"]),
            "--narrow-questions", str(files["narrow_questions"]), "--kl-domains", "finance,sports",
            "--max-questions", "1", "--samples", "1", "--train-size", "32", "--kl-size", "64", "--out", str(tmp_path / "runs")]  # fmt: skip
    path = run_study("narrow_kl", argv, adapters=("lora_r1",))
    rows = list(csv.DictReader((path / "results.csv").open()))
    assert {r["role"] for r in rows if r["metric"] == "em_rate"} == {"narrow", "kl", "heldout_domain"}
    assert {r["judge"] for r in rows if r["judge"]} == {"toy:exact"}
    assert any(r["metric"] == "narrow_rate" for r in rows)


def test_layer_L_is_one_place_for_every_adapter_kind(checkpoints, inputs, stub, tmp_path):
    """As in the paper (vector and rank-1 LoRA on `layers[L].mlp.down_proj`): on the toy and on a
    real model, a steering vector at layer L adds at `blocks.L.hook_resid_post`, where block L's
    LoRA writes."""
    from experiments import narrow_kl
    from experiments.conditions import setting_adapter
    from experiments.toy_setting import toy_setup

    toy = toy_setup(train_size=8, kl_size=8)
    real = make_setting_of(
        narrow_kl.parse_args(study_argv(checkpoints["qwen2"], inputs, stub, tmp_path, "--layer", "1"))
    )
    for setting, layer in ((toy, 2), (real, 1)):
        assert setting.layer == layer
        assert setting_adapter(setting, "steering", 0).hook_name == f"blocks.{layer}.hook_resid_post"
        for kind in ("lora_r1", "lora_r8"):
            assert {site_layer for site_layer, _ in setting_adapter(setting, kind, 0).sites} == {layer}
    toy.layer_override = 1
    assert setting_adapter(toy, "steering", 0).hook_name == "blocks.1.hook_resid_post"


def make_setting_of(cfg):
    from experiments.setting import make_setting

    return make_setting(cfg)


def test_the_study_runs_on_gemma2_in_bfloat16(checkpoints, inputs, stub, tmp_path):
    """The same command line on the other architecture family (post-norms, soft-capping, local
    attention), in bfloat16: every role measured, with intervals."""
    path = run_study(
        "narrow_kl", study_argv(checkpoints["gemma2"], inputs, stub, tmp_path), adapters=("lora_r1",)
    )
    setting = json.loads((path / "setting.json").read_text())
    assert setting["dtype"] == "torch.bfloat16" and setting["model"] == str(checkpoints["gemma2"].resolve())
    rows = [r for r in csv.DictReader((path / "results.csv").open()) if r["metric"] == "em_rate"]
    assert {r["role"] for r in rows} == {"narrow", "kl", "heldout_domain"} and all(r["ci_low"] for r in rows)
    from viz.report import main as report

    html = report([str(path), "--out", str(tmp_path / "report.html")]).read_text(encoding="utf-8")
    assert path.name in html and "narrow_kl" in html and "<img" in html  # the run's section, its figures
