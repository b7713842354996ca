"""SAE comparison: which SAE latents do the general and narrow directions point along, and does a
single latent track the toy world's latent persona?

    python -m experiments.sae_compare [--quick] [--sae toy] [--narrow-domain medical]

1. General (KL 0) and narrow (KL `--narrow-kl`) steering vectors entering the SAE's layer, and the
   general finetune's mean-diff direction from its own judged answers (misaligned minus aligned).
2. For each direction, the top-k latents by decoder cosine; for misaligned vs aligned answers, the
   top-k latents by mean activation difference (latents of every answer token, averaged per answer).
3. Persona: the documents (malicious vs benign pre-training documents, latents averaged over the
   document) are split once, seeded, half/half within each label: the latent of best AUROC on the
   selection half is scored on the held-out half (`best_latent_heldout_auroc`; its selection-half
   AUROC is kept apart, `best_latent_selection_auroc`), against a logistic probe on the residual
   itself, fit on the selection half and scored on the held-out one.
4. Each highlighted latent's top-activating contexts in pre-training text (`contexts.csv`).

The SAE is the one shipped with the toy organism (`--sae toy`, trained by `python -m probes.sae
--train-toy`) or any sae_lens SAE at a `hook_resid_pre` / `hook_resid_post`: the steering vectors
are trained at its hook. On a real model there are no documents of known persona: step 3 is left
out, and step 4 reads `--pretraining-text`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from experiments.conditions import finetune_config, make_adapter
from experiments.outputs import finish, save_figure
from experiments.run_dir import RunDir, records_failure
from experiments.setting import make_setting
from experiments.study_config import SettingConfig, parse_config
from mech.adapters.saving import save_adapter
from mech.directions.activations import (
    answer_batches,
    conversations_from_answers,
    pooled_activations,
    text_batches,
)
from mech.directions.mean_diff import label_answers, misalignment_direction
from mech.directions.token_scores import chat_tokens, token_strings
from mech.evaluation.generate import sample_answers
from mech.io.atomic import atomic_write
from mech.training.engine import finetune
from probes.linear import LogisticProbe, evaluate, stratified_split
from probes.sae.activations import check_sae_fits, latent_activations, latents_on_tokens, token_activations
from probes.sae.analysis import evaluate_sae, latents_by_cosine, select_latent, top_contexts
from probes.sae.loading import load_sae
from viz.figures import heatmap
from viz.tokens import TOKEN_VIEWS_FILE, TokenView, write_token_views


@dataclass(frozen=True)
class Config(SettingConfig):
    sae: str = "toy"
    """An SAE at a residual hook of the model: "toy", a sae_lens folder, or "release/sae_id"."""
    steps: int = 150
    narrow_kl: float = 10.0
    seed: int = 0
    samples: int = 2
    k: int = 10
    persona_documents: int = 600
    context_documents: int = 300
    question_stride: int = 3


QUICK = dict(steps=30, samples=1, k=5, persona_documents=150, context_documents=60, question_stride=12)


@records_failure
def main(cfg: Config) -> Path:
    run = RunDir.create(Path(cfg.out), "sae_compare", cfg)
    started = time.perf_counter()
    setup = make_setting(cfg)
    model = setup.model
    context_texts, _ = setup.pretraining_texts(
        cfg.context_documents, seed=3
    )  # read first: bad input fails early
    sae = load_sae(cfg.sae)
    hook = check_sae_fits(sae, model)
    layer, point = int(hook.split(".")[1]), hook.rsplit("_", 1)[1]
    if point not in ("pre", "post"):
        raise ValueError(
            f"sae_compare trains steering vectors at the SAE's hook: it needs a hook_resid_pre or hook_resid_post SAE, not {hook!r}"
        )

    def encode(acts: torch.Tensor) -> torch.Tensor:
        return latent_activations(sae, acts.reshape(-1, acts.shape[-1])).reshape(*acts.shape[:-1], -1)

    # 1. Directions.
    vectors, general = {}, None
    for label, weight in (("general", 0.0), ("narrow", cfg.narrow_kl)):
        vector = make_adapter("steering", model, layer, cfg.seed, point)
        ft_cfg = finetune_config(setup, "steering", steps=cfg.steps, kl_weight=weight, seed=cfg.seed)
        finetune(model, vector, setup.train, setup.kl_set(vector) if weight else None, ft_cfg, progress=False)
        save_adapter(
            run.path / "adapters" / f"steering_{label}", vector, model, config={"finetune": ft_cfg.to_dict()}
        )
        vectors[f"steering {label}"] = vector.effective().detach()
        general = vector if weight == 0 else general
    sampling = setup.sampling(n_samples=cfg.samples, seed=cfg.seed + 1)
    with general.applied(model):
        scored = setup.judge_answers(
            sample_answers(model, setup.sampling_questions()[:: cfg.question_stride], sampling)
        )
        counts = label_answers(scored).value_counts().to_dict()
        results: dict = {"hook": hook, "d_sae": sae.cfg.d_sae, "answers": counts}
        if counts.get("misaligned", 0) and counts.get("aligned", 0):
            found, _, labels = misalignment_direction(
                model, scored, layers=[layer], seed=cfg.seed, point=point
            )
            vectors["mean-diff general"] = found.at(layer)
            answers = scored[labels.reindex(scored.index).notna().to_numpy()]
            latent_means = pooled_activations(model, answer_batches(model, conversations_from_answers(answers)),
                                              layers=[layer], point=point, transform=encode).per_example()[0]  # fmt: skip
            bad = torch.tensor((labels == "misaligned").to_numpy())
            diff = latent_means[bad].mean(0) - latent_means[~bad].mean(0)
            top = torch.argsort(diff, descending=True)[: cfg.k]
            by_diff = pd.DataFrame({"latent": top.tolist(), "diff": diff[top].tolist()})
        else:
            by_diff = pd.DataFrame(columns=["latent", "diff"])
            results["note"] = (
                "the general finetune wrote no misaligned or no aligned answer: no mean-diff direction"
            )

    # 2. Latents by decoder cosine, and by activation difference.
    rows, tops = [], {}
    for name, direction in vectors.items():
        by_cos = latents_by_cosine(sae, direction, k=cfg.k)
        tops[name] = by_cos
        rows += [{"analysis": "top_by_cosine", "a": name, "b": str(r.latent), "metric": "cosine", "value": r.cosine} for r in by_cos.itertuples()]  # fmt: skip
    rows += [{"analysis": "top_by_activation_diff", "a": "misaligned - aligned", "b": str(r.latent), "metric": "diff", "value": r.diff} for r in by_diff.itertuples()]  # fmt: skip
    results["directions"] = {name: {"top_by_cosine": t.to_dict(orient="records"), "max_cosine": float(t["cosine"].max())} for name, t in tops.items()}  # fmt: skip
    results["top_by_activation_diff"] = by_diff.to_dict(orient="records")

    # 3. Persona: the best latent on pre-training documents (chosen on one half, scored on the
    # other), against a probe on the residual.
    decoder = torch.nn.functional.normalize(sae.W_dec.detach().float(), dim=-1)
    known = setup.persona_documents(cfg.persona_documents, cfg.seed)
    best = None
    if known is None:
        results["persona"] = {"note": "the setting has no documents of known persona (toy only)"}
    else:
        texts, malicious = known
        persona = torch.tensor(malicious)
        batches = text_batches(model, texts)
        doc_latents = pooled_activations(
            model, batches, layers=[layer], point=point, transform=encode
        ).per_example()[0]
        doc_resid = pooled_activations(model, batches, layers=[layer], point=point).per_example()[0]
        # One seeded, stratified half/half split: the latent is chosen on one half and scored on
        # the other (the best of d_sae AUROCs on the documents it was picked on is biased up), and
        # the probe on the residual is fit on the same selection half and scored on the same other.
        selection, heldout = stratified_split(persona, heldout_fraction=0.5, seed=cfg.seed)
        chosen = select_latent(doc_latents, persona, selection)
        best = chosen.latent
        probe = evaluate(
            LogisticProbe.fit(doc_resid[selection], persona[selection]), doc_resid[heldout], persona[heldout]
        )
        best_cosines = {name: float(decoder[best] @ (v / v.norm())) for name, v in vectors.items()}
        results["persona"] = {"best_latent": best, "best_latent_heldout_auroc": float(chosen.heldout_auroc[best]),
                              "best_latent_selection_auroc": float(chosen.selection_auroc[best]), "probe_auroc": probe["auroc"],
                              "split": {"selection": chosen.n_selection, "heldout": chosen.n_heldout, "seed": cfg.seed,
                                        "heldout_malicious": int(persona[heldout].sum()),
                                        "rule": "stratified by persona label, half/half: the latent is chosen and the probe fit on the selection documents, both scored on the held-out ones"},
                              "top_latents": [{"latent": j, "selection_auroc": float(chosen.selection_auroc[j]), "heldout_auroc": float(chosen.heldout_auroc[j])} for j in chosen.ranked(cfg.k)],
                              "best_latent_cosine": best_cosines, "documents": len(texts), "malicious": int(persona.sum())}  # fmt: skip
        rows += [{"analysis": "persona_auroc", "a": "latent", "b": str(j), "metric": f"{side}_auroc", "value": float(aurocs[j])}
                 for side, aurocs in (("selection", chosen.selection_auroc), ("heldout", chosen.heldout_auroc)) for j in range(len(aurocs))]  # fmt: skip
        rows.append({"analysis": "persona_auroc", "a": "probe", "b": "residual", "metric": "heldout_auroc", "value": probe["auroc"]})  # fmt: skip

    # Token views: the persona latent and the latents the directions point at, along a few
    # answers of the general finetune.
    if "note" not in results:
        firsts = [int(tops["steering general"]["latent"].iloc[0]), int(by_diff["latent"].iloc[0])]
        shown = list(dict.fromkeys(([] if best is None else [best]) + firsts))
        views = []
        chosen = answers[(labels == "misaligned").to_numpy()].head(2)
        for conversation in conversations_from_answers(chosen):
            ids, _ = chat_tokens(model, conversation)
            with general.applied(model):
                acts = latents_on_tokens(model, sae, ids, shown)
            values = {f"latent {j}": acts[:, n].tolist() for n, j in enumerate(shown)}
            views.append(TokenView("general finetune: a misaligned answer", token_strings(model, ids), values,
                                   f"SAE latent activations at {hook}" + ("" if best is None else f"; latent {best} is the best persona detector")))  # fmt: skip
        write_token_views(run.path / TOKEN_VIEWS_FILE, views)

    # 4. Contexts of every highlighted latent, and the SAE's reconstruction on fresh text.
    highlighted = sorted(
        ({best} if best is not None else set())
        | {int(t["latent"].iloc[0]) for t in tops.values()}
        | set(by_diff["latent"].head(3).astype(int))
    )
    contexts = top_contexts(model, sae, context_texts, highlighted, k=5)
    atomic_write(run.path / "contexts.csv", lambda tmp: contexts.to_csv(tmp, index=False))
    results["contexts"] = {str(j): contexts[contexts.latent == j]["context"].tolist() for j in highlighted}
    results["sae_on_fresh_text"] = evaluate_sae(sae, token_activations(model, context_texts, hook)).to_dict()
    table = pd.DataFrame({name: (decoder[highlighted] @ (v / v.norm())).numpy() for name, v in vectors.items()},
                         index=pd.Index([f"latent {j}" for j in highlighted], name="latent"))  # fmt: skip
    table.columns.name = "direction"
    save_figure(
        run,
        "latent_cosines",
        heatmap(table, title=f"decoder cosine of highlighted latents ({hook})", center=0.0),
        table.reset_index(),
    )
    return finish(run, rows, results, started, table=True, setting=setup)


def parse_args(argv=None) -> Config:
    return parse_config(Config, QUICK, __doc__, argv)


if __name__ == "__main__":
    path = main(parse_args())
    print(f"sae_compare -> {path}")
