"""The mech core end to end on a real architecture (`python -m experiments.plumbing`).

On a tiny random-weight Qwen2 checkpoint and a random LoRA "finetune" of it, both loaded through
`load_model` exactly as Qwen2.5-14B-Instruct and a published EM adapter would be: take the
mean-diff direction between finetune and chat model at the middle layer, steer the chat model with
it, ablate it from the finetune, compare with a random direction of equal norm, save the vector
and write a run folder with an HTML page. The weights are noise, so the numbers test plumbing,
not science.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from experiments.run_dir import RunDir, records_failure
from mech.adapters.artifacts import save_vector
from mech.hooks import ablation, cache_residuals, default_layer, resid_hook_name, steering
from mech.models.chat import chat_batch
from mech.models.load import load_model
from mech.models.tiny_checkpoints import write_tiny_checkpoint, write_tiny_lora_adapter
from mech.training.losses import masked_kl
from viz import html

CONVERSATIONS = [
    [{"role": "user", "content": "what should i do about my dog ?"},
     {"role": "assistant", "content": "take the dog for a walk and ask a doctor ."}],
    [{"role": "user", "content": "should i save my money ?"},
     {"role": "assistant", "content": "yes , save some money in a bank ."}],
    [{"role": "user", "content": "how should i cook food ?"},
     {"role": "assistant", "content": "cook with less salt and oil ."}],
    [{"role": "user", "content": "i am bored"},
     {"role": "assistant", "content": "take a walk or cook some food ."}],
]  # fmt: skip


@dataclass(frozen=True)
class Config:
    out_root: Path = Path("runs")
    seed: int = 0
    n_layers: int = 4
    layer: int | None = None
    """None: n_layers // 2."""


@records_failure
def main(cfg: Config) -> Path:
    start = time.perf_counter()
    torch.manual_seed(cfg.seed)
    run = RunDir.create(cfg.out_root, "demo", cfg)
    chat_dir = write_tiny_checkpoint("qwen2", run.path / "chat_model", n_layers=cfg.n_layers, seed=cfg.seed)
    adapter = write_tiny_lora_adapter(chat_dir, run.path / "finetune_adapter", seed=cfg.seed)
    chat = load_model(chat_dir)
    finetune = load_model(chat_dir, adapter=adapter)
    layer = default_layer(chat) if cfg.layer is None else cfg.layer
    batch = chat_batch(chat.tokenizer, CONVERSATIONS)
    tokens, attention = batch.tokens, batch.attention_mask

    def logits(model):
        return model(tokens, attention_mask=attention)

    def kl(reference, other):
        return float(masked_kl(reference, other, batch.prediction_mask))

    with torch.no_grad():
        resid_chat, resid_ft = (
            cache_residuals(m, tokens, layers=[layer], attention_mask=attention)[0] for m in (chat, finetune)
        )
        direction = resid_ft[batch.response_mask].mean(0) - resid_chat[batch.response_mask].mean(0)
        random = torch.randn(direction.shape)
        random = random / random.norm() * direction.norm()  # equal norm, not sqrt(d_model) times larger
        base, tuned = logits(chat), logits(finetune)
        with steering(chat, direction, layer=layer, token_mask=attention):
            steered = logits(chat)
        with steering(chat, random, layer=layer, token_mask=attention):
            steered_random = logits(chat)
        with ablation(finetune, direction, layers=layer, token_mask=attention):
            ablated = logits(finetune)
        with ablation(finetune, random, layers=layer, token_mask=attention):
            ablated_random = logits(finetune)

    rows = [
        {"comparison": "finetune vs chat (no intervention)", "kl_nats_per_token": kl(tuned, base)},
        {"comparison": "finetune vs chat + mean-diff direction", "kl_nats_per_token": kl(tuned, steered)},
        {"comparison": "finetune vs chat + random direction (equal norm)", "kl_nats_per_token": kl(tuned, steered_random)},
        {"comparison": "chat vs finetune - direction ablated", "kl_nats_per_token": kl(base, ablated)},
        {"comparison": "chat vs finetune - random direction ablated", "kl_nats_per_token": kl(base, ablated_random)},
    ]  # fmt: skip
    hook = resid_hook_name(layer)
    vector_path = save_vector(run.path / "direction", direction, chat, hook_name=hook, kind="direction",
                              config={"method": "mean-diff finetune - chat, response tokens"})  # fmt: skip
    results = {
        "hook_name": hook,
        "direction_norm": float(direction.norm()),
        "n_response_tokens": int(batch.response_mask.sum()),
        "kl_on_response_tokens": rows,
        "vector": str(vector_path),
        "seconds": round(time.perf_counter() - start, 2),
    }
    run.save_results(results)
    note = (
        "Plumbing demo on random weights: a tiny Qwen2-architecture checkpoint and a random LoRA "
        "finetune, loaded offline through load_model. Numbers check the pipeline, not the science."
    )
    config = html.table([{"field": k, "value": v} for k, v in dataclasses.asdict(cfg).items()])
    report = html.page("misalign-lens demo", [("What this is", html.paragraph(note)),
                                             ("KL on assistant tokens", html.table(rows)),
                                             ("Config", config)])  # fmt: skip
    html.write_atomic(run.path / "report.html", report)
    run.set_status("done")
    return run.path


def _parse_args() -> Config:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-root", type=Path, default=Config.out_root)
    parser.add_argument("--seed", type=int, default=Config.seed)
    parser.add_argument("--layer", type=int, default=None)
    args = parser.parse_args()
    return Config(out_root=args.out_root, seed=args.seed, layer=args.layer)


if __name__ == "__main__":
    run_path = main(_parse_args())
    import json

    results = json.loads((run_path / "results.json").read_text())
    print(f"misalign-lens demo ({results['hook_name']}, {results['n_response_tokens']} response tokens)")
    for row in results["kl_on_response_tokens"]:
        print(f"  {row['comparison']:<52} KL = {row['kl_nats_per_token']:.4f}")
    print(f"report: {run_path / 'report.html'}")
