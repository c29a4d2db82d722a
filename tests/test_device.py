"""Local training and evaluation on a GPU (Settings.device): the reply comes back on the CPU and
matches CPU training to float rounding. Skipped where torch sees no CUDA device."""

import pytest
import torch

from msfusion_app.settings import Settings
from msfusion_core.data import load_partition
from msfusion_core.models import get_family
from msfusion_core.local.participant import Participant
from msfusion_core.method.planner import make_planner
from msfusion_core.method.server import SubmodelServer
from msfusion_core.local.training import TrainConfig


def test_cuda_is_refused_by_name_where_there_is_none():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(ValueError, match="torch sees no CUDA GPU"):
        Settings.from_mapping({"device": "cuda"})
    assert Settings.from_mapping({"device": "auto"}).torch_device() == "cpu"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_training_on_cuda_matches_cpu():
    fam = get_family("digits-cnn")
    server = SubmodelServer(fam.build, fam.split_map, make_planner("msfusion"))
    part = Participant(fam.build, fam.split_map, fam.representation_layer)
    plan = server.plan_round(1, [(0, 0.5)]).participants[0]
    data = load_partition("digits", None, "iid", 4, 0)
    updates = {}
    for device in ("cpu", "cuda"):
        cfg = TrainConfig(epochs=1, batch_size=32, lr=0.05, mu=1.0, device=device)
        updates[device], _ = part.train(plan, server.download(plan), data, cfg, seed=3)
    for k, v in updates["cpu"].state.items():
        assert updates["cuda"].state[k].device.type == "cpu"
        assert torch.allclose(v, updates["cuda"].state[k], atol=1e-4), k
