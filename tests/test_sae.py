"""probes.sae: offline SAE training on tiny models, save/load, fit checks, and the analysis
functions on SAEs with planted latents; one test scores the shipped toy SAE."""

from __future__ import annotations

import json
import random
from dataclasses import replace

import pytest
import torch

from mech._quiet import hooked_transformer
from mech.models.load import load_model
from mech.models.tokenizer import word_level_tokenizer
from mech.toy.checkpoint import organism_world
from probes.linear import stratified_split
from probes.metrics import auroc_per_column
from probes.sae.activations import check_sae_fits, latent_activations, token_activations
from probes.sae.analysis import (
    evaluate_sae,
    latent_auroc,
    latents_by_activation_diff,
    latents_by_cosine,
    select_latent,
    top_contexts,
)
from probes.sae.loading import load_sae, save_sae
from probes.sae.toy import TOY_EVAL_SEED, TOY_HOOK, main
from probes.sae.training import SAE, SaeTrainingConfig, train_sae

WORDS = [f"w{i}" for i in range(40)]
HOOK = "blocks.1.hook_resid_pre"
RARE = "w39"  # appears in exactly one text, once


def _tokenizer():
    return word_level_tokenizer(
        WORDS, special_tokens=["<pad>", "<bos>", "<eos>", "<unk>"], chat_template="", bos_token="<bos>",
        eos_token="<eos>", pad_token="<pad>", unk_token="<unk>",
    )  # fmt: skip


def _tiny_model(d_model: int = 32, n_layers: int = 2):
    """A random-weight model with a word-level tokenizer (n_ctx 16)."""
    tokenizer = _tokenizer()
    cfg = dict(n_layers=n_layers, d_model=d_model, n_heads=4, d_head=d_model // 4, d_mlp=2 * d_model,
               n_ctx=16, d_vocab=len(tokenizer), act_fn="gelu", normalization_type="RMS", seed=0)  # fmt: skip
    return hooked_transformer(cfg, tokenizer)


def _texts(n: int = 120, seed: int = 0) -> list[str]:
    """Texts of 3..14 common words after <bos> (uneven lengths, so batches carry pads)."""
    rng = random.Random(seed)
    return ["<bos> " + " ".join(rng.choice(WORDS[:-1]) for _ in range(rng.randint(3, 14))) for _ in range(n)]


@pytest.fixture(scope="module")
def model():
    return _tiny_model()


@pytest.fixture(scope="module")
def small_cfg():
    return SaeTrainingConfig(hook_name=HOOK, d_sae=64, k=4, steps=80, batch_tokens=256, lr=3e-3, seed=0)


@pytest.fixture(scope="module")
def trained(model, small_cfg):
    return train_sae(model, _texts(), small_cfg)


def _planted_sae(d_in: int = 16, d_sae: int = 32, hook_name: str = HOOK):
    """A ReLU SAE with small random weights and zero biases, to plant latents in."""
    # Imported here, after probes.sae, which silences sae_lens's import-time deprecation warning.
    from sae_lens import StandardSAE, StandardSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    sae = StandardSAE(StandardSAEConfig(d_in=d_in, d_sae=d_sae, metadata=SAEMetadata(hook_name=hook_name)))
    with torch.no_grad():
        sae.W_enc.copy_(0.05 * torch.randn(d_in, d_sae))
        sae.W_dec.copy_(torch.randn(d_sae, d_in))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae


# ----------------------------------------------------------------------------- training
@pytest.mark.parametrize("architecture", ["topk", "standard"])
def test_training_lowers_reconstruction_error(model, small_cfg, trained, architecture):
    cfg = replace(small_cfg, architecture=architecture, l1_coefficient=0.5)
    sae = trained if architecture == "topk" else train_sae(model, _texts(), cfg)
    # One step at a negligible learning rate: the SAE as initialised from the same seed.
    initial = train_sae(model, _texts(), replace(cfg, steps=1, lr=1e-12))
    acts = token_activations(model, _texts(40, seed=1), HOOK)
    before, after = evaluate_sae(initial, acts), evaluate_sae(sae, acts)
    assert isinstance(sae, SAE) and sae.cfg.architecture() == architecture
    assert after.fvu < 0.5 * before.fvu
    assert after.fvu < 0.5
    if architecture == "topk":
        assert after.l0 == cfg.k


def test_training_records_model_and_hook_and_excludes_pads(model, trained):
    texts = _texts()
    n_real_tokens = sum(len(model.tokenizer(t)["input_ids"]) for t in texts)
    assert trained.cfg.metadata.hook_name == HOOK
    assert trained.cfg.metadata.model_name == model.cfg.model_name
    assert trained.cfg.metadata.n_activation_tokens == n_real_tokens
    assert token_activations(model, texts, HOOK).shape == (n_real_tokens, model.cfg.d_model)


