"""What an experiment writes into its run folder: tidy rows as `results.csv`, figures with the data
they plot, `results.json`, its finding rows, and the final status (`finish`).

Tidy rows have the columns of `COLUMNS`; `role` says how a domain relates to the finetune:
`narrow` (the finetuned domain), `kl` (in the KL set), `heldout_domain` (in neither).
"""

from __future__ import annotations

import csv
import time
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from experiments.run_dir import RunDir
from experiments.summary import write_findings
from mech.io.atomic import atomic_write, write_json, write_text

COLUMNS = ("adapter", "kl_weight", "seed", "domain", "role", "split", "metric", "value", "scale", "eps")
"""`scale` and `eps` are set on rows of scaling and noise curves, empty elsewhere."""


def write_csv(path: Path, rows: Sequence[dict], columns: Sequence[str]) -> Path:
    """A CSV with `columns` (other keys ignored, missing ones empty), written atomically."""

    def write(tmp: str) -> None:
        with open(tmp, "w", newline="") as out:
            writer = csv.DictWriter(out, fieldnames=list(columns), extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)

    return atomic_write(path, write)


SAMPLED_COLUMNS = ("ci_low", "ci_high", "n", "judge")
"""Columns of rates measured from sampled, judged answers: the 95% bootstrap interval, the
answers the rate is a share of, and the judge that scored them."""


def write_rows(run: RunDir, rows: Sequence[dict]) -> None:
    """`results.csv` in tidy long format, one measurement per row (with `SAMPLED_COLUMNS` when
    any row carries them)."""
    sampled = any("ci_low" in row for row in rows)
    write_csv(run.path / "results.csv", rows, COLUMNS + SAMPLED_COLUMNS if sampled else COLUMNS)


TABLE_COLUMNS = ("analysis", "a", "b", "metric", "value")
"""`results.csv` of the direction experiments: `analysis` names a table, `a` and `b` its row and
column (e.g. ablation: finetune, direction; cosine: vector, vector), `metric` what `value` is."""


def write_table(run: RunDir, rows: Sequence[dict]) -> None:
    """`results.csv` in the `TABLE_COLUMNS` long format, and `seed` when the rows carry one (a
    run measured at several finetune seeds)."""
    seeded = any("seed" in row for row in rows)
    write_csv(run.path / "results.csv", rows, TABLE_COLUMNS + ("seed",) if seeded else TABLE_COLUMNS)


def curve_rows(
    frame, *, adapter: str, kl_weight: float, seed: int, domain: str, x: str, metric: str
) -> list[dict]:
    """Tidy rows from a `mech.evaluation.loss_landscape` curve (`x` is "scale" or "eps")."""
    return [{"adapter": adapter, "kl_weight": kl_weight, "seed": seed, "domain": domain, "role": "narrow",
             "split": "train", "metric": metric, "value": float(r[metric]), x: float(r[x])}
            for r in frame.to_dict(orient="records")]  # fmt: skip


def save_figure(run: RunDir, name: str, fig, data=None) -> Path:
    """Write `figures/<name>.png` and, given `data` (a pandas DataFrame: the tidy rows the figure
    plots; for a heatmap, its table with the index as a column), `figures/<name>.csv` next to it.
    Returns the PNG's path."""
    from viz.figures import save

    path = run.path / "figures" / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: save(fig, Path(tmp), format="png"))
    if data is not None:
        atomic_write(path.with_suffix(".csv"), lambda tmp: data.to_csv(tmp, index=False))
    return path


def finish(run: RunDir, rows: Sequence[dict], results: dict, started: float, *, table: bool = False,
           setting=None) -> Path:  # fmt: skip
    """Write `results.csv` (`COLUMNS` layout, or `TABLE_COLUMNS` with `table`) and `results.json`
    (with the run's duration), the run's finding rows (`findings.json`, what the report shows),
    the `setting` it ran on (`setting.json`, for a real model: data, questions, judges and their
    tallies; `answers.jsonl`: every sampled answer with its scores and condition), and mark the
    run done."""
    if setting is not None and getattr(setting, "describe", None) is not None:
        described = setting.describe()
        if described.get("kind") != "toy":
            results["setting"] = described
            write_json(run.path / "setting.json", described)
    answers = getattr(setting, "answers", None)
    if answers:
        frame = pd.concat([part.assign(condition=name) for name, part in answers.items()], ignore_index=True)
        write_text(run.path / "answers.jsonl", frame.to_json(orient="records", lines=True))
    results["seconds"] = time.perf_counter() - started
    (write_table if table else write_rows)(run, rows)
    run.save_results(results)
    write_findings(run.path)
    run.set_status("done")
    return run.path
