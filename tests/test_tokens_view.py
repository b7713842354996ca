"""Token views: props cannot break out of their <script>, text is escaped, ids are deterministic,
bad input fails naming the series or file, and token_views.json round-trips."""

from __future__ import annotations

import html
import json
import re

import pytest

from viz.tokens import (
    TokenView,
    circuitsvis_bundle,
    read_token_views,
    script_safe,
    token_view_html,
    write_token_views,
)

HOSTILE = ["Sure", "</script><script>alert(1)</script>", '"quotes" & <b>', "</SCRIPT >", "<!--", "\u2028"]


def _view() -> TokenView:
    return TokenView(
        title="answer <i>1</i>",
        tokens=HOSTILE,
        values={"finetune": [0.5, 2.0, -1.0, 0.0, 0.1, 0.2], "after <ablation>": [0, 0, 0, 0, 0, 1]},
        note="note & 'quote'",
    )


def _scripts(page: str) -> list[str]:
    return re.findall(r"<script>(.*?)</script>", page, flags=re.DOTALL)


def test_hostile_tokens_stay_inside_their_script_and_show_escaped():
    page = token_view_html(_view(), element_id="tv-0-0")
    # every closing tag belongs to one of our scripts: no token closed one early
    assert page.lower().count("</script") == page.count("<script>") == 2
    assert "alert(1)</script>" not in page and "<!--" not in page and "<b>" not in page
    for script in _scripts(page):
        assert "<" not in script and ">" not in script
        call = re.fullmatch(r'if \(window\.CircuitsVis\) \{ CircuitsVis\.render\("(.+?)", CircuitsVis\.ColoredTokens, (.*)\); \}', script)  # fmt: skip
        assert call, script
        props = json.loads(call.group(2))
        # ColoredTokens inserts tokens as HTML, so they travel HTML-escaped and show as the exact text
        assert props["tokens"] == [html.escape(t) for t in HOSTILE]
        assert (props["minValue"], props["maxValue"]) == (-1.0, 2.0)  # shared over both series
    assert "&lt;/script&gt;&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&quot;quotes&quot; &amp; &lt;b&gt;" in page
    assert "answer &lt;i&gt;1&lt;/i&gt;" in page and "note &amp; &#x27;quote&#x27;" in page
    assert "after &lt;ablation&gt;" in page


def test_ids_are_deterministic_and_derived_from_the_element_id():
    first, second = (token_view_html(_view(), element_id="tv-3-1") for _ in range(2))
    assert first == second
    assert re.findall(r"id='([^']+)'", first) == ["tv-3-1", "tv-3-1-0", "tv-3-1-1"]
    assert token_view_html(_view(), element_id="tv-3-2") != first
    with pytest.raises(ValueError, match="element_id"):
        token_view_html(_view(), element_id="1 bad'id")


def test_fallback_lists_every_token_with_its_value():
    page = token_view_html(TokenView("t", ["a", "b"], {"s": [1.0, -0.25]}), element_id="v")
    assert "<span class='token' title='s: 1'>a</span><span class='token' title='s: -0.25'>b</span>" in page


def test_a_series_of_the_wrong_length_names_the_series():
    with pytest.raises(ValueError, match=r"values\['after ablation'\] has 2 values for 3 tokens"):
        TokenView("t", ["a", "b", "c"], {"finetune": [1, 2, 3], "after ablation": [1, 2]})
    with pytest.raises(ValueError, match=r"values\['s'\]\[1\] must be a finite number"):
        TokenView("t", ["a", "b"], {"s": [1.0, float("nan")]})
    with pytest.raises(ValueError, match=r"tokens\[0\] must be a string"):
        TokenView("t", [1], {"s": [1.0]})  # type: ignore[list-item]


def test_write_then_read_round_trips(tmp_path):
    views = [_view(), TokenView("plain", ["x"], {"s": [3]})]
    path = write_token_views(tmp_path / "run" / "token_views.json", views)
    assert read_token_views(path) == views
    assert [p.name for p in path.parent.iterdir()] == ["token_views.json"]  # no temp file left
    assert read_token_views(path)[1].values == {"s": [3.0]} and read_token_views(path)[1].note == ""


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("[{", "not valid JSON"),
        ('{"title": "t"}', "expected a list"),
        ('[{"title": "t", "tokens": ["a"]}]', r"view 0: missing field\(s\) \['values'\]"),
        ('[{"title": "t", "tokens": ["a"], "values": {"s": [1]}, "colour": 1}]', "unknown field"),
        (
            '[{"title": "t", "tokens": ["a", "b"], "values": {"s": [1]}}]',
            r"view 0: values\['s'\] has 1 values",
        ),
    ],
)
def test_a_malformed_file_error_names_the_file_and_the_problem(tmp_path, text, problem):
    path = tmp_path / "token_views.json"
    path.write_text(text)
    with pytest.raises(ValueError, match=problem) as err:
        read_token_views(path)
    assert str(path) in str(err.value)


def test_the_bundle_is_script_safe_and_defines_the_global():
    bundle = circuitsvis_bundle()
    assert "var CircuitsVis=" in bundle and "ColoredTokens" in bundle
    assert "</script" not in bundle.lower() and "<!--" not in bundle and "sourceMappingURL" not in bundle
    assert script_safe('x="</Script>"; y="<!--"') == 'x="<\\/Script>"; y="<\\x21--"'


def test_attention_heads_widget_escapes_tokens_and_checks_shapes():
    from viz.tokens import attention_heads_html

    tokens = ["<b>", "x", "</script>"]
    pattern = [[1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [0.2, 0.3, 0.5]]
    page = attention_heads_html(tokens, [pattern, pattern], ["L0H0", "L0H1"], element_id="att-0")
    assert page.lower().count("</script") == 1 and "<b>" not in page
    assert "CircuitsVis.AttentionHeads" in page and "id='att-0'" in page
    with pytest.raises(ValueError, match="not 3 x 3"):
        attention_heads_html(tokens, [pattern[:2]], ["L0H0"], element_id="att-0")
    with pytest.raises(ValueError, match="head names"):
        attention_heads_html(tokens, [pattern], ["a", "b"], element_id="att-0")
