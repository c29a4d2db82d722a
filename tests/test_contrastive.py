"""Contrastive loss (SPEC §4)."""

import torch

from msfusion_core.method.contrastive import contrastive_loss


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
