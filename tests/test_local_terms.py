"""The local loss's term beside cross-entropy (SPEC §4): MOON's contrastive term
toward the received sub-model, and the fraction of batches that carry them."""

import copy

import pytest
import torch

from msfusion_core.data import TensorData, load_partition
from msfusion_core.local.training import TrainConfig, regularised_batches, train_submodel
from msfusion_core.method.contrastive import contrastive_loss
from msfusion_core.models import get_family


def test_finite_and_first_round_without_negative():
    torch.manual_seed(0)
    z = torch.randn(8, 16, requires_grad=True)
    z_glob, z_prev = torch.randn(8, 16), torch.randn(8, 16)
    full = contrastive_loss(z, z_glob, z_prev, tau=0.5)
    first = contrastive_loss(z, z_glob, None, tau=0.5)
    assert torch.isfinite(full) and torch.isfinite(first)
    first.backward()
    assert torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0


def test_lower_when_z_moves_toward_z_glob():
    torch.manual_seed(1)
    z, z_glob, z_prev = torch.randn(3, 8, 32).unbind(0)
    before = contrastive_loss(z, z_glob, z_prev)
    after = contrastive_loss(0.5 * z + 0.5 * z_glob, z_glob, z_prev)
    assert after < before
    assert contrastive_loss(z_glob, z_glob, z_prev) < before  # at the positive: smallest
    toward_neg = contrastive_loss(0.5 * z + 0.5 * z_prev, z_glob, z_prev)
    assert toward_neg > before


def test_matches_moon_formula():
    z, zg, zp = torch.randn(3, 4, 5).unbind(0)
    cos = torch.nn.functional.cosine_similarity
    tau = 0.3
    ref = -torch.log(torch.exp(cos(z, zg) / tau) / (torch.exp(cos(z, zg) / tau) + torch.exp(cos(z, zp) / tau))).mean()
    torch.testing.assert_close(contrastive_loss(z, zg, zp, tau), ref)


def test_regularised_batches_are_spread_evenly():
    assert regularised_batches(1.0, 5).tolist() == [True] * 5
    assert regularised_batches(0.25, 8).nonzero().flatten().tolist() == [3, 7]
    assert int(regularised_batches(0.3, 20).sum()) == 6
    with pytest.raises(ValueError, match="in \\(0, 1\\]"):
        regularised_batches(0.0, 4)
    # Counted across rounds: 2 batches a round at f = 1/4 carry the terms on one batch every second round.
    assert [regularised_batches(0.25, 2, first).tolist() for first in (0, 2, 4, 6)] == [[False, False], [False, True], [False, False], [False, True]]


def _train(data, **cfg):
    fam = get_family("digits-cnn")
    torch.manual_seed(0)
    received = fam.build()
    model = copy.deepcopy(received)
    prev = copy.deepcopy(received)
    result = train_submodel(
        model, data, TrainConfig(batch_size=16, lr=0.1, **({"regularised_fraction": 1.0} | cfg)),  # every batch unless said
        representation_layer=fam.representation_layer, global_model=received, prev_model=prev, seed=1,
    )
    return result


@pytest.fixture(scope="module")
def digits():
    part = load_partition("digits", None, "iid", 4, 0)
    return TensorData(part.x[:128], part.y[:128])  # 8 batches of 16


def test_fewer_regularised_batches_cost_fewer_flops(digits):
    plain = _train(digits, mu=0.0)
    contrastive = _train(digits, mu=1.0)
    quarter = _train(digits, mu=1.0, regularised_fraction=0.25)
    # Two frozen forwards (received + previous) on every batch, or on a quarter of them.
    assert plain.flops < quarter.flops < contrastive.flops
    assert quarter.flops == pytest.approx(plain.flops + (contrastive.flops - plain.flops) / 4, rel=1e-6)
    assert plain.contrastive_loss == 0 and quarter.contrastive_loss != 0


