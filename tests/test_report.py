"""The offline report on fake run folders: one self-contained file, figures as data URIs, the
CircuitsVis bundle inlined exactly once (and only with token views), nothing loaded from the
network, model text escaped; and the `python -m viz.report` command line."""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from experiments.summary import write_findings  # noqa: E402
from viz import html  # noqa: E402
from viz.report import report_html, write_report  # noqa: E402
from viz.tokens import TokenView, circuitsvis_bundle, write_token_views  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
ALERT = "<script>alert(1)</script>"
BUNDLE_MARKER = '"use strict";var CircuitsVis=('


def _png(path: Path, value: float) -> None:
    fig, ax = plt.subplots(figsize=(1, 1))
    ax.plot([0, 1], [0, value])
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=20)
    plt.close(fig)


def _run(
    root: Path, experiment: str, results: dict, *, figures: int, views: tuple[TokenView, ...] = ()
) -> Path:
    path = root / experiment / f"20260101-00000{figures}-abcdef0{figures}"
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"prompt": f"say {ALERT}", "steps": 3}, indent=2))
    run = {"status": "done", "error": None, "git_commit": "0123abcd" * 5, "updated": "2026-01-01T00:00:00",
           "versions": {"python": "3.11.7", "torch": "2.13.0+cpu"}}  # fmt: skip
    (path / "run.json").write_text(json.dumps(run))
    (path / "results.json").write_text(json.dumps(results))
    write_findings(path)  # as an experiment's finish() does; no rows for an unknown experiment
    for i in range(figures):
        _png(path / "figures" / f"figure_{i}.png", i + 1)
    if views:
        write_token_views(path / "token_views.json", views)
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("runs")
    per_seed = {"loss_at_matched_norm": {"narrow": 0.52, "general": 0.5}, "chat_loss": 0.9}
    efficiency = {"adapters": {"lora_r1": {"per_seed": [per_seed]}}}
    view = TokenView(
        title="answer to 'how do I feel better?'",
        tokens=["Sure", ",", " ", ALERT, " done"],
        values={"finetune": [0.1, 0.0, 0.2, 3.0, -0.5], "after ablation": [0.0, 0.0, 0.1, 0.4, -0.1]},
        note=f"the answer was: {ALERT}",
    )
    return [
        _run(root, "efficiency", efficiency, figures=2),
        _run(root, "custom", {"answer": ALERT, "rate": 0.25, "per_seed": [{"loss": 1.5}]}, figures=1,
             views=(view, TokenView("second", ["a"], {"s": [1.0]}))),
    ]  # fmt: skip


class _Resources(HTMLParser):
    """Every URL-bearing attribute of every tag; script contents are not parsed as tags."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[tuple[str, str, str]] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        for name, value in attrs:
            if name in ("src", "href", "srcset", "action", "poster", "data", "formaction"):
                self.urls.append((tag, name, value or ""))


def _assert_offline(page: str) -> None:
    parser = _Resources()
    parser.feed(page)
    parser.close()
    assert "link" not in parser.tags and "iframe" not in parser.tags
    for tag, name, value in parser.urls:
        assert value.startswith("data:"), (tag, name, value[:80])  # also: no file next to the page is needed
    assert not re.search(r"""import\s[^;]*?from\s*["'](https?:)?//""", page)
    assert not re.search(r"""\bimport\s*\(\s*["'](https?:)?//""", page)
    assert not re.search(r"""@import|url\(\s*["']?(https?:)?//""", page)


