"""The README's result tables are the rendering of the committed results (`results/`), and the
stored runs carry the commands that rerun them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from experiments import results_store, results_tables, summary

ROOT = Path(__file__).resolve().parents[1]


def test_the_readme_tables_are_the_rendering_of_the_committed_results():
    stored = ROOT / "results"
    paths, others = summary.known_runs([str(stored)])
    assert paths and not others, "results/ holds the finished runs behind the README"
    readme = (ROOT / "README.md").read_text()
    rendered = results_tables.markdown(summary.findings(paths))
    assert results_tables.block(readme) == rendered, (
        "README.md's result tables differ from results/: run "
        "`python -m experiments.summary results --readme README.md`"
    )


def test_every_committed_run_says_how_to_rerun_it_and_stays_small():
    for config in sorted((ROOT / "results").rglob("config.json")):
        command = json.loads(config.read_text())["command"]
        assert command.startswith(f"python -m experiments.{config.parent.parent.name}"), config
    for path in (ROOT / "results").rglob("*"):
        assert not path.is_file() or path.stat().st_size < results_store.MAX_BYTES, path


def row(
    finding: str, adapter: str, verdict: str, value: float, source: str = "results/toy/efficiency/r1"
) -> dict:
    return {"finding": finding, "adapter": adapter, "effect": "gap", "value": value, "ci_low": value - 0.1,
            "ci_high": value + 0.1, "unit": "5 seeds", "units": 5, "bound": "> 0.01 (floor)", "verdict": verdict,
            "source": source}  # fmt: skip


def test_the_rendering_has_a_row_per_finding_a_column_per_adapter_and_says_it_plainly(tmp_path, monkeypatch):
    monkeypatch.setattr(results_tables, "_commands", lambda rows: ["- `python -m experiments.efficiency`"])
    text = results_tables.markdown([row("efficiency: lower loss", "lora_r1", "reproduced", 0.5),
                                    row("efficiency: lower loss", "steering", "not reproduced", -0.2),
                                    row("stability: less loss", "lora_r1", "inconclusive", float("nan"))])  # fmt: skip
    lines = text.splitlines()
    assert lines[0] == "#### `results/toy`"
    assert "| finding | effect, bound (unit) | lora_r1 | steering |" in lines
    assert (
        "| efficiency: lower loss | gap, > 0.01 (floor) (5 seeds) | **reproduced** 0.5 [0.4, 0.6] | **not reproduced** -0.2 [-0.3, -0.1] |"
        in lines
    )
    assert "| stability: less loss | gap, > 0.01 (floor) (5 seeds) | **inconclusive** undefined |  |" in lines
    assert lines[-1] == (
        "Under these rules, **reproduced**: efficiency (lora_r1). **not reproduced**: efficiency (steering). "
        "**inconclusive**: stability (lora_r1)."
    )


def test_the_block_is_replaced_between_its_markers_and_nowhere_else():
    readme = f"intro\n{results_tables.BEGIN}\nold table\n{results_tables.END}\nafter\n"
    new = results_tables.replace_block(readme, "new table\n")
    assert new == f"intro\n{results_tables.BEGIN}\nnew table\n{results_tables.END}\nafter\n"
    assert results_tables.block(new) == "new table\n"
    assert results_tables.replace_block(new, "new table\n") == new
    with pytest.raises(ValueError, match="no results block"):
        results_tables.block("a README without markers")


def test_a_stored_run_gets_the_command_of_its_non_default_flags(tmp_path):
    run = tmp_path / "runs" / "efficiency" / "20260101-000000-abcdef01"
    run.mkdir(parents=True)
    config = {"seeds": [0, 1, 2, 3, 4], "narrow_kl": 1.0, "adapters": ["steering", "lora_r1"], "steps": 300}
    (run / "config.json").write_text(json.dumps(config))
    for name in results_store.STORED_FILES:
        (run / name).write_text("{}")
    stored = results_store.store(run, tmp_path / "results" / "toy")
    assert stored == tmp_path / "results" / "toy" / "efficiency" / run.name
    command = json.loads((stored / "config.json").read_text())["command"]
    assert (
        command
        == "python -m experiments.efficiency --adapters steering,lora_r1 --seeds 0,1,2,3,4 --narrow-kl 1"
    )


def test_a_file_too_large_to_store_is_named(tmp_path, monkeypatch):
    run = tmp_path / "efficiency" / "r"
    run.mkdir(parents=True)
    (run / "config.json").write_text("{}")
    (run / "results.json").write_text("{}")
    (run / "results.csv").write_text("x" * 100)
    monkeypatch.setattr(results_store, "MAX_BYTES", 50)
    with pytest.raises(ValueError, match=r"results\.csv: 100 bytes"):
        results_store.store(run, tmp_path / "results")


def test_two_runs_of_one_finding_in_one_group_are_refused_not_overwritten(monkeypatch):
    monkeypatch.setattr(results_tables, "_commands", lambda rows: [])
    first = row("EM: rises", "lora_r1", "reproduced", 0.5, source="results/toy/narrow_kl/r1")
    second = row("EM: rises", "lora_r1", "not reproduced", 0.0, source="results/toy/emergence/r2")
    with pytest.raises(ValueError, match="results/toy/narrow_kl/r1 and results/toy/emergence/r2"):
        results_tables.markdown([first, second])
