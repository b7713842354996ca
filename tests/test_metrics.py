import pytest
import torch

from mech.training.losses import masked_kl


def test_kl_of_a_model_with_itself_is_zero():
    logits = torch.randn(2, 5, 11)
    assert masked_kl(logits, logits, torch.ones(2, 5, dtype=torch.bool)) == 0


def test_kl_matches_the_definition_and_ignores_unmasked_positions():
    ref, cur = torch.randn(2, 4, 7), torch.randn(2, 4, 7)
    mask = torch.tensor([[1, 1, 0, 0], [0, 1, 1, 0]], dtype=torch.bool)
    p, q = ref.softmax(-1), cur.softmax(-1)
    expected = (p * (p.log() - q.log())).sum(-1)[mask].mean()
    assert torch.allclose(masked_kl(ref, cur, mask), expected, atol=1e-6)
    cur_with_garbage_pads = cur.clone()
    cur_with_garbage_pads[~mask] = 1e4 * torch.randn_like(cur[~mask])
    assert torch.equal(masked_kl(ref, cur_with_garbage_pads, mask), masked_kl(ref, cur, mask))


def test_empty_mask_is_an_error():
    with pytest.raises(ValueError, match="selects no positions"):
        masked_kl(torch.randn(1, 2, 3), torch.randn(1, 2, 3), torch.zeros(1, 2, dtype=torch.bool))