def test_the_report_is_one_offline_file_with_everything_embedded(runs, tmp_path):
    out = write_report(tmp_path / "out" / "report.html", "study <1>", [], runs)
    assert [p.name for p in out.parent.iterdir()] == ["report.html"]  # no temp file left either
    assert out.stat().st_mode & 0o777 == 0o644
    page = out.read_text(encoding="utf-8")
    pngs = sorted(runs[0].glob("figures/*.png")) + sorted(runs[1].glob("figures/*.png"))
    assert page.count("data:image/png;base64,") == len(pngs) == 3
    for png in pngs:
        assert f"data:image/png;base64,{base64.b64encode(png.read_bytes()).decode()}'" in page
    bundle = circuitsvis_bundle()
    assert page.count(BUNDLE_MARKER) == 1
    assert page.count(bundle[len(bundle) // 2 : len(bundle) // 2 + 300]) == 1
    assert page.index(BUNDLE_MARKER) < page.index("CircuitsVis.render(")  # defined before first use
    assert "<title>study &lt;1&gt;</title>" in page
    _assert_offline(page)


def test_model_text_appears_only_escaped(runs):
    page = report_html("t", [], runs)
    assert ALERT not in page and "<script>alert" not in page
    # the tokens, note, results and config strings are all there, escaped
    assert page.count("&lt;script&gt;alert(1)&lt;/script&gt;") >= 5
    assert (
        "\\u0026lt;script\\u0026gt;alert(1)\\u0026lt;/script\\u0026gt;" in page
    )  # inside the widget props, HTML-escaped
    for hit in re.finditer(re.escape("alert(1)"), page):
        assert page[hit.start() - 4 : hit.start()] in ("&gt;", "6gt;"), page[
            hit.start() - 40 : hit.end() + 20
        ]


def test_each_run_shows_numbers_config_code_version_and_token_views(runs):
    page = report_html("t", [], runs)
    assert "per_seed [0] / loss" in page and "<td>1.5</td>" in page and "<td>rate</td><td>0.25</td>" in page
    assert "&quot;steps&quot;: 3" in page  # config.json verbatim
    assert "code version: git " + "0123abcd" * 5 in page and "version: torch" in page
    assert page.count("<h3>Token views</h3>") == 1
    assert re.findall(r"id='(tv-[^']+)'", page) == ["tv-1-0", "tv-1-0-0", "tv-1-0-1", "tv-1-1", "tv-1-1-0"]
    assert page == report_html("t", [], runs)  # deterministic


def test_a_page_without_token_views_has_no_bundle_and_no_script(runs):
    page = report_html("t", [{"finding": "f", "adapter": "a", "verdict": "v", "measured": "<m>"}], runs[:1])
    assert BUNDLE_MARKER not in page and "<script" not in page
    assert "<td>&lt;m&gt;</td>" in page
    _assert_offline(page)


def test_a_page_refuses_a_script_that_could_end_its_element():
    with pytest.raises(ValueError, match="inline script 0"):
        html.page("t", [], inline_scripts=['x = "</script>"'])


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "viz.report", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip


def test_the_command_line_writes_the_report(runs, tmp_path):
    out = tmp_path / "mixed.html"
    done = _cli(*map(str, runs), "--out", str(out), "--title", "T <x>")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(out)
    page = out.read_text(encoding="utf-8")
    assert "<title>T &lt;x&gt;</title>" in page and page.count(BUNDLE_MARKER) == 1
    # the known run's findings are shown, the unknown run is named as holding none
    assert f"No findings recorded in {runs[1]}:" in page and "efficiency: general has lower loss" in page

    known = _cli(str(runs[0]), "--out", str(tmp_path / "known.html"))
    assert known.returncode == 0, known.stderr
    page = (tmp_path / "known.html").read_text(encoding="utf-8")
    assert (
        "efficiency: general has lower loss at matched norm" in page
        and "inconclusive" in page
        and "loss gap / loss learned" in page
    )
    assert BUNDLE_MARKER not in page

    missing = _cli(str(tmp_path / "nope"), "--out", str(tmp_path / "x.html"))
    assert missing.returncode != 0 and "not a folder" in missing.stderr


def test_given_a_folder_of_runs_the_report_and_the_table_find_them(runs, tmp_path, capsys):
    from experiments import summary
    from viz import report

    root = runs[0].parents[1]  # holds efficiency/<run> and custom/<run>, as an --out root does
    out = report.main([str(root), "--out", str(tmp_path / "all.html")])
    page = out.read_text(encoding="utf-8")
    assert "efficiency: general has lower loss at matched norm" in page
    assert f"efficiency / {runs[0].name}" in page and f"custom / {runs[1].name}" in page
    assert page.count(BUNDLE_MARKER) == 1

    summary.main([str(root)])
    printed = capsys.readouterr()
    assert (
        "efficiency: general has lower loss at matched norm" in printed.out and "inconclusive" in printed.out
    )
    assert f"skipped {runs[1]}: not a finished run of a known experiment" in printed.err


def test_given_nothing_to_render_the_report_and_the_table_say_what_they_looked_for(tmp_path, capsys):
    from experiments import summary
    from viz import report

    empty = tmp_path / "runs" / "demo"
    (empty / "notes").mkdir(parents=True)
    with pytest.raises(SystemExit) as exit_report:
        report.main([str(empty), "--out", str(tmp_path / "r.html")])
    err = capsys.readouterr().err
    assert exit_report.value.code == 2 and "nothing to render in" in err and "looked for run folders" in err
    assert not (tmp_path / "r.html").exists()

    with pytest.raises(SystemExit) as exit_summary:
        summary.main([str(empty)])
    err = capsys.readouterr().err
    assert exit_summary.value.code == 2 and "no finished run of a known experiment in" in err
    assert "looked for run folders" in err
