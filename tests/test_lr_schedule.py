"""The server's learning-rate schedule: a step decay at fractions of the run, sent with each plan as
``lr-factor`` and applied by every node to its own lr."""

import pytest
from flwr.app import ConfigRecord

from client_app.client import with_server_settings
from msfusion_app.protocol import RoundSettings
from msfusion_app.settings import Settings
from msfusion_core.local.training import TrainConfig, step_decay
from msfusion_core.models import get_family
from server_app.app import make_strategy
from msfusion.local_grid import LocalGrid, simulated_node_configs
from server_app.strategy import MSfusion


def test_step_decay_multiplies_after_each_milestone():
    factors = [step_decay(t, 300, [0.5, 0.75], 0.1) for t in (1, 150, 151, 225, 226, 300)]
    assert factors == pytest.approx([1.0, 1.0, 0.1, 0.1, 0.01, 0.01])
    assert step_decay(300, 300, [], 0.1) == 1.0
    assert Settings.from_mapping({"num-server-rounds": 300, "lr-decay-at": "0.5, 0.75"}).lr_factor(226) == pytest.approx(0.01)


@pytest.mark.parametrize(
    "config, message",
    [
        ({"lr-decay-at": "0.75,0.5"}, "increasing fractions in \\(0, 1\\)"),
        ({"lr-decay-at": "1.0"}, "increasing fractions in \\(0, 1\\)"),
        ({"lr-decay-at": "half"}, "fractions of the run separated by commas"),
    ],
)
def test_bad_schedules_are_named(config, message):
    with pytest.raises(ValueError, match=message):
        Settings.from_mapping(config)


def test_nodes_apply_the_factor_the_server_sends():
    cfg = TrainConfig(lr=0.05)
    assert with_server_settings(cfg, RoundSettings.read(ConfigRecord({"lr_factor": 0.1}))).lr == pytest.approx(0.005)
    assert with_server_settings(cfg, RoundSettings.read(ConfigRecord({}))).lr == 0.05  # a server without a schedule
    for bad in (0.0, -1.0, float("inf"), True):
        with pytest.raises(ValueError, match="lr_factor"):
            RoundSettings.read(ConfigRecord({"lr_factor": bad}))


def test_the_strategy_sends_the_factor_of_each_round_and_nodes_train_with_it():
    config = {"num-server-rounds": 10, "lr-decay-at": "0.5", "local-examples": 32}
    strategy = make_strategy(Settings.from_mapping(config))
    grid = LocalGrid(simulated_node_configs(2), config)
    largest_change = {}
    for t in (5, 6):  # before and after the milestone at round 5
        msgs = list(strategy.configure_train(t, strategy.handed, ConfigRecord(), grid))
        assert [m.content.config_records["settings"]["lr_factor"] for m in msgs] == pytest.approx([1.0 if t == 5 else 0.1] * 2)
        replies = list(grid.send_and_receive(msgs))
        sent = [m.content.array_records["arrays"].to_torch_state_dict() for m in msgs]
        got = [r.content.array_records["arrays"].to_torch_state_dict() for r in replies]
        largest_change[t] = max(float((g[k] - s_[k]).abs().max()) for s_, g in zip(sent, got) for k in g)
        strategy.aggregate_train(t, replies)
    assert largest_change[5] > 1e-3 and largest_change[6] < 0.3 * largest_change[5]  # the lr / 10
    plain = MSfusion(get_family("digits-cnn").build, get_family("digits-cnn").split_map)
    assert plain.lr_factor is None  # a strategy without a schedule sends none, and nodes keep their lr
