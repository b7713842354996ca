"""The README's result tables, rendered from stored runs (`results/`): one section per results
group, the commands that made its runs, and a table per group with a row per finding, a column
per adapter kind; each cell the verdict with its effect and 95% interval, each row its bound.

The README holds the rendering between `BEGIN` and `END`; `replace_block` rewrites it there and
`tests/test_results_tables.py` fails when the two differ.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

BEGIN = "<!-- results: rendered by `python -m experiments.summary results --readme README.md`; edit results/, not this -->"
END = "<!-- results: end -->"


def cell(row: dict) -> str:
    finite = all(math.isfinite(row[k]) for k in ("value", "ci_low", "ci_high"))
    if not math.isfinite(row["value"]):
        number = "undefined"
    elif finite:
        number = f"{row['value']:.3g} [{row['ci_low']:.3g}, {row['ci_high']:.3g}]"
    else:
        number = f"{row['value']:.3g} [no interval]"
    note = f"; {row['note']}" if row.get("note") else ""
    return f"**{row['verdict']}** {number}{note}"


def group_of(source: str) -> Path:
    """The results group a run belongs to: the folder above `<experiment>/<run>`, from its
    `results` folder on (so the rendering does not depend on where the repository lies)."""
    group = Path(source).parent.parent
    parts = group.parts
    return Path(*parts[parts.index("results") :]) if "results" in parts else group


def markdown(rows: Sequence[dict]) -> str:
    """Every group's section: its commands, then its findings x adapters table."""
    groups: dict[Path, list[dict]] = {}
    for row in rows:
        groups.setdefault(group_of(row["source"]), []).append(row)
    return "\n\n".join(_section(group, part) for group, part in groups.items()) + "\n"


def _section(group: Path, rows: list[dict]) -> str:
    adapters = list(dict.fromkeys(r["adapter"] for r in rows))
    findings = list(dict.fromkeys(r["finding"] for r in rows))
    by: dict[tuple[str, str], dict] = {}
    for r in rows:
        if (r["finding"], r["adapter"]) in by:  # one cell each: a second run of it is stored elsewhere
            raise ValueError(f"{group}: two runs judge {r['finding']!r} for {r['adapter']}: "
                             f"{by[r['finding'], r['adapter']]['source']} and {r['source']}; store one in another group")  # fmt: skip
        by[r["finding"], r["adapter"]] = r
    lines = [f"#### `{group.as_posix()}`", "", *_commands(rows), ""]
    lines.append("| finding | effect, bound (unit) | " + " | ".join(adapters) + " |")
    lines.append("|---" * (len(adapters) + 2) + "|")
    for finding in findings:
        first = next(by[(finding, a)] for a in adapters if (finding, a) in by)
        cells = [cell(by[(finding, a)]) if (finding, a) in by else "" for a in adapters]
        lines.append(
            f"| {finding} | {first['effect']}, {first['bound']} ({first['unit']}) | "
            + " | ".join(cells)
            + " |"
        )
    return "\n".join([*lines, "", plainly(rows)])


def plainly(rows: Sequence[dict]) -> str:
    """Which findings the rows reproduce, and which not, in words (a finding per verdict, with
    the adapter kinds that got it)."""
    by_verdict: dict[str, dict[str, list[str]]] = {}
    for row in rows:
        by_verdict.setdefault(row["verdict"], {}).setdefault(_short(row["finding"]), []).append(
            row["adapter"]
        )
    parts = []
    for verdict in ("reproduced", "not reproduced", "inconclusive"):
        findings = by_verdict.get(verdict, {})
        if findings:
            listed = "; ".join(f"{f} ({', '.join(a)})" for f, a in findings.items())
            parts.append(f"**{verdict}**: {listed}")
    return "Under these rules, " + ". ".join(parts) + "."


def _short(finding: str) -> str:
    """A finding's name before its colon or parenthesis ("efficiency", "EM")."""
    return finding.split(":")[0].split(" (")[0].strip()


def _commands(rows: list[dict]) -> list[str]:
    sources = list(dict.fromkeys(r["source"] for r in rows))
    commands = []
    for source in sources:
        config = json.loads((Path(source) / "config.json").read_text())
        if "command" in config:
            commands.append(f"- `{config['command']}` ({Path(source).parent.name}/{Path(source).name})")
    return commands


def block(text: str) -> str:
    """The rendering a README holds between the markers (raises naming what is missing)."""
    if BEGIN not in text or END not in text:
        raise ValueError(f"no results block: the README needs the lines {BEGIN!r} and {END!r}")
    return text.split(BEGIN, 1)[1].split(END, 1)[0].strip("\n") + "\n"


def replace_block(text: str, rendering: str) -> str:
    block(text)  # both markers present
    head, rest = text.split(BEGIN, 1)
    return f"{head}{BEGIN}\n{rendering}{END}{rest.split(END, 1)[1]}"
