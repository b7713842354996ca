"""Minimal self-contained HTML pages: every piece of text is escaped, nothing is loaded from the
network. Model-generated text can contain anything, including markup."""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from typing import Any

_STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem}"
    "table{border-collapse:collapse;margin:1rem 0}td,th{border:1px solid #ccc;padding:.3rem .6rem;"
    "text-align:left}th{background:#f4f4f4}code,pre{background:#f7f7f7}"
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


def page(title: str, sections: Sequence[tuple[str, str]]) -> str:
    """A full page; each section is (heading, already-rendered HTML body)."""
    parts = [f"<h2>{html.escape(heading)}</h2>{body}" for heading, body in sections]
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>{''.join(parts)}</body></html>"
    )


def paragraph(text: str) -> str:
    return f"<p>{html.escape(text)}</p>"


def escape_text(text: str) -> str:
    return html.escape(text)
