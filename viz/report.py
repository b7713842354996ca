"""The study's offline HTML report, one self-contained file: the findings table, then per run folder
its figures (embedded as data URIs), headline numbers, exact config, code version and token views.
Everything model-written is escaped and nothing is loaded from the network. The findings are
the rows the experiments wrote into each run folder (`findings.json`); viz computes none.

    python -m viz.report RUN_DIR [RUN_DIR ...] --out report.html [--title T]
    python -m viz.report runs/demo --out report.html     # every run folder inside
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mech.io.run_folders import FINDINGS_FILE, RUN_FOLDER_RULE, find_run_folders
from viz import html
from viz.tokens import TOKEN_VIEWS_FILE, circuitsvis_bundle, read_token_views, token_view_html

FINDING_COLUMNS = ("finding", "adapter", "verdict", "estimate", "measured")


def _figure(path: Path) -> str:
    return _image(path.read_bytes(), path.stem)


def _image(png: bytes, caption: str) -> str:
    data = base64.b64encode(png).decode()
    name = html.escape_text(caption)
    return (
        f"<figure><img alt='{name}' style='max-width:100%' src='data:image/png;base64,{data}'>"
        f"<figcaption>{name}</figcaption></figure>"
    )


def _read_json(path: Path) -> Any:
    """The parsed file, or None when it is missing; a ValueError names a malformed file."""
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err


def _format(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return json.dumps(value) if value is None or isinstance(value, bool) else str(value)


def _leaves(data: Any, key: str = "") -> list[tuple[str, str]]:
    """(key path, value) for every number or string in nested results; a list of plain values is one row."""
    if isinstance(data, Mapping) and data:
        return [leaf for k, v in data.items() for leaf in _leaves(v, f"{key} / {k}" if key else str(k))]
    if isinstance(data, list) and any(isinstance(v, Mapping | list) for v in data):
        return [leaf for i, v in enumerate(data) for leaf in _leaves(v, f"{key} [{i}]")]
    if isinstance(data, list):
        return [(key, "[" + ", ".join(_format(v) for v in data) + "]")]
    return [(key, "{}" if isinstance(data, Mapping) else _format(data))]


def _results(path: Path) -> str:
    results = _read_json(path / "results.json")
    if results is None:
        return html.paragraph("No results.json: the run did not finish.")
    rows = [{"key": k, "value": v} for k, v in _leaves(results)]
    return html.collapsible(f"headline numbers (results.json, {len(rows)} values)", html.table(rows))


def _config(path: Path) -> str:
    config = path / "config.json"
    if not config.exists():
        return html.paragraph("No config.json.")
    # the file's own text: exactly what the run was configured with
    return html.collapsible("config (config.json)", html.preformatted(config.read_text(encoding="utf-8")))


def _code_version(path: Path) -> str:
    run = _read_json(path / "run.json")
    if run is None:
        return html.paragraph("No run.json: code version unknown.")
    rows = [{"field": k, "value": _format(run.get(k))} for k in ("git_commit", "status", "updated")]
    if run.get("error"):
        rows.append({"field": "error", "value": str(run["error"])})
    rows += [{"field": f"version: {k}", "value": _format(v)} for k, v in (run.get("versions") or {}).items()]
    commit = run.get("git_commit") or "unknown"
    return html.collapsible(f"code version: git {commit}, status {run.get('status')}", html.table(rows))


def _token_views(path: Path, run_index: int) -> str:
    views = read_token_views(path / TOKEN_VIEWS_FILE)
    blocks = "".join(token_view_html(v, element_id=f"tv-{run_index}-{i}") for i, v in enumerate(views))
    return f"<h3>Token views</h3>{blocks}"


def _forest(findings: Sequence[Mapping]) -> str:
    """The findings at a glance: every effect with its interval and bound, verdicts as colour."""
    import io

    from viz.figures import forest, forest_data, save

    if forest_data(findings).empty:
        return ""
    buffer = io.BytesIO()
    save(forest(findings), buffer, format="png")
    return _image(buffer.getvalue(), "every finding: effect, 95% interval, bound (dashed), null (grey)")


def report_html(
    title: str, findings: Sequence[Mapping[str, str]], run_paths: Sequence[Path], *, intro: str = ""
) -> str:
    """The report page; the CircuitsVis bundle is inlined once, and only if a run has token views."""
    rows = [{k: r.get(k, "") for k in FINDING_COLUMNS} for r in findings]  # older runs: no estimate
    overview = _forest(findings) + "".join(
        _figure(p) for p in run_paths if Path(p).parent.name == "directions"
        for p in [Path(p) / "figures" / "ablation_matrix.png"] if p.is_file()
    )  # fmt: skip
    sections = [("Findings", overview + (html.paragraph(intro) if intro else "") + html.table(rows))]
    has_token_views = False
    for run_index, path in enumerate(Path(p) for p in run_paths):
        figures = "".join(_figure(p) for p in sorted((path / "figures").glob("*.png")))
        body = (
            html.paragraph(f"run folder: {path}")
            + figures
            + _results(path)
            + _config(path)
            + _code_version(path)
        )
        if (path / TOKEN_VIEWS_FILE).exists():
            body += _token_views(path, run_index)
            has_token_views = True
        sections.append((f"{path.parent.name} / {path.name}", body))
    return html.page(title, sections, inline_scripts=[circuitsvis_bundle()] if has_token_views else [])


def write_report(path: str | Path, title: str, findings, run_paths, *, intro: str = "") -> Path:
    """Write `report_html(...)` to `path` atomically and return the path."""
    page = report_html(title, findings, [Path(p) for p in run_paths], intro=intro)
    return html.write_atomic(path, page)


def recorded_findings(run_paths: Sequence[Path]) -> tuple[list[dict], str]:
    """The finding rows the experiments wrote into the run folders (`findings.json`), and a note
    naming the folders that hold none."""
    rows, without = [], []
    for path in run_paths:
        recorded = _read_json(Path(path) / FINDINGS_FILE)
        if recorded is None:
            without.append(str(path))
        else:
            rows += recorded
    note = ""
    if without:
        note = (
            f"No findings recorded in {', '.join(without)}: experiments write {FINDINGS_FILE} when a run "
            "of a known experiment finishes; `python -m experiments.summary RUN... --report OUT` "
            "computes them for runs made before."
        )
    return rows, note


def main(argv: Sequence[str] | None = None) -> Path:
    import argparse

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("runs", nargs="+", help="run folders, or folders holding them (e.g. an --out root)")
    parser.add_argument("--out", required=True, help="where to write the HTML report")
    parser.add_argument("--title", default="misalign-lens report")
    args = parser.parse_args(argv)
    try:
        paths = find_run_folders(args.runs)
    except FileNotFoundError as err:
        parser.error(str(err))
    if not paths:
        parser.error(
            f"nothing to render in {', '.join(args.runs)}: looked for run folders ({RUN_FOLDER_RULE}) "
            "there and in every folder below"
        )
    rows, intro = recorded_findings(paths)
    out = write_report(args.out, args.title, rows, paths, intro=intro)
    print(out)  # noqa: T201 - the command line's output, not library code
    return out


if __name__ == "__main__":
    main()
