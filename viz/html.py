"""Minimal self-contained HTML pages: every piece of text is escaped, nothing is loaded from the
network. Model-generated text can contain anything, including markup."""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mech.io.atomic import write_text

_STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem}"
    "table{border-collapse:collapse;margin:1rem 0}td,th{border:1px solid #ccc;padding:.3rem .6rem;"
    "text-align:left}th{background:#f4f4f4}code,pre{background:#f7f7f7}"
    "pre{padding:.5rem;overflow-x:auto}details{margin:.5rem 0}summary{cursor:pointer}"
    ".token-series{margin:.5rem 0}.token-series-label{font-size:.85rem;color:#555}"
    ".tokens-fallback{white-space:pre-wrap;font-family:monospace}"
    ".tokens-fallback .token{border-right:1px solid #ddd}"
)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return html.escape(str(value))


def table(rows: Sequence[Mapping[str, Any]]) -> str:
    """An HTML table from records with the same keys."""
    if not rows:
        return "<p><em>(no rows)</em></p>"
    columns = list(rows[0])
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{_cell(r.get(c, ''))}</td>" for c in columns) + "</tr>" for r in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def page(title: str, sections: Sequence[tuple[str, str]], *, inline_scripts: Sequence[str] = ()) -> str:
    """A full page; each section is (heading, already-rendered HTML body).

    `inline_scripts` are JavaScript sources placed in <head>, in order, before the body's scripts run.
    """
    parts = [f"<h2>{html.escape(heading)}</h2>{body}" for heading, body in sections]
    scripts = []
    for i, js in enumerate(inline_scripts):
        # either would end (or stop ending) the element early; viz.tokens.script_safe removes both
        if "</script" in js.lower() or "<!--" in js:
            raise ValueError(f"inline script {i} contains '</script' or '<!--'; make it script-safe first")
        scripts.append(f"<script>{js}</script>")
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{_STYLE}</style>{''.join(scripts)}</head>"
        f"<body><h1>{html.escape(title)}</h1>{''.join(parts)}</body></html>"
    )


def paragraph(text: str) -> str:
    return f"<p>{html.escape(text)}</p>"


def escape_text(text: str) -> str:
    return html.escape(text)


def preformatted(text: str) -> str:
    """Text shown verbatim (escaped) in a <pre> block."""
    return f"<pre>{html.escape(text)}</pre>"


def collapsible(summary: str, body: str, *, expanded: bool = False) -> str:
    """A <details> block: `summary` is text (escaped), `body` already-rendered HTML."""
    return f"<details{' open' if expanded else ''}><summary>{html.escape(summary)}</summary>{body}</details>"


def write_atomic(path: str | Path, text: str) -> Path:
    """Write a UTF-8 text file via a temp file and a rename, so readers never see half a file."""
    return write_text(path, text)
