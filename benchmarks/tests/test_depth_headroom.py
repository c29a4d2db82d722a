"""The central headroom probe (benchmarks.depth_headroom): a fresh optimizer every ``restart`` steps
is exactly what it says, and one optimizer for the run is the same as a restart period past its end."""

import torch

from benchmarks.depth_headroom import train_central
from benchmarks.experiments import EXPERIMENTS
from msfusion_app.settings import Settings

TINY = Settings.from_mapping(EXPERIMENTS["DLM"].setting | {"model-layers": 1, "model-width": 64, "central-eval-examples": 16})


def test_restarting_the_optimizer_changes_training_and_a_period_past_the_end_does_not():
    torch.set_num_threads(1)
    once = train_central(TINY, steps=8, restart=0)
    past_the_end = train_central(TINY, steps=8, restart=8)
    every_two = train_central(TINY, steps=8, restart=2)
    assert [c["step"] for c in once["curve"]] == [2, 4, 6, 8]
    assert once["final_test_perplexity"] == past_the_end["final_test_perplexity"]
    # Adam's first steps move every weight by about lr: restarting every 2 steps trains differently.
    assert every_two["final_test_perplexity"] != once["final_test_perplexity"]
    assert every_two["curve"][0]["test_perplexity"] == once["curve"][0]["test_perplexity"]  # same until the first restart
    assert 0 < once["epochs"] < 0.01