def test_same_seed_gives_identical_weights_and_another_seed_does_not(model, small_cfg, trained):
    rng_state = torch.random.get_rng_state()
    again = train_sae(model, _texts(), small_cfg)
    assert torch.equal(torch.random.get_rng_state(), rng_state)  # the global RNG is left alone
    other = train_sae(model, _texts(), replace(small_cfg, seed=1))
    for name, weights in trained.state_dict().items():
        assert torch.equal(weights, again.state_dict()[name]), name
    assert not torch.equal(trained.W_dec, other.W_dec)


def test_config_is_validated():
    with pytest.raises(ValueError, match="k must be in 1..d_sae"):
        SaeTrainingConfig(hook_name=HOOK, d_sae=8, k=9)
    # Refused by __post_init__, or first by the runtime type check of the Literal under pytest.
    with pytest.raises((ValueError, TypeError), match="architecture"):
        SaeTrainingConfig(hook_name=HOOK, architecture="gated")
    with pytest.raises(ValueError, match="exceed"):
        SaeTrainingConfig(hook_name=HOOK, steps=10, warmup_steps=9)


def test_unknown_hook_is_refused(model, small_cfg):
    with pytest.raises(ValueError, match="has no hook 'blocks.7.hook_resid_pre'"):
        train_sae(model, _texts(4), replace(small_cfg, hook_name="blocks.7.hook_resid_pre"))


# ----------------------------------------------------------------------------- save / load / fit
def test_save_load_round_trip_gives_identical_encodings(model, trained, tmp_path):
    folder = save_sae(trained, tmp_path / "sae")
    loaded = load_sae(folder)
    acts = token_activations(model, _texts(10, seed=2), HOOK)
    assert torch.equal(latent_activations(loaded, acts), latent_activations(trained, acts))
    assert loaded.cfg.metadata.hook_name == HOOK
    assert loaded.cfg.metadata.model_name == model.cfg.model_name
    assert check_sae_fits(loaded, model) == HOOK


def test_missing_release_is_a_clear_error():
    from huggingface_hub import constants

    offline_before = constants.HF_HUB_OFFLINE
    with pytest.raises(ValueError, match="not in the local Hugging Face cache") as err:
        load_sae("gemma-scope-2b-pt-res-canonical/layer_12/width_16k/canonical")
    assert "gemma-scope-2b-pt-res-canonical" in str(err.value)
    assert "layer_12/width_16k/canonical" in str(err.value)
    assert constants.HF_HUB_OFFLINE == offline_before


def test_unknown_toy_organism_sae_and_non_sae_folder_are_refused(tmp_path):
    with pytest.raises(ValueError, match="no toy organism"):
        load_sae("toy:nonexistent")
    with pytest.raises(ValueError, match="no cfg.json"):
        load_sae(tmp_path)
    with pytest.raises(ValueError, match="no SAE folder"):
        load_sae(tmp_path / "missing" / "sae")  # a mistyped path is not taken for a release


def test_width_and_hook_mismatches_are_refused(trained):
    wider = _tiny_model(d_model=48)
    with pytest.raises(ValueError, match=r"width 32 at hook 'blocks.1.hook_resid_pre'.*d_model 48"):
        check_sae_fits(trained, wider)
    with pytest.raises(ValueError, match="trained on hook 'blocks.1.hook_resid_pre', not 'blocks.0"):
        check_sae_fits(trained, _tiny_model(), hook_name="blocks.0.hook_resid_pre")
    with pytest.raises(ValueError, match="has no hook 'blocks.1.hook_resid_pre'"):
        check_sae_fits(trained, _tiny_model(n_layers=1))


# ----------------------------------------------------------------------------- analysis
def test_latents_by_cosine_finds_the_planted_decoder_row():
    sae = _planted_sae()
    frame = latents_by_cosine(sae, 2.5 * sae.W_dec[7].detach(), k=3)
    assert list(frame.columns) == ["latent", "cosine"]
    assert frame.latent[0] == 7 and frame.cosine[0] == pytest.approx(1.0, abs=1e-5)
    assert frame.cosine.is_monotonic_decreasing
    opposite = -3.0 * sae.W_dec[7].detach()
    assert latents_by_cosine(sae, opposite, k=3).latent[0] != 7  # signed: 7 points away
    by_size = latents_by_cosine(sae, opposite, k=3, absolute=True)
    assert by_size.latent[0] == 7 and by_size.cosine[0] == pytest.approx(-1.0, abs=1e-5)


def _planted_acts(sae, latent: int, n: int = 200):
    """Noise for negatives; noise plus 5 x a unit vector that only `latent` reads for positives."""
    u = torch.nn.functional.normalize(torch.randn(sae.cfg.d_in), dim=0)
    with torch.no_grad():
        sae.W_enc[:, latent] = u
    neg = torch.randn(n, sae.cfg.d_in)
    pos = torch.randn(n, sae.cfg.d_in) + 5 * u
    return pos, neg


