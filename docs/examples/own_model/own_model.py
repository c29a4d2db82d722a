"""MSfusion with a model this project does not ship: a complete Flower app in one file.

From this folder (its pyproject.toml names `own_model:server` and `own_model:client`):

    flwr run . --stream --federation-config "num-supernodes=3"

tests/test_own_model_example.py runs it that way, and in process.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from flwr.app import ArrayRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp
from sklearn.datasets import load_digits
from torch import nn

from msfusion import MSfusion, NodeSetup, Participant, TensorData, TrainConfig, evaluate, make_client_app, node_capacity


# 1. Your model: any nn.Module made of Linear / Conv / norm / Embedding leaves.
class TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 16, 3, padding=1)
        self.proj = nn.Linear(16 * 4 * 4, 64)
        self.head = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [B, 1, 8, 8]
        x = F.max_pool2d(F.relu(self.conv(x)), 2)  # [B, 16, 4, 4]
        x = F.relu(self.proj(x.flatten(1)))  # [B, 64]; channel c owns flat features [16c, 16c + 16)
        return self.head(x)


# 2. Its split map: which dimension of which tensor indexes which group of units.
#    ("channels", 16): each conv channel owns a block of 16 consecutive flattened features.
SPLIT_MAP = {
    "conv.weight": ("channels", None, None, None),
    "conv.bias": ("channels",),
    "proj.weight": ("hidden", ("channels", 16)),
    "proj.bias": ("hidden",),
    "head.weight": (None, "hidden"),  # class outputs stay whole
}


def digits(split: str) -> TensorData:
    """Your data as tensors (here scikit-learn's digits, 80/20)."""
    x, y = load_digits(return_X_y=True)
    cut = int(0.8 * len(y))
    x = torch.tensor(x / 16.0, dtype=torch.float32).reshape(-1, 1, 8, 8)
    y = torch.tensor(y, dtype=torch.long)
    return TensorData(x[:cut], y[:cut]) if split == "train" else TensorData(x[cut:], y[cut:])


# 3. The ServerApp: the strategy takes the model constructor and the split map.
server = ServerApp()


@server.main()
def main(grid: Grid, context: Context) -> None:
    run_server(grid, num_rounds=int(context.run_config.get("num-server-rounds", 5)))


def run_server(grid: Grid, num_rounds: int):
    # MSfusion as published: double shifting, adaptive overlap, overlap-weighted aggregation and the
    # contrastive loss. With BatchNorm, pass prepare_model=lambda t, m: calibrate_batchnorm(m, server_rows).
    strategy = MSfusion(TinyNet, SPLIT_MAP, default_capacity=0.5, seed=0)
    test = digits("test")

    def central_evaluation(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        model = TinyNet()
        model.load_state_dict(arrays.to_torch_state_dict())  # the strategy's evaluated model
        loss, accuracy = evaluate(model, test)  # as_float: your tensors as they are (pass preprocess= for your own)
        return MetricRecord({"accuracy": accuracy, "loss": loss})

    # result.arrays is the model central_evaluation scored last: save it, load it, serve it.
    return strategy.start(grid, ArrayRecord(TinyNet().state_dict()), num_rounds=num_rounds, evaluate_fn=central_evaluation)


# 4. The ClientApp: say what a node has; make_client_app does the rest.
def node_setup(context: Context) -> NodeSetup:
    pid, num = int(context.node_config["partition-id"]), int(context.node_config["num-partitions"])
    train = digits("train")
    mine = torch.from_numpy(np.arange(pid, len(train.y), num))  # an IID shard

    return NodeSetup(
        participant=Participant(TinyNet, SPLIT_MAP, representation_layer="head"),
        partition_id=pid,
        # A SuperNode's own `split-ratio`, else (simulated nodes) a tier by partition id.
        capacity=node_capacity(context, tiers=(1.0, 0.5, 0.25)),
        train_config=TrainConfig(epochs=2, batch_size=32, lr=0.05),  # μ: the strategy sends it
        train_data=lambda: TensorData(train.x[mine], train.y[mine]),
        test_data=lambda: digits("test"),
    )


client = make_client_app(node_setup)
