"""LM2's model (issue 16): its split blocks dominate the parameters, so a sub-model saves most of them."""

import torch

from benchmarks.experiments import EXPERIMENTS, METHODS
from msfusion_app.settings import Settings
from msfusion_core.method.split_map import normalize_split_map


def test_the_lm2_models_split_blocks_are_at_least_70_percent_of_its_parameters():
    settings = Settings.from_mapping(EXPERIMENTS["LM2"].setting | METHODS["full"])
    from msfusion_core.models import get_family

    vocab = int(settings.tokenizer.split("-")[1])  # the BPE's size, without training it here
    family = get_family("llama", vocab, settings.model_width, settings.model_layers)
    with torch.device("meta"):
        model = family.build()
    params = dict(model.named_parameters())
    split = set(normalize_split_map(family.split_map))
    blocks = sum(p.numel() for k, p in params.items() if k in split)
    assert blocks / sum(p.numel() for p in params.values()) >= 0.70
