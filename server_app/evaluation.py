"""What the server holds of the data (the test split, BatchNorm calibration rows) and the central
evaluation of the global model."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord

from msfusion_app.settings import Settings
from msfusion_core.data import TensorData, get_dataset, load_partition, load_test
from msfusion_core.local.training import calibrate_batchnorm, evaluate
from msfusion_core.method.split_map import block_stacks
from msfusion_core.method.submodel import build_submodel
from msfusion_core.models import ModelFamily

CALIBRATION_BATCHES = 8  # of 128 rows: BatchNorm statistics of the evaluated model


class ServerData:
    """The test split (and a language model's validation split), and BatchNorm calibration rows."""

    def __init__(self, settings: Settings, family: ModelFamily) -> None:
        self.settings = settings
        self.preprocess = settings.preprocess()
        path, limit, seq, tok = settings.data_path or None, settings.central_eval_examples or None, settings.seq_len, settings.tokenizer
        self.test = load_test(settings.dataset, path, limit=limit, seq_len=seq, tokenizer=tok)
        # A language model reports validation and test perplexity (exp of the per-token loss).
        language_model = get_dataset(settings.dataset).language_model
        self.valid = load_test(settings.dataset, path, limit=limit, split="validation", seq_len=seq, tokenizer=tok) if language_model else None
        # The server calibrates BatchNorm on training data it is allowed to see: a fixed IID sample
        # (none is loaded for a model without BatchNorm).
        keep = CALIBRATION_BATCHES * 128 if family.has_batchnorm else 0
        calib = load_partition(settings.dataset, path, "iid", 1, 0, seed=settings.seed, seq_len=seq, tokenizer=tok) if keep else None
        self.calibration = TensorData(calib.x[:keep], calib.y[:keep]) if calib is not None else None

    def evaluated_round(self, server_round: int) -> bool:
        return server_round % self.settings.eval_every == 0 or server_round == self.settings.num_server_rounds

    def calibrate(self, server_round: int | None, model: torch.nn.Module) -> None:
        """BatchNorm statistics for the evaluated model, from the server's calibration rows, at the
        rounds it is tested (a calibration pass costs about a third of a C1 round)."""
        if server_round is not None and not self.evaluated_round(server_round):
            return
        calibrate_batchnorm(model.to(self.settings.torch_device()), self.calibration, self.preprocess, num_batches=CALIBRATION_BATCHES)
        model.to("cpu")


class CentralEvaluation:
    """Test the arrays Flower hands over (the strategy's evaluated model, the run's result) at the
    rounds ``eval-every`` says; returns the row's figures ({} at other rounds)."""

    def __init__(self, settings: Settings, family: ModelFamily, data: ServerData) -> None:
        self.settings, self.family, self.data = settings, family, data

    def model_of(self, arrays: ArrayRecord) -> torch.nn.Module:
        stacks = block_stacks(self.family.split_map)
        return build_submodel(self.family.build, arrays.to_torch_state_dict(), self.family.post_build, stacks).to(self.settings.torch_device())

    def __call__(self, run_round: int, arrays: ArrayRecord) -> dict[str, Any]:
        if not self.data.evaluated_round(run_round):
            return {}
        model = self.model_of(arrays)
        loss, accuracy = evaluate(model, self.data.test, self.data.preprocess)
        row = {"central-accuracy": accuracy, "central-loss": loss}
        if self.data.valid is not None:
            valid_loss, _ = evaluate(model, self.data.valid, self.data.preprocess)
            row |= {"central-perplexity": math.exp(loss), "central-valid-perplexity": math.exp(valid_loss)}
        return row


def server_memory_mb() -> dict[str, float]:
    """This process's resident memory now and its peak so far, in MiB (Linux: /proc and getrusage)."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        now = pages * resource.getpagesize() / 2**20
    except (OSError, IndexError, ValueError):
        now = float("nan")
    return {"server-rss-mb": now, "server-peak-rss-mb": peak}