def test_latents_by_activation_diff_finds_the_planted_latent():
    sae = _planted_sae()
    pos, neg = _planted_acts(sae, latent=5)
    frame = latents_by_activation_diff(sae, pos, neg, k=4)
    assert list(frame.columns) == ["latent", "diff", "mean_pos", "mean_neg"]
    assert frame.latent[0] == 5
    assert frame["diff"][0] == pytest.approx(frame.mean_pos[0] - frame.mean_neg[0])
    assert frame["diff"][0] > 4 * frame["diff"][1]


def test_latent_auroc_is_one_for_a_separating_latent():
    sae = _planted_sae()
    pos, neg = _planted_acts(sae, latent=5)
    labels = torch.cat([torch.ones(len(pos)), torch.zeros(len(neg))]).bool()
    scores = latent_auroc(sae, torch.cat([pos, neg]), labels)
    assert scores.shape == (sae.cfg.d_sae,)
    assert scores[5] > 0.99
    assert int(scores.argmax()) == 5


def test_the_best_latent_is_chosen_on_one_split_and_scored_on_the_other():
    # 512 noise latents and one (7) that detects the label: noise picked on its own documents
    # would score well above chance; held out, only the real detector does.
    g = torch.Generator().manual_seed(0)
    labels = torch.rand(80, generator=g) > 0.5
    latents = torch.rand(80, 512, generator=g)
    selection, heldout = stratified_split(labels, seed=0)
    noise = select_latent(latents, labels, selection)
    assert noise.latent == int(auroc_per_column(latents[selection], labels[selection]).argmax())
    assert noise.selection_auroc[noise.latent] > 0.75 > noise.heldout_auroc[noise.latent]
    assert (noise.n_selection, noise.n_heldout) == (int(selection.sum()), int(heldout.sum()))
    assert noise.ranked(3)[0] == noise.latent
    latents[:, 7] += 2 * labels
    planted = select_latent(latents, labels, selection)
    assert planted.latent == 7 and planted.heldout_auroc[7] > 0.95


def test_top_contexts_returns_the_planted_token_and_never_a_pad():
    model = _tiny_model()
    tokenizer = model.tokenizer
    texts = _texts(30)
    texts[4] = "<bos> w1 w2 w3 w4 " + RARE + " w5 w6 w7"
    hook = "blocks.0.hook_resid_pre"  # embeddings: the latent below reads the token identity
    with torch.no_grad():
        model.W_E[tokenizer.convert_tokens_to_ids(RARE), 0] = 50.0
        model.W_E[tokenizer.pad_token_id, 0] = 100.0  # pads would win if they counted
    sae = _planted_sae(d_in=32, d_sae=8, hook_name=hook)
    with torch.no_grad():
        sae.W_enc[:, 3] = torch.nn.functional.one_hot(torch.tensor(0), 32).float()
    frame = top_contexts(model, sae, texts, [3], k=3, window=2)
    assert list(frame.columns) == ["latent", "rank", "activation", "text", "position", "token", "context"]
    top = frame.iloc[0]
    assert (top.latent, top["rank"], top.text, top.position, top.token) == (3, 0, 4, 5, RARE)
    assert top.context == f"w3 w4 [{RARE}] w5 w6"
    assert top.activation > 40
    assert frame.activation.is_monotonic_decreasing and len(frame) <= 3
    assert "<pad>" not in " ".join(frame.context)


# ----------------------------------------------------------------------------- the shipped toy SAE
def test_shipped_toy_sae_fits_the_toy_model_and_reconstructs_fresh_documents():
    sae, model = load_sae("toy"), load_model("toy")
    assert check_sae_fits(sae, model) == TOY_HOOK
    assert (sae.cfg.d_in, sae.cfg.metadata.model_name) == (model.cfg.d_model, "toy")
    # Fresh documents: neither the SAE's training sample (seed 1) nor its shipped held-out one.
    texts = organism_world("default").pretraining_sample(20, seed=TOY_EVAL_SEED + 1)
    evaluation = evaluate_sae(sae, token_activations(model, texts, TOY_HOOK))
    assert evaluation.fvu < 0.15  # measured about 0.05 when it was trained
    assert evaluation.l0 == sae.cfg.k


def test_train_toy_cli_writes_a_loadable_sae_and_metrics(tmp_path, capsys):
    main(["--train-toy", "--steps", "3", "--texts", "8", "--out", str(tmp_path / "sae")])
    summary = json.loads(capsys.readouterr().out)
    metrics = json.loads((tmp_path / "sae" / "metrics.json").read_text())
    assert summary["out"] == str(tmp_path / "sae") and summary["fvu"] == metrics["heldout"]["fvu"]
    assert metrics["training_tokens"] == 3 * 4096 and metrics["hook_name"] == TOY_HOOK
    assert {"fvu", "mse", "l0", "dead_share"} <= set(metrics["heldout"])
    assert load_sae(tmp_path / "sae").cfg.metadata.hook_name == TOY_HOOK
