"""Core costs: sub-model parameter/FLOP fractions, and aggregation time next to a plain copy.

    python benchmarks/core_costs.py [--repeats 5] [--out docs/results/core_costs.json]

Fractions are measured (parameters counted, FLOPs of one training step — forward + backward —
counted by torch's FlopCounterMode). Times are medians over ``--repeats`` runs, measured side by
side in one process: ``scatter_average`` of P sub-models of ResNet-18 (width 64) at r = 1/2, and
``torch.cat`` + ``clone`` of the same number of bytes (what any aggregation must at least read and
write).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from msfusion_core.method.aggregate import Contribution, scatter_average
from msfusion_core.local.measure import count_flops, num_bytes, num_parameters
from msfusion_core.models import get_family
from msfusion_core.method.planner import make_planner
from msfusion_core.method.slicing import Slicer
from msfusion_core.method.split_map import group_sizes, model_shapes, model_state
from msfusion_core.method.submodel import build_submodel
from msfusion_core.local.training import logits_of, token_loss

RATIOS = (1.0, 0.5, 0.25, 0.125)
WIKITEXT2_VOCAB = 33_278  # the word-level vocabulary of WikiText-2's training split


def _batch(family: str, vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two examples: images for the CNNs, 64-token sequences for the transformers."""
    if family == "llama":
        x = torch.randint(0, vocab, (2, 64))
        return x, torch.randint(0, vocab, (2, 64))
    if family == "minilm":
        return torch.randint(1000, 30000, (2, 64)), torch.zeros(2, dtype=torch.long)
    shape = (1, 8, 8) if family == "digits-cnn" else (3, 32, 32)
    return torch.randn(2, *shape), torch.zeros(2, dtype=torch.long)


def fractions(family: str, num_classes: int = 10, width: int | None = None, layers: int | None = None) -> dict[str, dict[str, float]]:
    """Per r: parameters, training-step FLOPs and bytes sent of a sub-model, over the full model's.

    ``sent`` counts what travels each way (local tensors such as MiniLM's frozen embeddings stay
    home); it is relative to the full model's parameters, which full-model FedAvg would send."""
    fam = get_family(family, num_classes, width, layers)
    torch.manual_seed(0)
    full = fam.build()
    slicer = Slicer(fam.split_map)
    state = model_state(full)
    gs = group_sizes(model_shapes(full), fam.split_map)
    x, y = _batch(family, num_classes)

    def step_flops(model: torch.nn.Module) -> int:
        return count_flops(lambda: token_loss(logits_of(model(x)), y).backward())

    param_keys = [k for k, _ in full.named_parameters()]
    sent_keys = [k for k in param_keys if k not in fam.local_keys]
    base_params, base_flops = num_parameters(full), step_flops(full)
    base_bytes = num_bytes({k: state[k] for k in param_keys})
    out = {}
    for r in RATIOS:
        plan = make_planner("msfusion").plan(1, [(0, r)], gs).participants[0]
        sub_state = slicer.extract(state, plan.unit_indices())
        sub = build_submodel(fam.build, sub_state)
        out[str(r)] = {
            "params": num_parameters(sub) / base_params,
            "flops": step_flops(sub) / base_flops,
            "sent_bytes": num_bytes({k: sub_state[k] for k in sent_keys}) / base_bytes,
            "r_squared": r * r,
        }
    out["full"] = {"params": base_params, "flops_per_step_of_2": base_flops, "param_bytes": base_bytes,
                   "local_bytes_never_sent": num_bytes({k: state[k] for k in fam.local_keys})}
    return out


def median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def aggregation_times(num_participants: int, repeats: int) -> dict[str, float]:
    fam = get_family("resnet18")
    torch.manual_seed(0)
    full = fam.build()
    state = {k: v.detach() for k, v in full.state_dict().items()}
    keys = [k for k, _ in full.named_parameters()]
    slicer = Slicer(fam.split_map)
    gs = group_sizes(model_shapes(full), fam.split_map)
    plan = make_planner("msfusion").plan(1, [(n, 0.5) for n in range(num_participants)], gs)
    contribs = []
    for pp in plan.participants.values():
        units = pp.unit_indices()
        sub = slicer.extract(state, units, keys)
        contribs.append(Contribution(units, {k: v + 0.01 for k, v in sub.items()}, 100.0))
    total_bytes = sum(t.numel() * t.element_size() for c in contribs for t in c.state.values())
    flat = [t.reshape(-1) for c in contribs for t in c.state.values()]

    agg = median_seconds(lambda: scatter_average(state, contribs, slicer, keys=keys), repeats)
    copy = median_seconds(lambda: torch.cat(flat).clone(), repeats)
    result = {
        "participants": num_participants,
        "sub_model_bytes_total": total_bytes,
        "aggregate_seconds": agg,
        "copy_seconds": copy,
        "ratio": agg / copy,
        "aggregate_GB_per_s": total_bytes / agg / 1e9,
    }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default="docs/results/core_costs.json")
    parser.add_argument("--transformers", action="store_true", help="fractions of the LM (default size, WikiText-2 vocabulary) and MiniLM only")
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    result: dict = {
        "machine": {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(), "torch": torch.__version__},
    }
    if args.transformers:
        result["fractions"] = {
            "llama_8x512_wikitext2_vocab": fractions("llama", WIKITEXT2_VOCAB),
            "llama_4x256_wikitext2_vocab (the CPU benchmark's size)": fractions("llama", WIKITEXT2_VOCAB, width=256, layers=4),
            "minilm_l6_sst2": fractions("minilm", 2),
        }
    else:
        result["repeats"] = args.repeats
        result["fractions"] = {"resnet18_w64": fractions("resnet18"), "digits_cnn_w32": fractions("digits-cnn")}
        result["aggregation_resnet18_w64_r0.5"] = [aggregation_times(10, args.repeats), aggregation_times(100, args.repeats)]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
