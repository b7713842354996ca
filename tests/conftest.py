"""Shared fixtures: tiny models built in-process, tiny real-architecture checkpoints written to a
temp dir, and a guard that makes any non-loopback network access fail the test."""

from __future__ import annotations

import os

# huggingface_hub reads these once, at import: set them before anything imports it.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
if os.environ.get("PYTEST_XDIST_WORKER"):
    # One thread per worker, so that workers share the cores instead of fighting over them; the
    # subprocesses a test starts inherit it.
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"

import random  # noqa: E402
import socket  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)

# The libraries come in before any module of mech or probes: while jaxtyping's import hook
# (--jaxtyping-packages) runs an instrumented module it renames the bytecode cache, so a library
# first imported from inside one would be compiled from source (10-15 s a process here).
import beartype  # noqa: E402, F401  (the hook's type checker)
import openai  # noqa: E402, F401
import transformer_lens  # noqa: E402, F401  (with transformers, datasets, pandas, scipy, sympy)

from mech._quiet import hooked_transformer, quiet_sae_lens_import  # noqa: E402

with quiet_sae_lens_import():
    import sae_lens  # noqa: E402, F401

from tiny_shape import DTYPES, TINY  # noqa: E402

from mech.models.load import load_model  # noqa: E402
from mech.models.tiny_checkpoints import write_tiny_checkpoint  # noqa: E402

_LOOPBACK = ("127.", "::1", "localhost")


def _guarded(connect):
    def guarded_connect(self, address, *args, **kwargs):
        host = address[0] if isinstance(address, tuple) else str(address)
        if self.family != socket.AF_UNIX and not str(host).startswith(_LOOPBACK):
            raise RuntimeError(f"test tried to reach the network: {address}")
        return connect(self, address, *args, **kwargs)

    return guarded_connect


@pytest.fixture(autouse=True, scope="session")
def no_network():
    """Tests run offline: the hub is unreachable and any outbound connection is an error."""
    mp = pytest.MonkeyPatch()
    mp.setattr(socket.socket, "connect", _guarded(socket.socket.connect))
    yield
    mp.undo()


@pytest.fixture(autouse=True)
def seed():
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


@pytest.fixture
def stub():
    """The loopback OpenAI-compatible server (`openai_stub.OpenAIStub`), fresh for each test."""
    from openai_stub import OpenAIStub

    server = OpenAIStub().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def tiny_model():
    """A 2-layer attention+MLP HookedTransformer with no tokenizer, for mechanism tests."""
    return hooked_transformer(
        dict(n_layers=2, d_model=32, n_heads=4, d_head=8, d_mlp=64, n_ctx=16, d_vocab=64,
             act_fn="gelu", normalization_type="RMS", seed=0)
    )  # fmt: skip


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    """Tiny random-weight Qwen2 and Gemma-2 checkpoints (3 layers) on disk."""
    root = tmp_path_factory.mktemp("checkpoints")
    # Realistic directory names: TransformerLens picks config branches by substrings like "gemma-2-".
    names = {"qwen2": "Qwen2.5-tiny-Instruct", "gemma2": "gemma-2-tiny-it"}
    return {arch: write_tiny_checkpoint(arch, root / name, n_layers=3) for arch, name in names.items()}


@pytest.fixture(scope="module", params=sorted(DTYPES))
def tiny_qwen2_shaped(request):
    """`tiny_shape.TINY` with random weights, in bf16 and in fp32 (one model per module)."""
    from benchmarks.memory.shapes import qwen2_model  # noqa: PLC0415

    return qwen2_model(TINY, dtype=DTYPES[request.param], device="cpu")


@pytest.fixture(scope="session")
def tiny_qwen2(checkpoints):
    return load_model(checkpoints["qwen2"])


@pytest.fixture(scope="session")
def tiny_gemma2(checkpoints):
    return load_model(checkpoints["gemma2"])


def _seconds(item: pytest.Item) -> float:
    marker = item.get_closest_marker("seconds")
    return float(marker.args[0]) if marker else 0.0


def pytest_collection_modifyitems(config, items):
    """Longest first (tests marked `seconds(N)`; the others keep their order, after them): with
    xdist handing out one test at a time (`--maxschedchunk 1`), no worker is left running a long
    test alone at the end."""
    items.sort(key=lambda item: -_seconds(item))
