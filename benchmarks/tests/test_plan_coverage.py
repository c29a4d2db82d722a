"""Plan coverage (benchmarks.coverage): independent window offsets per group train every weight,
where aligned windows leave most of them untrained (issue 15, part 1)."""

import pytest

from benchmarks.coverage import plan_coverage


@pytest.mark.parametrize("r, num", [(0.25, 8), (0.125, 16)])
def test_per_group_offsets_train_every_conv_weight(r, num):
    """ResNet-18 width 32, 40 rounds, constant overlap 0.5: the issue's measurement of the defect."""
    aligned = plan_coverage("msfusion (aligned)", r, num)
    per_group = plan_coverage("msfusion (per-group)", r, num)
    assert aligned["never_trained_fraction"] > 0.4  # the defect, as measured in the issue: 48.4 % and 72.9 %
    assert per_group["never_trained_fraction"] <= 0.01  # the target
    assert per_group["train_count_cv"] < aligned["train_count_cv"] / 4
