"""The paper's findings, read from run folders, each judged by the one rule of `mech.verdicts`:
an effect, its 95% bootstrap interval over the units it was measured on (seeds x domains, seeds
x norms, seeds), the pre-set bound it must clear (`mech.verdicts.margins`), and the verdict.

Every number comes from a run's `results.json` and `results.csv`; nothing is typed in. A row:

    finding, adapter, effect (what the number is), value, ci_low, ci_high, unit, units, level,
    bound, verdict, measured (the numbers behind it, briefly), source (the run folder), and
    estimate (effect, interval, bound and unit as one line of text)
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pandas as pd

from experiments.findings.directions import direction_rows, sae_rows
from experiments.findings.landscape import efficiency_rows, pretraining_rows, revert_rows, stability_rows
from experiments.findings.rates import emergence_rows, narrow_rows, persona_rows
from experiments.findings.rows import Row

READERS: dict[str, Callable[[dict, pd.DataFrame, str], list[Row]]] = {
    "emergence": emergence_rows, "narrow_kl": narrow_rows, "efficiency": efficiency_rows, "stability": stability_rows,
    "revert": revert_rows, "pretraining_kl": pretraining_rows, "persona_share": persona_rows,
    "directions": direction_rows, "sae_compare": sae_rows,
}  # fmt: skip


def read_tidy(path: Path) -> pd.DataFrame:
    csv = Path(path) / "results.csv"
    return pd.read_csv(csv) if csv.is_file() else pd.DataFrame()
