"""What training costs a node at each capacity, and the capacity a memory budget affords.

A node knows how much memory it has, not what fraction of a model's units it can train. So it
measures: for each capacity tier, a fresh child process loads the node's data as its ClientApp
does, builds only the sub-model of that capacity from a sliced state (never the full model), and
trains a few one-batch rounds through ``Participant.train``. The child reports

    baseline_mb   RSS once imports and data are loaded, before any model exists
    extra_mb      peak RSS while training, above that baseline (weights, gradients, optimizer
                  state, activations, the contrastive term's frozen copies)
    peak_mb       the child's peak RSS over its whole life, data loading included
    step_seconds  the median time of a training step (the first, which also counts FLOPs, excluded)

A child that is killed (the OOM killer of a capped node) reports nothing: that tier does not fit.
``peak_mb`` is what a budget is compared with, since a ClientApp process pays all of it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import multiprocessing
import os
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CAPACITY_TIERS: tuple[float, ...] = (1.0, 0.5, 0.25, 0.125)
MEASURED_STEPS = 6  # one-batch rounds: the 4th carries the contrastive term at regularised-fraction 1/4
MEMORY_BUDGET_KEY, CACHE_DIR_KEY = "memory-budget-mb", "cache-dir"  # node config


@dataclass(frozen=True)
class Footprint:
    capacity: float
    batch_size: int
    baseline_mb: float
    extra_mb: float
    peak_mb: float
    step_seconds: float
    flops_per_step: float
    bytes_down: int  # the sub-model a node receives
    bytes_up: int  # the trained parameters it sends back


# -- in the child ------------------------------------------------------------------------------
def _status_mb(field: str) -> float:
    """A ``/proc/self/status`` memory field (VmRSS, VmHWM) in MB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise OSError(f"/proc/self/status has no {field}")


def _reset_peak() -> None:
    """Start VmHWM afresh at the current RSS (Linux ≥ 4.0), so that the training's peak is not
    confused with the data loading's."""
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")


def resolve(setup: Callable | str) -> Callable:
    """A setup function, or its ``"module:name"`` (so that a parent measuring for a node need not
    import the model's libraries itself)."""
    if callable(setup):
        return setup
    module, _, name = str(setup).partition(":")
    target: Any = importlib.import_module(module)
    for part in name.split("."):
        target = getattr(target, part)
    return target


def node_setup(setup: Callable | str, run_config: Mapping[str, Any], node_config: Mapping[str, Any]) -> Any:
    """What ``setup`` says this node has, for a node with these run and node configs."""
    from flwr.app import Context, RecordDict

    return resolve(setup)(Context(run_id=0, node_id=0, node_config=dict(node_config), state=RecordDict(), run_config=dict(run_config)))


def measure_in_this_process(
    setup: Callable | str, run_config: Mapping[str, Any], node_config: Mapping[str, Any], capacity: float, steps: int, depth_share: float = 0.0
) -> Footprint:
    """The measurement itself (run it in a fresh process: it reads this process's RSS). The
    sub-model is the capacity's prefix, spent on blocks and width as ``depth_share`` says."""
    from msfusion_core.data.tensors import TensorData
    from msfusion_core.method.planner import plan_static_prefix

    node = node_setup(setup, run_config, node_config)
    cfg = dataclasses.replace(node.train_config, epochs=1)
    data = node.train_data()
    batch = TensorData(data.x[: cfg.batch_size], data.y[: cfg.batch_size])
    del data
    part = node.participant
    plan = plan_static_prefix([(0, capacity)], part.group_sizes, depth_share)[0]
    part.local_state()  # the family's local tensors: part of the baseline, as in a ClientApp
    load_peak = _status_mb("VmHWM")
    baseline = _status_mb("VmRSS")
    _reset_peak()
    received = fresh_substate(part, plan)
    times, previous, update = [], None, None
    for i in range(steps):
        update, previous = part.train(plan, received, batch, cfg, previous=previous, seed=i, round_index=i)
        times.append(update.result.seconds)
    peak = _status_mb("VmHWM")
    return Footprint(
        capacity=capacity,
        batch_size=int(batch.y.shape[0]),
        baseline_mb=baseline,
        extra_mb=peak - baseline,
        peak_mb=max(load_peak, peak),
        step_seconds=statistics.median(times[1:] or times),
        flops_per_step=float(update.result.flops),
        bytes_down=update.bytes_down,
        bytes_up=update.bytes_up,
    )


def fresh_substate(part, plan) -> dict:
    """What a node would receive for ``plan``, freshly initialised, without the full model: the
    sliced shapes built as a sub-model, then each module's own ``reset_parameters``."""
    import torch

    from msfusion_core.method.split_map import model_state

    with torch.device("meta"):
        dtypes = {k: v.dtype for k, v in model_state(part.build()).items()}
    units = plan.unit_indices()
    gen = torch.Generator().manual_seed(0)
    state = {
        local: torch.randn(part.slicer.sub_shape(k, part.full_shapes[k], units), generator=gen).mul_(0.02).to(dtypes[k])
        for k, local in part.slicer.held(part.full_shapes, units).items()
    }
    model = part.model(state)
    torch.manual_seed(0)
    for module in model.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
    return {k: v for k, v in model_state(model).items() if k in state}


