"""More training does not make MSfusion's evaluated model worse on a residual MLP whose stream is
normalised as a whole (benchmarks.residual_stream), and without the expectation rule it does."""

import pytest

from benchmarks.residual_stream import run as run_residual_stream, windowed


@pytest.mark.parametrize("arm", ["msfusion", "msfusion-o0"])
@pytest.mark.parametrize("seed", [0, 1])
def test_no_msfusion_form_ends_more_than_a_point_below_its_best_on_a_normalised_residual_stream(arm, seed):
    final, best = windowed(run_residual_stream(arm, seed))
    assert final >= best - 0.01, f"{arm} seed {seed}: final {final:.4f}, best {best:.4f}"


def test_without_the_expectation_rule_the_spread_form_falls_on_that_model():
    final, best = windowed(run_residual_stream("msfusion-no-expectation", 0))
    assert final < best - 0.02  # the control: this test model does show the collapse
