"""Token views: model text coloured per token by one or more value series (e.g. a direction's
projection before and after ablation), stored as `token_views.json` in a run folder and rendered
offline with CircuitsVis's `ColoredTokens`. The CircuitsVis bundle is read from the installed
package and inlined once per page by the caller; nothing is loaded from the network."""

from __future__ import annotations

import functools
import html
import importlib.util
import json
import math
import numbers
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from viz.html import write_atomic

TOKEN_VIEWS_FILE = "token_views.json"
"""The file name a run folder stores its token views under."""

_ELEMENT_ID = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")  # CircuitsVis finds its div with querySelector("#id")
_FIELDS = ("title", "tokens", "values", "note")


@dataclass
class TokenView:
    """Tokens of one text with labelled value series over them, shown side by side on one colour scale.

    Series are checked and converted to lists of floats on construction; a ValueError names the bad field.
    """

    title: str
    tokens: list[str]
    values: dict[str, list[float]]
    """Label -> one value per token, e.g. {"finetune": [...], "after ablation": [...]}."""
    note: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.title, str):
            raise ValueError(f"title must be a string, got {type(self.title).__name__}")
        if not isinstance(self.note, str):
            raise ValueError(f"note must be a string, got {type(self.note).__name__}")
        if isinstance(self.tokens, str | bytes) or not isinstance(self.tokens, Iterable):
            raise ValueError(f"tokens must be a list of strings, got {type(self.tokens).__name__}")
        self.tokens = list(self.tokens)
        for i, token in enumerate(self.tokens):
            if not isinstance(token, str):
                raise ValueError(f"tokens[{i}] must be a string, got {type(token).__name__}")
        if not isinstance(self.values, Mapping) or not self.values:
            raise ValueError("values must be a non-empty mapping of label -> one value per token")
        self.values = {label: self._series(label, series) for label, series in self.values.items()}

    def _series(self, label: object, series: object) -> list[float]:
        if not isinstance(label, str):
            raise ValueError(f"values: label {label!r} must be a string")
        where = f"values[{label!r}]"
        if isinstance(series, str | bytes) or not isinstance(series, Iterable):
            raise ValueError(f"{where} must be a list of numbers, got {type(series).__name__}")
        numbers_ = list(series)
        if len(numbers_) != len(self.tokens):
            raise ValueError(f"{where} has {len(numbers_)} values for {len(self.tokens)} tokens")
        for i, value in enumerate(numbers_):
            # bool is an int to Python but never a measurement; NaN/inf are not valid JSON for the widget
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
                raise ValueError(f"{where}[{i}] must be a finite number, got {value!r}")
        return [float(v) for v in numbers_]

    def value_range(self) -> tuple[float, float]:
        """(min, max) over all series, widened so min < 0 < max: CircuitsVis colours negatives by
        value / min and positives by value / max, so a zero bound would divide by zero."""
        every = [v for series in self.values.values() for v in series]
        low, high = min(every, default=0.0), max(every, default=0.0)
        return (low if low < 0 else -1.0, high if high > 0 else 1.0)


def _view_from_record(record: object) -> TokenView:
    if not isinstance(record, Mapping):
        raise ValueError(f"must be an object with keys {list(_FIELDS)}, got {type(record).__name__}")
    unknown = sorted(set(record) - set(_FIELDS))
    if unknown:
        raise ValueError(f"unknown field(s) {unknown}; expected {list(_FIELDS)}")
    missing = [k for k in ("title", "tokens", "values") if k not in record]
    if missing:
        raise ValueError(f"missing field(s) {missing}")
    return TokenView(
        title=record["title"], tokens=record["tokens"], values=record["values"], note=record.get("note", "")
    )


def read_token_views(path: str | Path) -> list[TokenView]:
    """The views in a `token_views.json`: a list of {title, tokens, values, note}; note is optional."""
    path = Path(path)
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(records, list):
        raise ValueError(f"{path}: expected a list of token views, got {type(records).__name__}")
    views = []
    for i, record in enumerate(records):
        try:
            views.append(_view_from_record(record))
        except ValueError as err:
            raise ValueError(f"{path}: view {i}: {err}") from err
    return views


def write_token_views(path: str | Path, views: Iterable[TokenView]) -> Path:
    """Write views as `token_views.json` atomically (temp file + rename): readers never see half a file."""
    records = [{"title": v.title, "tokens": v.tokens, "values": v.values, "note": v.note} for v in views]
    text = json.dumps(records, indent=1, ensure_ascii=False, allow_nan=False)
    return write_atomic(path, text)


def script_safe(js: str) -> str:
    """JavaScript source made safe to inline in a <script> element, meaning unchanged: `</script`
    would end the element and `<!--` can stop a later `</script>` from ending it."""
    # `<\/` and `\x21` mean the same inside JS strings, regexes and template literals
    js = re.sub(r"</(script)", r"<\\/\1", js, flags=re.IGNORECASE)
    return js.replace("<!--", "<\\x21--")


