"""`notebooks/hook_debugging.ipynb` runs top to bottom on the shipped toy organism (nbclient, in a
kernel of this very interpreter), so the notebook cannot rot. It is stored without outputs."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

nbclient = pytest.importorskip("nbclient", reason="nbclient not installed: `pip install -e '.[dev]'`")
nbformat = pytest.importorskip("nbformat", reason="nbformat not installed: `pip install -e '.[dev]'`")

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "hook_debugging.ipynb"


def _text(cell) -> str:
    """Everything a code cell printed or displayed, as text."""
    parts = []
    for out in cell.get("outputs", []):
        if out["output_type"] == "stream":
            parts.append(out["text"])
        elif out["output_type"] in ("execute_result", "display_data"):
            parts += [str(v) for k, v in out["data"].items() if k in ("text/plain", "text/html")]
    return "".join(parts)


def test_the_notebook_is_stored_without_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code)


@pytest.mark.seconds(12)
def test_the_hook_debugging_notebook_runs(monkeypatch):
    # the kernel inherits the environment: one thread, and the hub stays offline
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    # "python3" is ipykernel's own spec; jupyter_client launches it with sys.executable, this venv
    client = nbclient.NotebookClient(
        nb, kernel_name="python3", timeout=120, resources={"metadata": {"path": str(REPO)}}
    )
    client.execute()  # raises CellExecutionError, with the traceback, if a cell fails

    code = [c for c in nb.cells if c.cell_type == "code"]
    errors = [o for c in code for o in c.outputs if o["output_type"] == "error"]
    assert not errors, errors
    assert all(c.execution_count for c in code)
    text = [_text(c) for c in code]
    assert repr(sys.prefix) in text[0]  # the kernel ran this interpreter, not another Python
    assert "blocks.2.hook_resid_pre" in text[1] and "blocks.3.hook_resid_post" in text[1]
    assert "(1, 1, " in text[3]  # cache_residuals: [layer batch pos d_model]
    assert "p_bad" in text[5] and "direction ablated" in text[5]
    token_view = text[6]
    assert "var CircuitsVis=" in token_view and "CircuitsVis.ColoredTokens" in token_view
    assert "id='hook-debugging-1'" in token_view and "after stream ablation" in token_view
    assert "<script src" not in token_view  # the bundle is inlined, never fetched
