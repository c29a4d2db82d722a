"""MOON-style model-contrastive loss adapted to sub-models (SPEC §4)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


CONTRASTIVE_MU = 1.0  # the method's contrastive weight μ (SPEC §4); the baselines train with 0


def check_mu(mu: object, name: str = "the contrastive weight μ") -> float:
    """μ as a float, or a ValueError naming ``name``: the one rule wherever μ enters (a run
    config, the strategy, a server's message)."""
    if isinstance(mu, bool) or not isinstance(mu, (int, float)) or not 0 <= mu < math.inf:
        raise ValueError(f"{name} must be a finite number >= 0, got {mu!r}")
    return float(mu)


def contrastive_loss(
    z: torch.Tensor, z_glob: torch.Tensor, z_prev: torch.Tensor | None, tau: float = 0.5
) -> torch.Tensor:
    """L_con = −log(e^{cos(z,z_glob)/τ} / (e^{cos(z,z_glob)/τ} + e^{cos(z,z_prev)/τ})), batch mean.

    z, z_glob, z_prev: [B, D]. Without a negative (a participant's first round) the loss pulls z
    toward z_glob alone: −cos(z, z_glob)/τ, which has the same gradient as the full loss would with
    a negative infinitely far away and stays finite.
    """
    if tau <= 0:
        raise ValueError(f"contrastive temperature tau must be positive, got {tau}")
    pos = F.cosine_similarity(z, z_glob, dim=-1) / tau  # [B]
    if z_prev is None:
        return -pos.mean()
    neg = F.cosine_similarity(z, z_prev, dim=-1) / tau  # [B]
    logits = torch.stack([pos, neg], dim=-1)  # [B, 2]
    return F.cross_entropy(logits, torch.zeros(z.shape[0], dtype=torch.long, device=z.device))