@functools.cache
def circuitsvis_bundle() -> str:
    """The CircuitsVis browser bundle (defines the global `CircuitsVis`), ready to inline once per page."""
    # find_spec locates the package without importing it: `import circuitsvis` pulls in torch
    spec = importlib.util.find_spec("circuitsvis")
    if spec is None or spec.origin is None:
        raise RuntimeError("circuitsvis is not installed; token views need its browser bundle")
    bundle = Path(spec.origin).parent / "dist" / "cdn" / "iife.js"
    text = bundle.read_text(encoding="utf-8")
    # the source-map comment would make browser devtools request iife.js.map next to the page
    text = re.sub(r"^//# sourceMappingURL=.*$", "", text, flags=re.MULTILINE)
    return script_safe(text)


def _script_json(data: Any) -> str:
    """JSON that cannot end or confuse its <script>: `<`, `>` and `&` are written as \\u escapes."""
    text = json.dumps(data, ensure_ascii=True, allow_nan=False, separators=(",", ":"))
    # outside strings JSON never contains these characters, so replacing them only touches string contents
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _fallback(tokens: list[str], label: str, series: list[float]) -> str:
    """The tokens as plain text, each hovering its value: what the page shows if the script does not run."""
    spans = "".join(
        f"<span class='token' title='{html.escape(f'{label}: {value:.4g}')}'>{html.escape(token)}</span>"
        for token, value in zip(tokens, series, strict=True)
    )
    return f"<span class='tokens-fallback'>{spans}</span>"


def token_view_html(view: TokenView, *, element_id: str) -> str:
    """A block with the view's title, note and one ColoredTokens widget per value series.

    Widget divs get ids `<element_id>-<series index>`, so the same view and id give the same HTML.
    The page must inline `circuitsvis_bundle()` once before this block; without it the plain-text
    fallback stays.
    """
    if not _ELEMENT_ID.fullmatch(element_id):
        raise ValueError(f"element_id {element_id!r} must match {_ELEMENT_ID.pattern}")
    low, high = view.value_range()  # shared, so colours compare across the series
    parts = [f"<div class='token-view' id='{element_id}'><h4>{html.escape(view.title)}</h4>"]
    if view.note:
        parts.append(f"<p class='token-view-note'>{html.escape(view.note)}</p>")
    for i, (label, series) in enumerate(view.values.items()):
        widget_id = f"{element_id}-{i}"
        # ColoredTokens writes each token with dangerouslySetInnerHTML: escaped, a token stays text.
        tokens = [html.escape(token) for token in view.tokens]
        props = {"tokens": tokens, "values": series, "minValue": low, "maxValue": high}
        parts.append(
            f"<div class='token-series'><div class='token-series-label'>{html.escape(label)}</div>"
            f"<div class='token-widget' id='{widget_id}'>{_fallback(view.tokens, label, series)}</div>"
            # React replaces the fallback inside the div when the bundle is there
            f"<script>if (window.CircuitsVis) {{ CircuitsVis.render({_script_json(widget_id)}, "
            f"CircuitsVis.ColoredTokens, {_script_json(props)}); }}</script></div>"
        )
    parts.append("</div>")
    return "".join(parts)


def attention_heads_html(
    tokens: list[str], patterns: list[list[list[float]]], head_names: list[str], *, element_id: str
) -> str:
    """One attention-pattern widget (CircuitsVis `AttentionHeads`): `patterns[h][dest][src]` for each
    head named in `head_names`, over `tokens`. Like `token_view_html`, it needs the bundle on the page."""
    if not _ELEMENT_ID.fullmatch(element_id):
        raise ValueError(f"element_id {element_id!r} must match {_ELEMENT_ID.pattern}")
    n = len(tokens)
    if len(patterns) != len(head_names):
        raise ValueError(f"{len(patterns)} patterns for {len(head_names)} head names")
    for h, pattern in enumerate(patterns):
        if len(pattern) != n or any(len(row) != n for row in pattern):
            raise ValueError(
                f"pattern of head {head_names[h]!r} is not {n} x {n} (one row and column per token)"
            )
    props = {"tokens": [html.escape(t) for t in tokens], "attention": patterns,
             "attentionHeadNames": [html.escape(name) for name in head_names], "maskUpperTri": True}  # fmt: skip
    fallback = html.escape(" ".join(tokens))
    return (
        f"<div class='attention-view'><div class='attention-widget' id='{element_id}'>{fallback}</div>"
        f"<script>if (window.CircuitsVis) {{ CircuitsVis.render({_script_json(element_id)}, "
        f"CircuitsVis.AttentionHeads, {_script_json(props)}); }}</script></div>"
    )
