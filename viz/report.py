"""The study's offline HTML report: the findings table, then each experiment's figures (embedded
as data URIs) and headline numbers. Nothing is loaded from the network."""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

from viz import html


def _figure(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return (
        f"<figure><img alt='{path.stem}' style='max-width:100%' src='data:image/png;base64,{data}'></figure>"
    )


def report_html(
    title: str, findings: Sequence[Mapping[str, str]], run_paths: Sequence[Path], *, intro: str = ""
) -> str:
    sections = [
        (
            "Findings",
            html.paragraph(intro)
            + html.table(
                [{k: r[k] for k in ("finding", "adapter", "verdict", "measured")} for r in findings]
            ),
        )
    ]
    for path in run_paths:
        config = json.loads((path / "config.json").read_text())
        figures = "".join(_figure(p) for p in sorted((path / "figures").glob("*.png")))
        body = (
            html.paragraph(f"run folder: {path}")
            + figures
            + f"<details><summary>config</summary><pre>{html.escape_text(json.dumps(config, indent=1))}</pre></details>"
        )
        sections.append((path.parent.name, body))
    return html.page(title, sections)


def write_report(path: str | Path, title: str, findings, run_paths, *, intro: str = "") -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(report_html(title, findings, [Path(p) for p in run_paths], intro=intro), encoding="utf-8")
    return path
