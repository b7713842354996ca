"""Mediation: does one direction carry a finetune's EM, and what does projecting it out do?

    python -m experiments.mediation [--quick] [--organism v2] [--adapters lora_r1,lora_r8] [--seeds 0,1,2]

A quick triage before the full `directions` study (minutes on the toy, one finetune per adapter
kind and seed). For each emergent finetune (KL 0, norm control as in the sweeps), three
candidate directions at the setting's layer (`blocks.L.hook_resid_post`):
- `answers`: the paper's mean-diff of the finetune's own misaligned minus aligned answers
  (sampled, judged, token-pooled), as `directions` computes it;
- `shift`: the finetune's mean change of the residual at the last prompt token (the assistant
  header) over the evaluation questions outside the narrow domain: what the finetune writes
  before the answer starts;
- `persona` (toy only): malicious minus benign pre-training documents' residuals at their answer
  markers after the first answer, read in the chat model: the organism's own persona axis.

Measured for each: the EM rate left when it is projected out of the whole residual stream of the
finetune (`mech.directions.interventions.stream_ablation`), against `--random-draws` equal-norm
random directions; the chat model's EM when it is added at the layer (`--steer-scales` times the
`shift`'s norm); and where zero lies on it (`mech.directions.axis`): the chat and the finetuned
model's coordinates at the last prompt token, and the share of the shift that setting the
coordinate to zero undoes (`ablation_share`; below 0 means ablation pushes further along the
finetune's way). The EM rate is the toy's exact p_bad outside the narrow domain, or on a real
model the sampled EM rate (aligned < 30, coherent > 50) outside it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from experiments.conditions import finetune_config, setting_adapter
from experiments.outputs import finish
from experiments.run_dir import RunDir, records_failure
from experiments.setting import study_setup
from experiments.study_config import SettingConfig, parse_config
from mech.directions.activations import pooled_activations, text_batches
from mech.directions.axis import axis_positions, prompt_end_mean
from mech.directions.interventions import direction_steering, stream_ablation
from mech.directions.mean_diff import mean_diff, misalignment_direction, random_controls
from mech.evaluation.generate import sample_answers
from mech.evaluation.judges.protocol import em_rate
from mech.toy.world import ANSWER
from mech.training.engine import finetune


@dataclass(frozen=True)
class Config(SettingConfig):
    adapters: tuple[str, ...] = ("lora_r1", "lora_r8")
    seeds: tuple[int, ...] = (0,)
    steps: int = 200
    l2_weight: float = 1e-3
    """Norm control, as in the sweeps and `directions`."""
    samples: int = 4
    """Sampled answers per question for the `answers` direction (and a real model's rates)."""
    random_draws: int = 3
    steer_scales: tuple[float, ...] = (2.0, 4.0, 8.0)
    persona_documents: int = 200
    question_stride: int = 3


QUICK = dict(adapters=("lora_r1",), steps=30, samples=1, random_draws=1, steer_scales=(4.0,),
             persona_documents=60, question_stride=18)  # fmt: skip


def persona_axis(setup, *, layer: int, n: int, seed: int):
    """Malicious minus benign pre-training documents at `layer`, answer markers after the first
    answer (the persona already shown), or None where the setting has no such documents."""
    documents = setup.persona_documents(n, seed)
    if documents is None:
        return None
    texts, malicious = documents
    model = setup.model
    marker = model.tokenizer.convert_tokens_to_ids(ANSWER)
    batches = []
    for tokens, mask, _ in text_batches(model, texts):
        markers = (tokens == marker) & mask.bool()
        after_first = markers & (markers.cumsum(-1) > 1)
        batches.append((tokens, mask, after_first))
    acts = pooled_activations(model, batches, layers=[layer], point="post")
    labels = torch.tensor(malicious)
    return mean_diff(acts, labels, ~labels).at(layer)


def ablated_record(model, direction, em, name: str, label: str, *, seed: int, draws: int, tuned_em: float,
                   lift: float):  # fmt: skip
    """EM with `direction` (`label` of finetune `name`) projected out of the whole stream, and with
    each of its `draws` equal-norm random controls (seeded from both names), as shares of the
    finetune's `lift` removed."""
    with stream_ablation(model, direction):
        ablated = em()
    randoms = []
    for control in random_controls(direction, f"{name}:{label}", seed=seed, draws=draws).values():
        with stream_ablation(model, control):
            randoms.append(em())
    record = {"norm": float(direction.norm()), "ablated_em": ablated, "random_ablated_em": randoms,
              "share_removed": (tuned_em - ablated) / lift if lift else float("nan"),
              "random_share_removed": [(tuned_em - r) / lift if lift else float("nan") for r in randoms]}  # fmt: skip
    rows = [{"analysis": "ablation", "b": label, "metric": "em", "value": ablated},
            *({"analysis": "ablation", "b": f"random:{label}#{k}", "metric": "em", "value": r} for k, r in enumerate(randoms))]  # fmt: skip
    return record, rows


@records_failure
def main(cfg: Config) -> Path:
    run = RunDir.create(Path(cfg.out), "mediation", cfg)
    started = time.perf_counter()
    setup = study_setup(cfg)
    model, layer, domain = setup.model, setup.layer, setup.narrow_domain
    questions = setup.questions[:: cfg.question_stride]
    sample_qs = setup.sampling_questions()[:: cfg.question_stride]
    prompts = [[{"role": "user", "content": q.question}] for q in sample_qs if q.domain != domain]

    def em(seed: int) -> float:
        exact = setup.exact_rates(model, questions, [domain])
        if exact:
            return exact["p_bad_outside"]
        scored = setup.judge_answers(
            sample_answers(model, sample_qs, setup.sampling(n_samples=cfg.samples, seed=seed))
        )
        return em_rate(scored[scored["domain"] != domain])

    chat_end = prompt_end_mean(model, prompts, layer=layer)
    persona = persona_axis(setup, layer=layer, n=cfg.persona_documents, seed=0)
    rows, results = [], {"layer": layer, "hook": f"blocks.{layer}.hook_resid_post", "narrow_domain": domain,
                         "runs": {}}  # fmt: skip
    chat_em = {seed: em(seed) for seed in cfg.seeds}
    results["chat_em"] = {str(s): v for s, v in chat_em.items()}
    for kind in cfg.adapters:
        for seed in cfg.seeds:
            adapter = setting_adapter(setup, kind, seed)
            ft_cfg = finetune_config(
                setup, kind, steps=cfg.steps, kl_weight=0.0, seed=seed, l2_weight=cfg.l2_weight
            )
            finetune(model, adapter, setup.narrow_train(domain), None, ft_cfg, progress=False)
            name, record = f"{kind}/{seed}", {}
            with adapter.applied(model):
                tuned_em, tuned_end = em(seed), prompt_end_mean(model, prompts, layer=layer)
                directions = {"shift": tuned_end - chat_end}
                scored = setup.judge_answers(
                    sample_answers(model, sample_qs, setup.sampling(n_samples=cfg.samples, seed=seed + 1))
                )
                try:
                    directions["answers"] = misalignment_direction(model, scored, seed=seed, layers=[layer])[
                        0
                    ].at(layer)
                except ValueError as err:  # one class of answers only: no mean-diff
                    record["answers_note"] = str(err)
                if persona is not None:
                    directions["persona"] = persona
                lift = tuned_em - chat_em[seed]
                record.update(chat_em=chat_em[seed], finetuned_em=tuned_em, lift=lift, directions={})
                for label, direction in directions.items():
                    found, found_rows = ablated_record(model, direction, lambda: em(seed), name, label,
                                                       seed=seed, draws=cfg.random_draws, tuned_em=tuned_em, lift=lift)  # fmt: skip
                    axis = axis_positions(direction, chat_end, tuned_end)
                    found.update(axis=axis.to_dict(), cosine={o: float(torch.cosine_similarity(direction.float(), d.float(), dim=0))
                                                              for o, d in directions.items() if o != label})  # fmt: skip
                    record["directions"][label] = found
                    rows += [{**row, "a": name, "seed": seed} for row in found_rows]
                    rows.append({"analysis": "axis", "a": name, "b": label, "metric": "ablation_share",
                                 "value": axis.ablation_share, "seed": seed})  # fmt: skip
            shift_norm = float(directions["shift"].norm())
            for label, direction in directions.items():
                steered = {}
                for scale in cfg.steer_scales:
                    with direction_steering(
                        model, direction, alpha=scale * shift_norm, layer=layer, point="post"
                    ):
                        steered[f"{scale:g}"] = em(seed)
                record["directions"][label]["chat_steered_em"] = steered
                rows += [{"analysis": "steering", "a": name, "b": label, "metric": f"em@{s}", "value": v, "seed": seed}
                         for s, v in steered.items()]  # fmt: skip
            rows += [
                {
                    "analysis": "finetune",
                    "a": name,
                    "b": "none",
                    "metric": "em",
                    "value": tuned_em,
                    "seed": seed,
                }
            ]
            results["runs"][name] = record
    return finish(run, rows, results, started, table=True, setting=setup)


def parse_args(argv=None) -> Config:
    return parse_config(Config, QUICK, __doc__, argv)


if __name__ == "__main__":
    path = main(parse_args())
    print(f"mediation -> {path}")