def load_in_this_process(setup: Callable | str, run_config: Mapping[str, Any], node_config: Mapping[str, Any]) -> float:
    """Load the node's training data once (which fills its partition cache, if it keeps one) and
    return the peak RSS that cost, in MB."""
    node_setup(setup, run_config, node_config).train_data()
    return _status_mb("VmHWM")


def _child(conn, fn, args) -> None:
    try:  # be the one the OOM killer picks, not the SuperNode that started us
        with open("/proc/self/oom_score_adj", "w") as adj:
            adj.write("1000")
    except OSError:
        pass
    try:
        result = fn(*args)
        conn.send(("ok", dataclasses.asdict(result) if dataclasses.is_dataclass(result) else result))
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which raises it with context
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        conn.close()


def in_child(fn: Callable, *args: Any) -> Any:
    """``fn(*args)`` in a fresh (spawned) process; None when that process was killed. ``fn`` and
    the args must pickle: module-level functions and plain data. RuntimeError carries its error."""
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(child, fn, args), daemon=True)
    proc.start()
    child.close()
    try:
        result = parent.recv()
    except EOFError:  # the child died before it could answer
        result = None
    proc.join()
    if result is None:
        return None
    kind, payload = result
    if kind == "error":
        raise RuntimeError(payload)
    return payload


def measure(
    setup: Callable | str, run_config: Mapping[str, Any], node_config: Mapping[str, Any], capacity: float, steps: int = MEASURED_STEPS, depth_share: float = 0.0
) -> Footprint | None:
    """Measure ``capacity`` in a fresh child process; None when the child was killed (out of memory).

    ``setup`` is the ClientApp's setup function (``make_client_app``'s argument), or its
    ``"module:name"``; a function must be module-level, since the child imports it by name."""
    try:
        found = in_child(measure_in_this_process, setup, dict(run_config), dict(node_config), float(capacity), steps, float(depth_share))
    except RuntimeError as exc:
        raise RuntimeError(f"measuring the training footprint at capacity {capacity:g} failed: {exc}") from exc
    return None if found is None else Footprint(**found)


# -- the budget --------------------------------------------------------------------------------
def choose_capacity(budget_mb: float, footprints: Mapping[float, Footprint | None], cap: float = 1.0) -> float:
    """The largest capacity at most ``cap`` whose measured peak fits ``budget_mb`` (None: the
    measurement was killed, so it does not fit). ValueError naming the smallest footprint when none fits."""
    fitting = [r for r, f in footprints.items() if r <= cap and f is not None and f.peak_mb <= budget_mb]
    if fitting:
        return max(fitting)
    measured = {r: f for r, f in footprints.items() if r <= cap}
    if not measured:
        raise ValueError(f"no capacity tier at or below split-ratio {cap} was measured")
    smallest = min(measured)
    f = measured[smallest]
    needs = f"a peak of {f.peak_mb:.0f} MB" if f is not None else "more (its measurement was killed)"
    raise ValueError(
        f"memory-budget-mb={budget_mb:g} is below the smallest training footprint: capacity {smallest:g} needs {needs}; "
        "this node cannot take part"
    )


