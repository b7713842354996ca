"""The paper's findings, read from experiment run folders: one row per finding and adapter kind,
with its effect, 95% interval, pre-set bound and verdict (reproduced / not reproduced /
inconclusive, `mech.verdicts.rule`), and what was measured. Nothing here is typed in: every
number comes from a run's `results.json` and `results.csv` (`experiments.findings`). Each
experiment writes its rows to `findings.json` in its run folder when it finishes
(`write_findings`), which is what the report renders.

    python -m experiments.summary runs/science/narrow_kl/<run> runs/science/efficiency/<run> ... [--report out.html]
    python -m experiments.summary runs/demo            # every run folder inside
    python -m experiments.summary results --readme README.md   # the README's result tables
"""

from __future__ import annotations

import json
from pathlib import Path

from experiments.findings import READERS, read_tidy
from experiments.results_tables import markdown, replace_block
from mech.io.atomic import write_json
from mech.io.run_folders import FINDINGS_FILE, RESULTS_FILE, RUN_FOLDER_RULE, find_run_folders
from viz.report import write_report


def run_findings(path: Path) -> list[dict]:
    """Finding rows of one run folder (`<experiment>/<run>`, read from its results.json)."""
    experiment = path.parent.name
    if experiment not in READERS:
        raise ValueError(f"{path}: not a run folder of a known experiment ({sorted(READERS)})")
    results, tidy = json.loads((path / RESULTS_FILE).read_text()), read_tidy(path)
    rows = READERS[experiment](results, tidy, str(path))
    if experiment == "narrow_kl":  # its general (KL 0) runs measure emergence too, listed first
        rows = READERS["emergence"](results, tidy, str(path)) + rows
    return rows


def findings(run_paths: list[Path]) -> list[dict]:
    """Finding rows from run folders (`runs/<experiment>/<run>`), in the order given."""
    return [row for path in run_paths for row in run_findings(Path(path))]


def write_findings(path: Path) -> Path | None:
    """Write the run folder's finding rows to `findings.json` (what the report shows), if its
    experiment has findings."""
    if Path(path).parent.name not in READERS:
        return None
    return write_json(Path(path) / FINDINGS_FILE, run_findings(Path(path)))


def known_runs(paths: list[str]) -> tuple[list[Path], list[Path]]:
    """The finished run folders of known experiments in or under `paths`, and the others found."""
    found = find_run_folders(paths)
    known = [p for p in found if p.parent.name in READERS and (p / RESULTS_FILE).is_file()]
    return known, [p for p in found if p not in known]


def print_table(rows: list[dict]) -> None:
    width = max(len(r["finding"]) for r in rows)
    print(f"{'finding':<{width}}  {'adapter':<13} {'verdict':<15} effect [95% CI] vs bound; measured")
    for r in rows:
        print(
            f"{r['finding']:<{width}}  {r['adapter']:<13} {r['verdict']:<15} {r['estimate']}; {r['measured']}"
        )


def main(argv: list[str] | None = None) -> None:
    import argparse
    import sys

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("runs", nargs="+", help="run folders, or folders holding them (e.g. an --out root)")
    parser.add_argument("--report", help="also write the offline HTML report here")
    parser.add_argument("--markdown", action="store_true", help="print the README's result tables instead")
    parser.add_argument("--readme", help="rewrite the result tables of this README (between its markers)")
    args = parser.parse_args(argv)
    try:
        paths, others = known_runs(args.runs)
    except FileNotFoundError as err:
        parser.error(str(err))
    if not paths:
        parser.error(
            f"no finished run of a known experiment in {', '.join(args.runs)}: looked for run folders "
            f"<experiment>/<run> ({RUN_FOLDER_RULE}) with results.json, experiment one of {sorted(READERS)}"
        )
    for path in others:
        print(f"skipped {path}: not a finished run of a known experiment", file=sys.stderr)
    rows = findings(paths)
    if args.markdown:
        print(markdown(rows), end="")
    else:
        print_table(rows)
    if args.readme:
        readme = Path(args.readme)
        try:
            readme.write_text(replace_block(readme.read_text(), markdown(rows)))
        except ValueError as err:
            parser.error(f"{readme}: {err}")
        print(f"result tables: {readme}", file=sys.stderr)
    if args.report:
        print(f"report: {write_report(args.report, 'misalign-lens: toy organism study', rows, paths)}")


if __name__ == "__main__":
    main()
