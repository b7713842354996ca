"""Each experiment end to end on the toy organism, shrunk below its --quick size: the pipeline
and the run folder, not the science (`make test-slow` runs the real --quick configurations)."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from dataclasses import replace

import pytest
from toy_runs import ANALYSES, TINY, accepted, digest, run

from experiments.outputs import COLUMNS


def assert_bit_identical(name: str, path) -> None:
    """The toy's results equal those taken before the setting interface (`tests/toy_runs.py`).
    The digests hold at 1 torch thread (as in `make test`): other thread counts sum differently."""
    import torch

    if torch.get_num_threads() == 1:
        assert digest(path) in accepted(name), (
            f"{name}: the toy's results moved (digests are per platform: tests/toy_runs.py)"
        )


def _run(name: str, tmp_path, *args: str):
    return run(name, tmp_path, *args)


@pytest.fixture(scope="session")
def sweep(tmp_path_factory):
    """The tiny narrow_kl run (steering and rank-1 LoRA, KL 0 and 1), shared by the tests that only
    read it; the analyses reuse its solutions (`--from-run`)."""
    return _run("narrow_kl", tmp_path_factory.mktemp("sweep"))


def _finite(value) -> bool:
    if isinstance(value, dict):
        return all(_finite(v) for v in value.values())
    if isinstance(value, list):
        return all(_finite(v) for v in value)
    return not isinstance(value, float) or math.isfinite(value) or value == float("inf")


@pytest.mark.seconds(5)
@pytest.mark.parametrize("name", list(TINY))
def test_each_experiment_writes_a_well_formed_run_folder(name, tmp_path, request):
    path = request.getfixturevalue("sweep") if name == "narrow_kl" else _run(name, tmp_path)
    assert json.loads((path / "run.json").read_text())["status"] == "done"
    assert json.loads((path / "config.json").read_text())[
        "narrow_domain" if name != "persona_share" else "organisms"
    ]
    results = json.loads((path / "results.json").read_text())
    assert _finite({k: v for k, v in results.items() if k != "chat" or True})
    with (path / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert rows and tuple(rows[0]) == COLUMNS
    assert all(math.isfinite(float(r["value"])) for r in rows)
    assert list((path / "adapters").glob("*.safetensors"))
    figures = list((path / "figures").glob("*.png"))
    assert figures and all(f.stat().st_size > 5000 for f in figures)
    assert_bit_identical(name, path)


@pytest.mark.seconds(4)
def test_another_narrow_domain_and_the_technical_trait(tmp_path):
    path = _run("emergence", tmp_path, "--narrow-domain", "finance", "--trait", "technical")
    rows = list(csv.DictReader((path / "results.csv").open()))
    assert {r["domain"] for r in rows if r["role"] == "narrow"} == {"finance"}
    assert {r["metric"] for r in rows if r["adapter"] == "none"} == {"p_technical"}
    with pytest.raises(ValueError, match="unknown narrow domain"):
        _run("emergence", tmp_path, "--narrow-domain", "astrology")


@pytest.mark.parametrize("name", ["efficiency", "stability", "pretraining_kl"])
def test_analyses_reuse_the_solutions_of_a_sweep(name, sweep, tmp_path):
    path = _run(name, tmp_path, "--from-run", str(sweep), "--narrow-kl", "1", "--adapters", "lora_r1")
    assert not (path / "adapters").exists()  # nothing trained
    results = json.loads((path / "results.json").read_text())
    assert results["adapters"]["lora_r1"]["per_seed"]
    with pytest.raises(FileNotFoundError, match="no lora_r1 solution with KL 10"):
        _run(name, tmp_path, "--from-run", str(sweep), "--narrow-kl", "10", "--adapters", "lora_r1")


@pytest.mark.seconds(9)
def test_same_seed_same_results(sweep, tmp_path):
    first = sweep
    second = _run("narrow_kl", tmp_path / "b")
    assert (first / "results.csv").read_text() == (second / "results.csv").read_text()
    strip = lambda r: {k: v for k, v in r.items() if k != "seconds"}  # noqa: E731
    assert strip(json.loads((first / "results.json").read_text())) == strip(
        json.loads((second / "results.json").read_text())
    )


@pytest.mark.slow
@pytest.mark.parametrize("name", [*TINY, "directions", "sae_compare"])
def test_quick_cli_runs(name, tmp_path):
    done = subprocess.run([sys.executable, "-m", f"experiments.{name}", "--quick", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"{name} -> " in done.stdout


def test_findings_come_from_the_runs_and_the_report_is_offline(sweep, tmp_path):
    from experiments.summary import findings
    from viz.report import write_report

    analysis = _run(
        "efficiency", tmp_path, "--from-run", str(sweep), "--narrow-kl", "1", "--adapters", "lora_r1"
    )
    rows = [r for r in findings([sweep, analysis]) if r["adapter"] == "lora_r1"]  # the sweep has steering too
    assert [r["finding"].split(":")[0] for r in rows] == [
        "EM",
        "a narrow solution exists under KL (narrow rate far above chat, no rise outside)",
        "efficiency",
    ]
    (seed,) = json.loads((analysis / "results.json").read_text())["adapters"]["lora_r1"]["per_seed"]
    at = seed["loss_at_matched_norm"]
    gap, learned = at["narrow"] - at["general"], seed["chat_loss"] - at["general"]
    assert rows[2]["value"] == pytest.approx(gap / learned) and f"{gap:+.4f}" in rows[2]["measured"]
    assert all(r["verdict"] == "inconclusive" and r["units"] == 1 for r in rows)  # one seed decides nothing
    page = write_report(tmp_path / "report.html", "t", rows, [sweep, analysis]).read_text()
    assert page.count("data:image/png;base64,") >= 2 and "http://" not in page and "https://" not in page


@pytest.mark.seconds(26)
def test_directions_experiment_writes_the_matrix_probes_and_cosines(tmp_path):
    from experiments import directions

    cfg = replace(directions.parse_args(["--quick", "--out", str(tmp_path)]), **ANALYSES["directions"])
    path = directions.main(cfg)
    assert_bit_identical("directions", path)
    results = json.loads((path / "results.json").read_text())
    assert json.loads((path / "run.json").read_text())["status"] == "done"
    found = [name for name in cfg.finetunes if "note" not in results["finetunes"][name]]
    assert found, results["finetunes"]
    matrix = results["ablation"]["em_rate"]
    assert set(matrix) == set(cfg.finetunes)
    draws = range(cfg.random_draws)
    expected = (
        {"none"}
        | set(found)
        | {f"random:{n}" for n in found}
        | {f"random:{n}#{k}" for n in found for k in draws}
    )
    assert all(set(row) == expected for row in matrix.values())
    for name in found:  # each direction's own controls, every draw of exactly its norm, the mean their mean
        control = results["random_controls"]["directions"][name]
        assert control["norms"] == pytest.approx([control["norm"]] * cfg.random_draws, rel=1e-5)
        assert len(set(control["seeds"])) == cfg.random_draws
        row = matrix[name]
        assert row[f"random:{name}"] == pytest.approx(
            sum(row[f"random:{name}#{k}"] for k in draws) / len(draws)
        )
        assert set(results["steering"]) >= {name, f"random:{name}", f"random:{name}#0"}
    probes = results["probes"]
    for a, split_of in probes["transfer_split"].items():  # the diagonal on held-out answers only
        assert split_of == {b: "held-out" if b == a else "all" for b in split_of}
        assert probes["transfer_n"][a][a] == probes["misaligned_answers"][a]["logistic"]["n"]
        assert probes["transfer_auroc"][a][a] == probes["misaligned_answers"][a]["logistic"]["auroc"]
    assert _finite(results["ablation"]) and _finite(results["cosines"])
    assert results["cosines"]["persona mean-diff"]["persona mean-diff"] == pytest.approx(1.0)
    assert 0.5 <= results["probes"]["persona"]["logistic"]["auroc"] <= 1.0
    rows = list(csv.DictReader((path / "results.csv").open()))
    assert {r["analysis"] for r in rows} >= {"ablation", "steering", "cosine", "training_lens"}
    # Steps 1-4 at each seed, the rest the first seed's; the findings take seeds as the outer unit.
    assert results["seeds"] == [0, 1] and set(results["by_seed"]) == {"0", "1"}
    assert results["by_seed"]["0"]["ablation"] == results["ablation"]
    assert {r["seed"] for r in rows if r["analysis"] == "ablation"} == {"0", "1"}
    assert {r["seed"] for r in rows if r["analysis"] == "cosine"} == {"0"}
    assert (path / "seed_1" / "adapters").is_dir()
    controls = [results["by_seed"][s]["random_controls"]["directions"] for s in ("0", "1")]
    shared = set(controls[0]) & set(controls[1])
    assert shared and all(controls[0][n]["seeds"] != controls[1][n]["seeds"] for n in shared)
    from experiments.summary import findings

    judged = [r for r in findings([path]) if r["finding"].startswith("directions: ablating")]
    assert judged and all(r["unit"].startswith("2 seeds") for r in judged)
    from viz.tokens import read_token_views

    views = read_token_views(path / "token_views.json")
    assert len(views) >= 2 and {"projection (finetune)", "log-prob change, direction ablated"} <= set(
        views[0].values
    )
    for name in ("ablation_matrix", "steering_sweep", "cosines", "training_lens"):
        assert (path / "figures" / f"{name}.png").stat().st_size > 5000


@pytest.mark.seconds(11)
def test_sae_compare_ranks_latents_and_scores_the_persona(tmp_path):
    from experiments import sae_compare

    cfg = replace(sae_compare.parse_args(["--quick", "--out", str(tmp_path)]), **ANALYSES["sae_compare"])
    path = sae_compare.main(cfg)
    assert_bit_identical("sae_compare", path)
    results = json.loads((path / "results.json").read_text())
    assert results["hook"] == "blocks.2.hook_resid_pre" and results["d_sae"] > 0
    for name in ("steering general", "steering narrow"):
        top = results["directions"][name]["top_by_cosine"]
        assert len(top) == 3 and top[0]["cosine"] >= top[-1]["cosine"]
    persona = results["persona"]
    assert 0.5 <= persona["best_latent_selection_auroc"] <= 1.0 and 0.5 <= persona["probe_auroc"] <= 1.0
    assert 0.0 <= persona["best_latent_heldout_auroc"] <= 1.0
    split = persona["split"]  # chosen on one half of the documents, scored on the other
    assert (
        split["selection"] + split["heldout"] == persona["documents"]
        and abs(split["selection"] - split["heldout"]) <= 2
    )
    assert persona["top_latents"][0] == {"latent": persona["best_latent"], "selection_auroc": persona["best_latent_selection_auroc"],
                                         "heldout_auroc": persona["best_latent_heldout_auroc"]}  # fmt: skip
    assert (path / "contexts.csv").stat().st_size > 100
    assert (path / "figures" / "latent_cosines.png").stat().st_size > 5000
    assert _finite(results["sae_on_fresh_text"])
    if "note" not in results:  # the general finetune wrote both kinds of answers
        from viz.tokens import read_token_views

        views = read_token_views(path / "token_views.json")
        assert views and all(len(series) == len(v.tokens) for v in views for series in v.values.values())


def test_a_failing_experiment_marks_its_run_failed_and_keeps_what_it_wrote(tmp_path):
    from experiments import narrow_kl

    cfg = replace(narrow_kl.parse_args(["--quick", "--out", str(tmp_path)]), narrow_domain="astrology")
    with pytest.raises(ValueError, match="unknown narrow domain 'astrology'"):
        narrow_kl.main(cfg)
    (run,) = (tmp_path / "narrow_kl").iterdir()
    status = json.loads((run / "run.json").read_text())
    assert status["status"] == "failed"
    assert status["error"].startswith("ValueError: unknown narrow domain 'astrology'")
    assert "Traceback" in status["traceback"] and status["pid"] > 0
    assert json.loads((run / "config.json").read_text())["narrow_domain"] == "astrology"
    assert not list(run.glob(".*.tmp"))


def test_studies_can_train_and_hold_on_seeded_samples_of_the_data():
    from experiments import directions, narrow_kl
    from experiments.toy_setting import toy_setup

    cfg = narrow_kl.parse_args(["--train-size", "10", "--kl-size", "20"])
    assert (cfg.train_size, cfg.kl_size) == (10, 20)
    assert directions.parse_args(["--kl-size", "7"]).kl_size == 7
    full, small, again = (
        toy_setup(),
        toy_setup(train_size=10, kl_size=20),
        toy_setup(train_size=10, kl_size=20),
    )
    assert (len(small.train), len(small.kl)) == (10, 20)
    assert small.train == again.train and small.kl == again.kl  # the same sample for every run
    assert all(c in full.train for c in small.train) and all(c in full.kl for c in small.kl)
    assert toy_setup(train_size=10**6).train == full.train  # larger than the set: all of it
