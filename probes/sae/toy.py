"""The toy organism's SAE: its settings, training it on the organism's pre-training documents, and
the command line that ships it (`python -m probes.sae --train-toy`)."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import torch

from mech._quiet import quiet_sae_lens_import
from mech.io.atomic import write_json

with quiet_sae_lens_import():
    pass
from probes.sae.activations import token_activations
from probes.sae.analysis import evaluate_sae
from probes.sae.loading import save_sae, toy_sae_dir
from probes.sae.training import SaeTrainingConfig, train_sae

TOY_TRAIN_SEED, TOY_EVAL_SEED = 1, 2
"""`World.pretraining_sample` seeds: documents the toy SAE is trained on, and fresh ones to score it."""
TOY_HOOK = "blocks.2.hook_resid_pre"


"""The toy organism's middle layer (n_layers // 2 = 2), where its adapters enter block 2."""


# ----------------------------------------------------------------------------- the toy organism's SAE
def toy_sae_config(*, steps: int = 600, seed: int = 0) -> SaeTrainingConfig:
    """The shipped toy SAE's settings: 1024 TopK latents, k = 16, on the middle layer's resid_pre.

    Measured on 1 CPU thread: 600 steps of 4096 tokens take about two minutes and leave about 5%
    of the variance of fresh documents unexplained (see `metrics.json` next to the SAE).
    """
    return SaeTrainingConfig(
        hook_name=TOY_HOOK, d_sae=1024, architecture="topk", k=16, lr=2e-3, steps=steps,
        batch_tokens=4096, warmup_steps=50 if steps >= 250 else 0, seed=seed,
    )  # fmt: skip


def train_toy_sae(
    organism: str = "default",
    *,
    steps: int = 600,
    n_train_texts: int = 2000,
    n_eval_texts: int = 200,
    out: str | os.PathLike | None = None,
) -> Path:
    """Train the toy organism's SAE and write it, with `metrics.json`, to its `sae/` folder (or `out`)."""
    from mech.models.load import load_model
    from mech.toy.checkpoint import organism_world

    model = load_model("toy" if organism == "default" else f"toy:{organism}")
    world = organism_world(organism)
    cfg = toy_sae_config(steps=steps)
    started = time.perf_counter()
    sae = train_sae(model, world.pretraining_sample(n_train_texts, seed=TOY_TRAIN_SEED), cfg)
    seconds = time.perf_counter() - started
    eval_acts = token_activations(
        model, world.pretraining_sample(n_eval_texts, seed=TOY_EVAL_SEED), cfg.hook_name
    )
    folder = save_sae(sae, Path(out) if out is not None else toy_sae_dir(organism))
    metrics = {
        "organism": organism,
        "hook_name": cfg.hook_name,
        "config": asdict(cfg),
        "training_texts": n_train_texts,
        "activation_tokens": sae.cfg.metadata.n_activation_tokens,
        "training_tokens": cfg.training_tokens,
        "seconds": round(seconds, 1),
        "torch_threads": torch.get_num_threads(),
        "heldout": {"texts": n_eval_texts, "seed": TOY_EVAL_SEED, **evaluate_sae(sae, eval_acts).to_dict()},
        "final_training_window": {
            "l0": sae.cfg.metadata.l0,
            "dead_latents": sae.cfg.metadata.num_dead_features,
        },
    }
    write_json(folder / "metrics.json", metrics)
    return folder


def main(argv: Sequence[str] | None = None) -> None:
    import argparse
    import sys

    parser = argparse.ArgumentParser(
        prog="python -m probes.sae", description="Train SAEs with sae_lens, offline."
    )
    parser.add_argument("--train-toy", action="store_true", help="train and ship the toy organism's SAE")
    parser.add_argument("--organism", default="default", help="shipped toy organism (default: default)")
    parser.add_argument("--steps", type=int, default=600, help="optimiser steps of 4096 tokens")
    parser.add_argument("--texts", type=int, default=2000, help="pre-training documents to cache")
    parser.add_argument("--out", default=None, help="folder to write to (default: the organism's sae/)")
    args = parser.parse_args(argv)
    if not args.train_toy:
        parser.error("nothing to do: pass --train-toy")
    folder = train_toy_sae(args.organism, steps=args.steps, n_train_texts=args.texts, out=args.out)
    metrics = json.loads((folder / "metrics.json").read_text())
    sys.stdout.write(
        json.dumps({"out": str(folder), "seconds": metrics["seconds"], **metrics["heldout"]}) + "\n"
    )
