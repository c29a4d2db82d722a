"""The project's own ClientApp (``[tool.flwr.app.components] clientapp``), configured by the run
config: the model family, the data set and its partitioning, the training settings
(``msfusion_app.settings``). ``client_app.client`` is the same ClientApp for any model."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from functools import lru_cache
from logging import WARNING
from pathlib import Path

import torch
from flwr.app import ConfigRecord, Context
from flwr.common.logger import log

from client_app import footprint
from client_app.client import NodeSetup, make_client_app, memory_budget, node_capacity
from msfusion_app.settings import Settings
from msfusion_core.data import TensorData, load_partition, load_test
from msfusion_core.local.participant import Participant


@lru_cache(maxsize=4)
def _participant(model: str, width: int, layers: int, dataset: str, data_path: str, tokenizer: str) -> tuple[Participant, bool]:
    """The node's participant for this model family, and whether the family has BatchNorm."""
    family = Settings(model=model, model_width=width, model_layers=layers, dataset=dataset, data_path=data_path, tokenizer=tokenizer).family()
    return Participant(family.build, family.split_map, family.representation_layer, family.local_keys, family.post_build), family.has_batchnorm


def setup_from_run_config(context: Context) -> NodeSetup:
    """Partition id and count from the node config (simulation sets them; a SuperNode gets them
    from ``--node-config``); capacity from the node's ``split-ratio``, else the run config's tiers."""
    settings = Settings.from_mapping(context.run_config)
    try:
        pid, num = int(context.node_config["partition-id"]), int(context.node_config["num-partitions"])
    except KeyError as exc:
        raise ValueError(
            f"node config lacks {exc.args[0]!r}; start the SuperNode with --node-config 'partition-id=.. num-partitions=..'"
        ) from exc
    if not 0 <= pid < num:
        raise ValueError(f"partition-id {pid} is outside [0, num-partitions={num})")
    budget = memory_budget(context)
    if budget is not None and "split-ratio" not in context.node_config:
        capacity = 1.0  # the budget alone decides
    else:
        capacity = node_capacity(context, settings.capacity_tiers())
    path = settings.data_path or None
    cache = context.node_config.get(footprint.CACHE_DIR_KEY)

    def load() -> TensorData:
        return load_partition(
            settings.dataset, path, settings.partitioner, num, pid, settings.dirichlet_alpha, settings.seed, settings.seq_len,
            tokenizer=settings.tokenizer,
        )

    def train_data() -> TensorData:
        if not cache:
            return load()
        parts = (settings.dataset, settings.partitioner, num, pid, settings.dirichlet_alpha, settings.seed, settings.seq_len)
        key = (*parts, settings.tokenizer, node_data_identity(context, path))
        return cached_tensors(Path(str(cache)).expanduser() / "partitions", key, load)

    def test_data() -> TensorData:
        test = load_test(settings.dataset, path, seq_len=settings.seq_len, tokenizer=settings.tokenizer)
        share = torch.arange(pid, int(test.y.shape[0]), num)  # an IID 1/num share of the test split
        return TensorData(test.x[share], test.y[share])

    participant, has_batchnorm = _participant(
        settings.model, settings.model_width, settings.model_layers, settings.dataset, settings.data_path, settings.tokenizer
    )
    return NodeSetup(
        participant=participant,
        partition_id=pid,
        capacity=capacity,
        train_config=settings.train_config(),
        train_data=train_data,
        test_data=test_data,
        examples_per_round=settings.local_examples,
        bn_calibration_batches=8 if has_batchnorm else 0,
        memory_budget_mb=budget,
    )


IDENTITY_KEY = "msfusion-data-identity"


def node_data_identity(context: Context, path: str | None) -> list:
    """``data_identity(path)``, walked once per node and run: kept in the node's Flower state, which
    outlives the fresh ClientApp process a SuperNode starts for every message."""
    record = context.state.config_records.get(IDENTITY_KEY)
    if record is not None and record.get("path") == str(path):
        return json.loads(str(record["identity"]))
    identity = data_identity(path)
    context.state[IDENTITY_KEY] = ConfigRecord({"path": str(path), "identity": json.dumps(identity)})
    return identity


def data_identity(path: str | None) -> list:
    """The files under a data folder (names, sizes, modification times): a cached partition is
    stale once any of them changes. Hidden entries (the tokenizer cache written there) are skipped."""
    if path is None:
        return []
    root = Path(path).expanduser().resolve()
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(f for f in files if not f.startswith(".")):
            stat = (Path(folder) / name).stat()
            found.append([str((Path(folder) / name).relative_to(root)), stat.st_size, stat.st_mtime_ns])
    return [str(root), found]


def cached_tensors(folder: Path, key: tuple, load: Callable[[], TensorData]) -> TensorData:
    """``load()``'s tensors, kept in ``folder`` under ``key``'s hash: a SuperNode starts a fresh
    ClientApp process for every message, and reading its partition back costs no data library. An
    unreadable entry is loaded again and rewritten."""
    from safetensors.torch import load_file, save_file

    file = folder / (hashlib.sha256(json.dumps(key, default=str).encode()).hexdigest()[:32] + ".safetensors")
    try:
        tensors = load_file(file)
        return TensorData(tensors["x"], tensors["y"])
    except Exception:  # noqa: BLE001 - absent, truncated or not safetensors (SafetensorError): loaded again
        pass
    data = load()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = file.with_suffix(f".{os.getpid()}.tmp")
        save_file({"x": data.x.contiguous(), "y": data.y.contiguous()}, str(tmp))
        tmp.replace(file)
    except OSError as exc:
        log(WARNING, "could not keep the partition in %s (%s): it will be loaded again next round", folder, exc)
    return data


app = make_client_app(setup_from_run_config)
