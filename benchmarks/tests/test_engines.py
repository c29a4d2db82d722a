"""The in-process runner trains the same model as `flwr run .`: digits, 3 rounds, the same seed.

Both engines drive the same ServerApp and ClientApp, Flower's transport serialises arrays
losslessly, and each node keeps its Context state across rounds in both (the contrastive term is
on: its negative lives in that state). What differs is torch's thread count: the simulation gives
each ClientApp one CPU. At one thread θ after round 3 is bit-identical; at two, a conv's reduction
order differs and θ agrees to float rounding."""

from __future__ import annotations

import json

import torch
from safetensors.torch import load_file

from benchmarks.run import run_once

# The abstract's form (spread windows, adaptive overlap, the contrastive term), whose every part
# crosses the transport: plans with overlap and spread, and the node's Flower state. The 2-thread
# bound is float reordering.
CONFIG = {
    "num-server-rounds": 3, "split-ratio-tiers": "1.0,0.5,0.25", "local-examples": 96, "seed": 3, "contrastive-mu": 1.0,
    "overlap-schedule": "adaptive", "overlap-start": 0.5, "inclusion-scaling": False,
}


def _theta(work, rnd: int = 3) -> dict[str, torch.Tensor]:
    return load_file(str(work / "runs" / "r" / "checkpoints" / f"round-{rnd:04d}.safetensors"))


def _rows(work) -> list[dict]:
    return [json.loads(line) for line in (work / "runs" / "r" / "metrics.jsonl").read_text().splitlines()]


def test_in_process_runner_equals_flwr_run(tmp_path):
    flwr = run_once("flwr", CONFIG, work=tmp_path / "flwr", run_name="r", num_supernodes=3, timeout=300.0)
    assert flwr.status == "finished:completed", flwr
    for threads in (1, 2):
        work = tmp_path / f"local-{threads}"
        local = run_once("local", CONFIG, work=work, run_name="r", num_supernodes=3, timeout=300.0, num_threads=threads)
        assert local.status == "completed", local
        a, b = _theta(work), _theta(tmp_path / "flwr")
        assert a.keys() == b.keys()
        if threads == 1:
            differ = [k for k in a if not torch.equal(a[k], b[k])]
            assert not differ, f"θ differs between the engines at {differ[:5]}"
            assert [r["central-accuracy"] for r in _rows(work)] == [r["central-accuracy"] for r in _rows(tmp_path / "flwr")]
        else:
            worst = max(float((a[k].double() - b[k].double()).abs().max()) for k in a)
            assert worst < 1e-6, worst
        assert _rows(work)[-1]["never-trained-fraction"] == _rows(tmp_path / "flwr")[-1]["never-trained-fraction"]
