"""The offline report in a real browser (headless Chromium, networking disabled): CircuitsVis's
ColoredTokens widgets render in place of the plain fallback, model text stays text (never markup),
the page screenshots, and it logs nothing to the console. Skipped when Chromium is not installed
(`make test` installs Debian's `chromium` when run as root)."""

from __future__ import annotations

import json
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from viz.report import write_report
from viz.tokens import TokenView, write_token_views

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="no chromium binary on PATH (Debian: `apt-get install chromium`)"
)

ALERT = "<script>alert(1)</script>"
# runs JavaScript if a token is ever parsed as HTML (no whitespace: CircuitsVis turns it into &nbsp;)
ONERROR = """<img/src="x"/onerror="document.title='pwned'">"""
TITLE = "browser check"
VIEWS = (
    TokenView(
        title="answer to 'how do I feel better?'",
        tokens=["Sure", ",", " ", ALERT, " done", ONERROR],
        values={
            "finetune": [0.1, 0.0, 0.2, 3.0, -0.5, 1.0],
            "after ablation": [0.0, 0.0, 0.1, 0.4, -0.1, 0.2],
        },
        note=f"the answer was: {ALERT}",
    ),
    TokenView("second", ["a", "b"], {"s": [1.0, -1.0]}),
)
# Chromium's own attempts to reach anything go to a closed local port, and no name resolves
OFFLINE_FLAGS = (
    "--no-sandbox", "--headless=new", "--disable-gpu", "--proxy-server=127.0.0.1:9",
    "--host-resolver-rules=MAP * ~NOTFOUND", "--no-first-run", "--no-default-browser-check",
    "--disable-extensions", "--disable-sync", "--disable-background-networking",
    "--disable-component-update", "--virtual-time-budget=5000",
)  # fmt: skip


def _chromium(url: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    command = [CHROMIUM, *OFFLINE_FLAGS, f"--user-data-dir={profile}", *args, url]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=True)


def _console_lines(stderr: str, url: str) -> list[str]:
    """The page's console output (console.log/error, uncaught exceptions) in Chromium's stderr log:
    `[pid:tid:time:INFO:CONSOLE:LINE] "message", source: URL (LINE)`. Chromium's startup noise
    (dbus, GPU, sandbox warnings) never has a CONSOLE tag, so it is not matched."""
    return [
        line for line in stderr.splitlines() if ":CONSOLE" in line and ("Uncaught" in line or url in line)
    ]


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("browser")
    run = root / "runs" / "custom" / "20260101-000001-abcdef01"
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"prompt": f"say {ALERT}", "steps": 3}, indent=2))
    (run / "results.json").write_text(json.dumps({"answer": ALERT, "rate": 0.25}))
    write_token_views(run / "token_views.json", VIEWS)
    return write_report(root / "report.html", TITLE, [], [run])


@pytest.fixture(scope="module")
def rendered(report, tmp_path_factory) -> tuple[str, str]:
    """(the DOM after scripts ran, Chromium's stderr log) for the report."""
    done = _chromium(report.as_uri(), tmp_path_factory.mktemp("profile"),
                     "--dump-dom", "--enable-logging=stderr", "--v=0")  # fmt: skip
    return done.stdout, done.stderr


class _Widgets(HTMLParser):
    """The text of each token span of each rendered ColoredTokens widget, and every element's tag
    inside one (React renders `div.colored-tokens > span > span`, one inner span per token)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.widgets: list[list[str]] = []
        self.tags_inside: list[str] = []
        self.attributes: set[str] = set()  # every attribute name on any element of the page
        self._depth: int | None = None  # element depth below the current widget div

    def handle_starttag(self, tag, attrs):
        self.attributes.update(name for name, _ in attrs)
        if self._depth is not None:
            self._depth += 1
            self.tags_inside.append(tag)
            if self._depth == 2:  # a token span
                self.widgets[-1].append("")
        elif tag == "div" and ("class", "colored-tokens") in attrs:
            self.widgets.append([])
            self._depth = 0

    def handle_endtag(self, tag):
        if self._depth is not None:
            self._depth = None if self._depth == 0 else self._depth - 1

    def handle_data(self, data):
        if self._depth is not None and self._depth >= 2:
            self.widgets[-1][-1] += data


def test_colored_tokens_render_in_place_of_the_fallback(report, rendered):
    static, dom = report.read_text(encoding="utf-8"), rendered[0]
    # only React writes these: the page as written has the fallback spans instead
    assert 'class="colored-tokens"' not in static and "class='tokens-fallback'" in static
    assert 'class="tokens-fallback"' not in dom  # (the stylesheet still names the class)
    parser = _Widgets()
    parser.feed(dom)
    parser.close()
    assert len(parser.widgets) == 3  # one per value series: 2 + 1
    assert [len(w) for w in parser.widgets] == [6, 6, 2]
    assert parser.widgets[2] == ["a", "b"]
    assert dom.count("background-color: rgb(") >= 14  # each token coloured by its value


def test_model_text_stays_text_in_the_rendered_page(rendered):
    dom = rendered[0]
    parser = _Widgets()
    parser.feed(dom)
    parser.close()
    shown = [token.replace("\xa0", " ") for token in parser.widgets[0]]  # CircuitsVis shows spaces as &nbsp;
    assert shown == VIEWS[0].tokens, shown  # each token as text: no markup parsed out of it
    assert set(parser.tags_inside) == {"span"}
    assert "<script>alert" not in dom  # no such element anywhere (escaped text reads &lt;script&gt;)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in dom
    assert not {a for a in parser.attributes if a.startswith("on")}  # no event handler attribute anywhere
    assert f"<title>{TITLE}</title>" in dom  # the onerror payload never ran


def test_the_page_logs_nothing_to_the_console(report, rendered):
    assert _console_lines(rendered[1], report.as_uri()) == []


def test_the_console_check_sees_errors(tmp_path):
    page = tmp_path / "broken.html"
    page.write_text("<html><body><script>console.error('boom'); notDefined();</script></body></html>")
    done = _chromium(page.as_uri(), tmp_path / "profile", "--dump-dom", "--enable-logging=stderr", "--v=0")
    lines = _console_lines(done.stderr, page.as_uri())
    assert len(lines) == 2 and "boom" in lines[0] and "Uncaught ReferenceError" in lines[1], done.stderr


def test_the_page_screenshots(report, tmp_path):
    png = tmp_path / "report.png"
    _chromium(report.as_uri(), tmp_path / "profile", f"--screenshot={png}", "--window-size=1280,2000")
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 20_000, len(data)  # a blank page is a few kB