def footprint_key(node: Any, node_config: Mapping[str, Any], capacity: float, steps: int, depth_share: float = 0.0) -> str:
    """What a measurement depends on: the model's shapes, the training settings, the node's own
    config (its partition; not its budget or split-ratio), the capacity, the steps and how the
    capacity is spent on blocks (``depth_share``, when not 0). The run's
    other settings (rounds, planner, evaluation) do not change what a ClientApp process holds, so a
    node measured before its first run, or for another planner, is not measured again."""
    part, cfg = node.participant, node.train_config
    train = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)} | {"preprocess": getattr(cfg.preprocess, "__qualname__", "")}
    own = {k: v for k, v in node_config.items() if k not in (MEMORY_BUDGET_KEY, "split-ratio")}
    blob = json.dumps(
        [sorted((k, list(v)) for k, v in part.full_shapes.items()), sorted(train.items()), sorted(own.items()), float(capacity), steps]
        + ([float(depth_share)] if depth_share else []),
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def tier_keys(
    setup: Callable | str, run_config: Mapping[str, Any], node_config: Mapping[str, Any], tiers: Sequence[float], steps: int, depth_share: float = 0.0
) -> dict[float, str]:
    node = node_setup(setup, run_config, node_config)
    return {r: footprint_key(node, node_config, r, steps, depth_share) for r in tiers}


def cache_dir(node_config: Mapping[str, Any]) -> Path:
    return Path(str(node_config.get(CACHE_DIR_KEY, "") or Path.home() / ".cache" / "msfusion")).expanduser()


def capacity_for_budget(
    setup: Callable | str,
    run_config: Mapping[str, Any],
    node_config: Mapping[str, Any],
    budget_mb: float,
    cap: float = 1.0,
    tiers: Sequence[float] = CAPACITY_TIERS,
    steps: int = MEASURED_STEPS,
    depth_share: float = 0.0,
    node: Any = None,
) -> tuple[float, dict[float, Footprint | None]]:
    """The capacity this node's budget affords, and the footprints it measured (cached per setting
    in ``<cache-dir>/footprints.json``). Tiers are measured from the smallest up, stopping at the
    first that does not fit, so a capped node never tries what is far beyond it. ``depth_share``:
    the server's planner's (sent with the capacity query), so the sub-models measured are those
    the node will train. ``node``: the node's ``NodeSetup``, where the caller has it."""
    if callable(setup) and "<" in getattr(setup, "__qualname__", "<"):
        raise ValueError(
            f"{MEMORY_BUDGET_KEY} needs a module-level setup function (the measurement imports it by name in a child "
            f"process), not {getattr(setup, '__qualname__', setup)!r}"
        )
    path = cache_dir(node_config) / "footprints.json"
    try:
        cache = json.loads(path.read_text())
    except (OSError, ValueError):
        cache = {}
    found: dict[float, Footprint | None] = {}
    primed = False
    tiers = sorted(t for t in tiers if t <= cap)
    # A parent handed a setup's name (the command line) stays light: the setup runs in a child.
    if node is not None:  # the caller's own setup of this node: not run again
        keys = {r: footprint_key(node, node_config, r, steps, depth_share) for r in tiers}
    elif callable(setup):
        keys = tier_keys(setup, run_config, node_config, tiers, steps, depth_share)
    else:
        keys = in_child(tier_keys, setup, dict(run_config), dict(node_config), tiers, steps, depth_share)
    for r in tiers:
        key = keys[r]
        if key not in cache and not primed and node_config.get(CACHE_DIR_KEY):
            # Every round after the first reads the partition back from the node's cache: measure that.
            in_child(load_in_this_process, setup, dict(run_config), dict(node_config))
            primed = True
        if key in cache:
            found[r] = Footprint(**cache[key]) if cache[key] is not None else None
        else:
            found[r] = measure(setup, run_config, node_config, r, steps, depth_share)
            cache[key] = dataclasses.asdict(found[r]) if found[r] is not None else None
        if found[r] is None or found[r].peak_mb > budget_mb:
            break
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(cache, indent=1))
        tmp.replace(path)
    except OSError:
        pass  # a read-only home: measured again next time, never wrong
    return choose_capacity(budget_mb, found, cap), found


def describe(found: Mapping[float, Footprint | None]) -> str:
    """``r=0.125: 420 MB peak, r=0.25: 512 MB peak, r=0.5: killed``."""
    return ", ".join(f"r={r:g}: " + (f"{f.peak_mb:.0f} MB peak" if f is not None else "killed") for r, f in sorted(found.items()))


def main(argv: list[str] | None = None) -> None:
    """Measure a node's footprints ahead of its first run, into its cache (so its capacity query
    only reads them), and print them with the capacity a budget affords."""
    import argparse
    import shlex
    import tomllib

    def value(text: str) -> Any:
        try:
            return tomllib.loads(f"v = {text}")["v"]
        except tomllib.TOMLDecodeError:
            return text  # a bare string: its quotes were the shell's

    def pairs(text: str) -> dict[str, Any]:
        return {k: value(v) for k, _, v in (item.partition("=") for item in shlex.split(text))}

    parser = argparse.ArgumentParser(prog="python -m client_app.footprint", description=main.__doc__)
    parser.add_argument("--run-config", default="", help="the run's settings, as flwr run takes them: 'model=\"resnet18\" batch-size=64'")
    parser.add_argument("--node-config", required=True, help="as the SuperNode's --node-config, with memory-budget-mb and cache-dir")
    parser.add_argument("--setup", default="client_app.app:setup_from_run_config", help="the ClientApp's setup function, module:name")
    parser.add_argument("--depth-share", type=float, default=0.0, help="as the server's planner: 0 width windows (msfusion, the baselines), 1 blocks (msfusion-depth, shallow)")
    args = parser.parse_args(argv)
    run_config, node_config = pairs(args.run_config), pairs(args.node_config)
    if MEMORY_BUDGET_KEY not in node_config:
        parser.error(f"--node-config needs {MEMORY_BUDGET_KEY}")
    try:
        capacity, found = capacity_for_budget(
            args.setup, run_config, node_config, float(node_config[MEMORY_BUDGET_KEY]), float(node_config.get("split-ratio", 1.0)), depth_share=args.depth_share
        )
    except ValueError as exc:
        raise SystemExit(str(exc)) from None
    print(json.dumps({"capacity": capacity, "footprints": {str(r): f and dataclasses.asdict(f) for r, f in found.items()}}))


if __name__ == "__main__":
    main()
