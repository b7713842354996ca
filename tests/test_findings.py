"""The findings' readers on synthetic run results: each control a finding needs is used, and a
run that learned nothing never passes for a finding."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from experiments import findings
from experiments.findings.directions import ablation_cells
from mech.verdicts.intervals import auroc_interval

DOMAINS = {"medical": "narrow", "cars": "kl", "cooking": "kl", "sports": "kl", "pets": "heldout_domain",
           "travel": "heldout_domain"}  # fmt: skip


def tidy(rates: dict, seeds: int = 5, noise: float = 0.002) -> pd.DataFrame:
    """Toy-like tidy rows: per (adapter, kl_weight) a rate per role, jittered per seed and domain;
    the chat model (`none`) once."""
    rng = np.random.default_rng(0)
    rows = []
    for (adapter, kl_weight), by_role in rates.items():
        for seed in range(1 if adapter == "none" else seeds):
            for domain, role in DOMAINS.items():
                split = "all" if role == "heldout_domain" else "heldout"
                value = by_role[role] + (0 if adapter == "none" else rng.normal(0, noise))
                rows.append({"adapter": adapter, "kl_weight": kl_weight, "seed": seed, "domain": domain, "role": role,
                             "split": split, "metric": "p_bad", "value": value})  # fmt: skip
    return pd.DataFrame(rows)


CHAT = {"narrow": 0.02, "kl": 0.02, "heldout_domain": 0.02}
GENERAL = {"narrow": 0.95, "kl": 0.10, "heldout_domain": 0.10}


def narrow_verdict(kl_run: dict) -> dict:
    frame = tidy({("none", 0.0): CHAT, ("lora_r1", 0.0): GENERAL, ("lora_r1", 10.0): kl_run})
    results = {"metric": "p_bad", "adapters": {"lora_r1": {"by_kl": {"0.0": [], "10.0": []}}}}
    (row,) = findings.READERS["narrow_kl"](results, frame, "results/toy/narrow_kl/r")
    return row


def test_a_kl_run_that_learned_nothing_is_not_a_narrow_solution():
    assert narrow_verdict(CHAT)["verdict"] == "not reproduced"  # no EM outside, but no narrow behaviour


def test_a_kl_run_narrow_inside_and_like_the_chat_model_outside_is_one():
    assert narrow_verdict({"narrow": 0.95, "kl": 0.021, "heldout_domain": 0.02})["verdict"] == "reproduced"


def test_a_kl_run_that_still_spreads_is_not_a_narrow_solution():
    assert narrow_verdict({"narrow": 0.95, "kl": 0.08, "heldout_domain": 0.08})["verdict"] == "not reproduced"


def test_emergence_is_the_rise_over_the_chat_model_outside_the_narrow_domain():
    frame = tidy({("none", 0.0): CHAT, ("lora_r1", 0.0): GENERAL})
    (row,) = findings.READERS["emergence"](
        {"metric": "p_bad", "adapters": {"lora_r1": {}}}, frame, "r/emergence/x"
    )
    assert row["value"] == pytest.approx(0.08, abs=0.003) and row["verdict"] == "reproduced"
    assert row["unit"] == "5 seeds x 5 domains" and row["bound"].startswith("> 0.01")


def test_each_baseline_condition_is_judged_with_its_narrow_rise_and_narrow_rule():
    diluted = {"narrow": 0.6, "kl": 0.02, "heldout_domain": 0.021}  # narrow without spreading
    few = {"narrow": 0.3, "kl": 0.09, "heldout_domain": 0.09}
    frame = tidy({("none", 0.0): CHAT, ("lora_r1", 0.0): GENERAL, ("lora_r1_mix1to6", 0.0): diluted,
                  ("lora_r1_few4", 0.0): few})  # fmt: skip
    results = {"metric": "p_bad", "adapters": {"lora_r1": {}}, "baseline_adapter": "lora_r1",
               "mixing": {"1:6": {"adapter": "lora_r1_mix1to6"}}, "few_samples": {"4": {"adapter": "lora_r1_few4"}}}  # fmt: skip
    rows = {row["finding"]: row for row in findings.READERS["emergence"](results, frame, "r/emergence/x")}
    mixed = rows["(baseline) EM with 6 good answers from other domains per narrow one"]
    assert mixed["verdict"] == "not reproduced" and mixed["adapter"] == "lora_r1"
    assert "narrow +0.58" in mixed["measured"] and "narrow rule: reproduced" in mixed["measured"]
    few_row = rows["(baseline) EM from 4 unique narrow examples"]
    assert few_row["verdict"] == "reproduced" and "narrow rule: not reproduced" in few_row["measured"]


def test_persona_share_is_judged_against_the_low_share_organisms_chat_rate():
    def judged_fall(fall: float, chat_rows: bool = True) -> dict:
        chat, general = {r: 0.04 for r in CHAT}, {"narrow": 0.9, "kl": 0.10, "heldout_domain": 0.10}
        lower = {r: v - (fall if r != "narrow" else 0) for r, v in general.items()}
        rates = {("low/lora_r1", 0.0): general, ("high/lora_r1", 0.0): lower}
        if chat_rows:
            rates[("low/none", 0.0)] = chat
        organisms = {name: {"narrow_share": share, "adapters": {"lora_r1": [{"general": {"kl_domains_heldout": 0.1}}]}}
                     for name, share in (("low", 0.0), ("high", 0.15))}  # fmt: skip
        (row,) = findings.READERS["persona_share"]({"organisms": organisms}, tidy(rates), "r/persona_share/x")
        return row

    bound = judged_fall(0.03)["bound"]
    assert bound.startswith("< -0.020") and "0.5 x chat 0.040" in bound
    assert judged_fall(0.03)["verdict"] == "reproduced"
    assert judged_fall(0.015)["verdict"] == "not reproduced"  # beyond the floor, short of half the chat rate
    assert judged_fall(0.015, chat_rows=False)["bound"].startswith("< -0.01 (floor")


def test_a_non_positive_general_rise_makes_stability_undefined_not_infinite():
    per_seed = [
        {"mean_delta": {"narrow": {"0.5": 0.05}, "general": {"0.5": g}}}
        for g in (0.0, -0.01, 0.0, 0.001, -0.002)
    ]
    results = {"adapters": {"lora_r1": {"eps_compared": 0.5, "per_seed": per_seed}}}
    (row,) = findings.READERS["stability"](results, pd.DataFrame(), "r/stability/x")
    assert row["verdict"] == "inconclusive" and not np.isfinite(row["ci_low"])
    assert "not positive" in row["measured"]


def test_pre_training_needs_the_random_control_too():
    def run(random: float) -> str:
        per_seed = [{"kl_by_norm": {str(n): {"general": 0.02 * n, "narrow": 0.01 * n, "random": random * n} for n in (1, 2)}}
                    for _ in range(5)]  # fmt: skip
        rows = findings.READERS["pretraining_kl"](
            {"adapters": {"lora_r1": {"per_seed": per_seed}}}, pd.DataFrame(), "r/p/x"
        )
        return rows[0]["verdict"]

    assert run(random=0.001) == "reproduced"
    assert run(random=0.01) == "not reproduced"  # the narrow direction matters no more than a random one


def test_revert_is_compared_with_the_run_that_keeps_the_kl():
    def trajectory(start: float, end: float, kl_after: float) -> list[dict]:
        return [{"step": 10, "kl_weight": 10.0, "cosine_to_general": start},
                {"step": 20, "kl_weight": kl_after, "cosine_to_general": end}]  # fmt: skip

    def verdict(kept_end: float) -> str:
        runs = {}
        for seed, jitter in enumerate((0.0, 0.01, -0.01, 0.005, -0.005)):
            runs[f"remove_kl/seed{seed}"] = trajectory(0.5, 0.9 + jitter, 0.0)
            runs[f"keep_kl/seed{seed}"] = trajectory(0.5, kept_end + jitter, 10.0)
        return findings.READERS["revert"]({"adapters": {"lora_r1": runs}}, pd.DataFrame(), "r/revert/x")[0][
            "verdict"
        ]

    assert verdict(kept_end=0.5) == "reproduced"
    assert verdict(kept_end=0.9) == "not reproduced"  # it drifts as much with the KL kept


def test_direction_controls_are_the_draws_not_their_mean():
    row = {
        "none": 0.10,
        "d": 0.03,
        "random:d": 0.5,
        "random:d#0": 0.09,
        "random:d#1": 0.10,
        "random:d#2": 0.11,
    }
    results = {"chat": {"p_bad_outside": 0.02, "em_rate": 0.0}, "ablation": {"p_bad_outside": {"d": row}},
               "steering": {}}  # fmt: skip
    cells = ablation_cells(results, "p_bad_outside")
    assert sorted(cells["beyond_random"].round(3)) == [0.06, 0.07, 0.08]  # never 0.5 - 0.03


def test_direction_findings_take_finetune_seeds_as_the_outer_unit():
    def record(seed: int, chat: float) -> dict:
        jitter = 0.004 * seed
        rows = {
            ft: {"none": chat + 0.10, ft: chat + 0.01 + jitter, other: chat + 0.05,
                 **{f"random:{d}#{k}": chat + 0.10 - 0.002 * k for d in (ft, other) for k in range(3)}}
            for ft, other in (("a", "b"), ("b", "a"))
        }  # fmt: skip
        return {"chat": {"em_rate": chat}, "ablation": {"em_rate": rows}, "steering": {}}

    def own_row(results: dict) -> dict:
        return findings.READERS["directions"](results, pd.DataFrame(), "r/directions/x")[0]

    five = {str(s): record(s, chat=0.02 + 0.01 * s) for s in range(5)}
    row = own_row({**five["0"], "by_seed": five})
    assert row["verdict"] == "reproduced" and row["unit"].startswith("5 seeds")
    assert row["value"] == pytest.approx(0.80, abs=0.005)  # each seed's lift over its own chat rate
    one = own_row(five["0"])  # an older run: one seed, at the top of its results
    assert one["verdict"] == "inconclusive" and one["unit"].startswith("1 seed")


def test_the_sae_latent_is_judged_on_its_held_out_documents():
    persona = {"best_latent": 7, "best_latent_heldout_auroc": 0.97, "best_latent_selection_auroc": 0.99,
               "probe_auroc": 1.0, "split": {"selection": 300, "heldout": 300, "heldout_malicious": 150}}  # fmt: skip
    results = {
        "persona": persona,
        "directions": {"general": {"top_by_cosine": [{"latent": 3, "cosine": 0.3}]}},
    }
    (row,) = findings.READERS["sae_compare"](results, pd.DataFrame(), "r/sae_compare/x")
    assert row["value"] == 0.97 and row["verdict"] == "reproduced" and row["unit"].startswith("300 held-out")


def test_the_auroc_interval_is_hanley_and_mcneils():
    estimate = auroc_interval(0.8, 50, 50)
    assert (estimate.ci_high - estimate.ci_low) / 2 == pytest.approx(1.96 * 0.0445, abs=0.002)
    assert auroc_interval(0.999, 5, 5).ci_high == 1.0


def test_the_footnotes_per_seed_flag_uses_the_findings_bounds_against_the_chat_model():
    from experiments.narrow_kl import is_narrow

    chat = {"narrow_heldout": 0.023, "kl_domains_heldout": 0.015, "heldout_domains": 0.021}
    learned_nothing = {"narrow_heldout": 0.04, "kl_domains_heldout": 0.02, "heldout_domains": 0.027}
    assert not is_narrow(learned_nothing, chat, sampled=False)  # the old 0.8x-of-general rule passed it
    assert is_narrow({**learned_nothing, "narrow_heldout": 0.9}, chat, sampled=False)
    assert not is_narrow(
        {**learned_nothing, "narrow_heldout": 0.9, "heldout_domains": 0.05}, chat, sampled=False
    )
