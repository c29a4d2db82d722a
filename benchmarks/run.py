"""Run a named experiment's grid and write its results.

    python -m benchmarks.run C1 [--methods msfusion-r0.25,small-r0.25] [--seeds 0,1] [--engine flwr]

Runs go through the in-process runner by default (``msfusion.local_grid``: the real Strategy and
ClientApp in this process, no Ray, no SuperLink); ``--engine flwr`` runs the same grid through
`flwr run .` on a local simulation instead. Both write the same run directory.

Every run's directory lives under ``--work`` (checkpoints included; not committed). A run that
already finished — there, or as a committed copy in ``docs/results/<experiment>/runs`` — is skipped; one that was interrupted resumes from its last checkpoint (the app's
``resume-from``), so a grid can be completed over several sittings. Then it writes
``docs/results/<experiment>/``: ``summary.json`` (per method: final and best central accuracy,
rounds and cumulative per-participant FLOPs to the target, per-participant FLOPs and bytes per
round, wall time), ``results.md`` (a table, the exact commands) and ``accuracy.png``; each run's
``metrics.jsonl`` is copied to ``runs/``.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import os
import shutil
import signal
import statistics
import sys
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Before torch loads OpenMP: threads that sleep while they wait. With the default (spin), a C1 run
# sharing the 2 cores with anything else went from 3 s to 30-45 s per round; alone it is as fast.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from benchmarks.experiments import EXPERIMENTS, METHODS, Experiment, Variant  # noqa: E402
from msfusion.loopback import REPO, read_jsonl  # noqa: E402
from benchmarks.launch import flwr_run, toml_value  # noqa: E402
from msfusion_core.method.planner import FullPlanner, make_planner  # noqa: E402


def run_name(method: str, seed: int, variant: Variant) -> str:
    return f"{method}-s{seed}" + (f"-{variant.name}" if variant.name else "")


def run_config(exp: Experiment, method: str, seed: int, variant: Variant) -> dict[str, Any]:
    return exp.setting | (METHODS | exp.arms)[method] | variant.overrides | {"seed": seed}


ENGINES = ("local", "flwr")


@dataclass(frozen=True)
class RunOutcome:
    status: str
    wall_seconds: float


def run_once(
    engine: str, config: dict[str, Any], *, work: Path, run_name: str, num_supernodes: int, timeout: float, num_threads: int | None = None
) -> RunOutcome:
    """One run into ``work/runs/<run_name>``, by ``engine``; a failure is reported, not raised, so a
    grid goes on with its next run."""
    if engine == "flwr":
        result = flwr_run(config, work=work, run_name=run_name, num_supernodes=num_supernodes, timeout=timeout)
        return RunOutcome(result.status, result.wall_seconds)
    if engine != "local":
        raise ValueError(f"unknown engine {engine!r}; known: {', '.join(ENGINES)}")
    from msfusion.local_grid import run_local

    started = time.perf_counter()
    try:
        run_local(config | {"output-dir": str((work / "runs").resolve()), "run-name": run_name}, num_supernodes, num_threads)
        status = "completed"
    except Exception as exc:  # noqa: BLE001 - one failed run must not end the grid; its reason is printed
        status = f"failed: {type(exc).__name__}: {exc}"
    return RunOutcome(status, time.perf_counter() - started)


def finished(rows: list[dict], rounds: int) -> bool:
    return bool(rows) and rows[-1].get("round") == rounds


def check_selection(exp: Experiment, methods: set[str] | None, seeds: set[int] | None, variants: set[str] | None) -> None:
    """Refuse a selection outside the experiment's grid, which would otherwise run nothing and still
    report results (a seed not in ``exp.seeds`` is one to add there, not a run to make on the side)."""
    grid = exp.grid()
    for what, asked, known in (
        ("method", methods, {m for m, _, _ in grid}),
        ("seed", seeds, {s for _, s, _ in grid}),
        ("variant", variants, {v.name for _, _, v in grid}),
    ):
        if asked and asked - known:
            raise ValueError(f"{exp.name} has no {what} {', '.join(map(str, sorted(asked - known)))}; "
                             f"its {what}s are {', '.join(map(str, sorted(known)))}")


def run_grid(
    exp: Experiment,
    work: Path,
    methods: set[str] | None,
    seeds: set[int] | None,
    timeout: float,
    results: Path | None = None,
    variants: set[str] | None = None,
    engine: str = "local",
) -> None:
    """Run what is not finished yet, either under ``work`` or as a copy in ``results/<exp>/runs``
    (committed results count: a fresh machine does not redo them)."""
    for method, seed, variant in exp.grid():
        picked = ((methods, method), (seeds, seed), (variants, variant.name))
        if any(subset is not None and value not in subset for subset, value in picked):
            continue
        name = run_name(method, seed, variant)
        config = run_config(exp, method, seed, variant)
        run_dir = work / "runs" / name
        metrics = run_dir / "metrics.jsonl"
        rows = read_jsonl(metrics) if metrics.exists() else []
        copy = results / exp.name / "runs" / f"{name}.jsonl" if results else None
        if finished(rows, config["num-server-rounds"]) or (copy and copy.exists() and finished(read_jsonl(copy), config["num-server-rounds"])):
            print(f"[{exp.name}] {name}: finished, skipped", flush=True)
            continue
        if list((run_dir / "checkpoints").glob("round-*.json")):
            config["resume-from"] = str(run_dir.resolve())
            print(f"[{exp.name}] {name}: resuming", flush=True)
        elif run_dir.exists():
            shutil.rmtree(run_dir)  # died before its first checkpoint: start it again
        print(f"[{exp.name}] {name}: running ({variant.num_supernodes} nodes)", flush=True)
        result = run_once(engine, config, work=work, run_name=name, num_supernodes=variant.num_supernodes, timeout=timeout)
        print(f"[{exp.name}] {name}: {result.status} in {result.wall_seconds:.0f}s", flush=True)


# -- summarising ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Metric:
    """How an experiment's headline number reads. Every comparison goes through ``score``, which
    is higher-better: accuracy itself, or minus log-perplexity (the mean loss per token), so that
    gaps closed and headroom of a language model are taken in log-perplexity. A change of score Δ
    is reported as Δ for accuracy (points) and as the relative perplexity improvement 1 − e^(−Δ)."""

    name: str
    key: str  # the column of metrics.jsonl
    higher_is_better: bool
    value_format: str
    extra: tuple[tuple[str, str], ...] = ()  # (summary key, metrics column) read at the last evaluation

    def score(self, value: float) -> float:
        return value if self.higher_is_better else -math.log(value)

    def change(self, score_delta: float) -> float:
        return score_delta if self.higher_is_better else 1.0 - math.exp(-score_delta)

    def headroom_text(self, value: float, tail: float) -> str:
        if self.higher_is_better:
            return f"{value * 100:+.2f} ({tail * 100:+.2f}) points"
        return f"{value:+.3f} ({tail:+.3f}) in log-perplexity"

    def target_text(self, target: float) -> str:
        return f"Target accuracy: {target:.0%}." if self.higher_is_better else f"Target test perplexity: {target:g}."


METRICS = {
    "accuracy": Metric("accuracy", "central-accuracy", True, "{:.4f}"),
    "perplexity": Metric("perplexity", "central-perplexity", False, "{:.1f}", (("final_valid_perplexity", "central-valid-perplexity"),)),
}


def reaches(metric: str, value: float, target: float) -> bool:
    return METRICS[metric].score(value) >= METRICS[metric].score(target)


def summarise_run(rows: list[dict], target: float, metric: str = "accuracy") -> dict[str, Any]:
    rounds = [r["round"] for r in rows]
    if rounds != sorted(set(rounds)):
        # Seen once: a SuperExec that started one run twice, both writing the same metrics file.
        raise ValueError(f"metrics rounds must be unique and increasing, got {rounds}")
    kind = METRICS[metric]
    trained = [r for r in rows if r["round"] >= 1]
    evaluated = [r for r in trained if kind.key in r]  # with eval-every > 1, not every round
    values = [float(r[kind.key]) for r in evaluated]
    best = max(values, key=kind.score)
    flops = [float(r.get("flops-per-participant") or 0.0) for r in trained]
    cumulative_at = dict(zip((r["round"] for r in trained), itertools.accumulate(flops)))
    reached = next((i for i, v in enumerate(values) if reaches(metric, v, target)), None)
    down = [float(r.get("bytes-down-per-participant") or 0.0) for r in trained]
    up = [float(r.get("bytes-up-per-participant") or 0.0) for r in trained]
    extra = {name: float(evaluated[-1][column]) for name, column in kind.extra}
    # The gain over the last 20 % of rounds: the metric at the last round against the last
    # evaluated round at or before 80 % of the run (0 gain = a flat curve); for perplexity the
    # relative improvement, (before − final) / before. Two single evaluations differ by a point or
    # two on a non-IID run, so the trend (least squares over every evaluation of the last fifth,
    # times its length) is the steadier reading of the same quantity.
    last = evaluated[-1]["round"]
    before = [v for r, v in zip(evaluated, values) if r["round"] <= 0.8 * last] or values[:1]
    gain = kind.change(kind.score(values[-1]) - kind.score(before[-1]))
    fifth = [(r["round"], kind.score(v)) for r, v in zip(evaluated, values) if r["round"] >= 0.8 * last]
    slope = statistics.linear_regression(*zip(*fifth)).slope if len(fifth) > 1 else 0.0
    trend = kind.change(slope * 0.2 * last)
    never = trained[-1].get("never-trained-fraction")
    # Round-to-round swings of a non-IID run are a point or two: the mean over the last 10 % of
    # rounds' evaluations is the steadier reading of where a run ended.
    tail = [v for r, v in zip(evaluated, values) if r["round"] > 0.9 * last] or values[-1:]
    return {
        f"final_{metric}": values[-1],
        f"tail_{metric}": statistics.mean(tail),
        f"best_{metric}": best,
        **extra,
        "rounds": last,
        "last_fifth_gain": gain,
        "last_fifth_trend": trend,
        "never_trained_fraction": float(never) if isinstance(never, (int, float)) else None,
        "train_count_cv": float(trained[-1]["train-count-cv"]) if isinstance(trained[-1].get("train-count-cv"), (int, float)) else None,
        "rounds_to_target": evaluated[reached]["round"] if reached is not None else None,
        "flops_to_target": cumulative_at[evaluated[reached]["round"]] if reached is not None else None,
        "flops_per_participant_round": statistics.mean(flops),
        "bytes_per_participant_round": statistics.mean(d + u for d, u in zip(down, up)),
        "wall_seconds": sum(float(r.get("round-seconds") or 0.0) + float(r.get("eval-seconds") or 0.0) for r in rows),
    } | server_profile(trained)


def server_profile(trained: list[dict]) -> dict[str, Any]:
    """The ServerApp's seconds and memory over the run, split into halves: flat means the second
    half costs what the first did. Empty for runs recorded before these columns existed."""
    rows = [r for r in trained if isinstance(r.get("server-seconds"), (int, float)) and isinstance(r.get("server-rss-mb"), (int, float))]
    if len(rows) < 2:
        return {}
    half = len(rows) // 2
    first, second = rows[:half], rows[half:]
    return {
        "server_seconds_median_first_half": statistics.median(r["server-seconds"] for r in first),
        "server_seconds_median_second_half": statistics.median(r["server-seconds"] for r in second),
        "server_rss_mb_first": rows[0]["server-rss-mb"],
        "server_rss_mb_last": rows[-1]["server-rss-mb"],
        "server_peak_rss_mb_after_first_half": first[-1]["server-peak-rss-mb"],
        "server_peak_rss_mb_last": rows[-1]["server-peak-rss-mb"],
    }


def _mean_or_none(values: list[Any]) -> Any:
    present = [v for v in values if v is not None]
    if len(present) < len(values):
        return None  # a seed never reached the target (or a dense method: no never-trained fraction)
    return statistics.mean(present)


def _sd(values: list[float]) -> float | None:
    return statistics.stdev(values) if len(values) > 1 else None


def gap_closed(method: float, small: float, full: float) -> float:
    """(method − small) / (full − small): 0 = no better than the small model, 1 = as good as full width."""
    return (method - small) / (full - small)


def _gaps(exp: Experiment, per_seed_final: dict[str, dict[int, float]], suffix: str = "") -> dict[str, Any]:
    """Headroom (full − small) per capacity, and each arm's gap closed, mean ± sd over the seeds
    that its small control and ``full`` also have (paired by seed). ``suffix`` names the reading
    (``""``: the final evaluation; ``"_tail"``: the last 10 % of rounds)."""
    full = per_seed_final.get("full", {})
    headroom, gaps = {}, {}
    for small_arm in sorted(set(exp.small_of.values())):
        small = per_seed_final.get(small_arm, {})
        if small and full:
            key = small_arm.removeprefix("small-") if small_arm != "small" else f"r{exp.setting['split-ratio-tiers']}"
            headroom[key] = statistics.mean(full.values()) - statistics.mean(small.values())
    for arm, small_arm in exp.small_of.items():
        small = per_seed_final.get(small_arm, {})
        mine = per_seed_final.get(arm, {})
        paired = [gap_closed(v, small[s], full[s]) for s, v in sorted(mine.items()) if s in small and s in full]
        if paired:
            gaps[arm] = {f"gap_closed{suffix}": statistics.mean(paired), f"gap_closed{suffix}_sd": _sd(paired)}
            gaps[arm] |= {"gap_closed_seeds": len(paired)}
    return {"headroom": headroom, "gaps": gaps}


def summarise(exp: Experiment, runs: Path) -> dict[str, Any]:
    """Summary over the finished runs whose metrics are ``runs/<run name>.jsonl``: per method the
    mean over its seeds (``final_<metric>_sd``: their sd); with ``exp.small_of``, the headroom and
    every arm's gap closed."""
    methods: dict[str, Any] = {}
    finals: dict[str, dict[int, float]] = {}
    tails: dict[str, dict[int, float]] = {}
    for method in exp.methods:
        for variant in exp.variants or (Variant("", {}, exp.num_supernodes),):
            per_seed = {}
            for seed in exp.seeds_of(method):
                metrics = runs / f"{run_name(method, seed, variant)}.jsonl"
                rows = read_jsonl(metrics) if metrics.exists() else []
                config = run_config(exp, method, seed, variant)
                if finished(rows, config["num-server-rounds"]):
                    per_seed[seed] = summarise_run(rows, exp.target, exp.metric)
                    if isinstance(make_planner(config.get("planner", "msfusion")), FullPlanner):  # full, small: every coordinate is in every model
                        per_seed[seed] |= {"never_trained_fraction": None, "train_count_cv": None}
            if not per_seed:
                continue
            key = method + (f"/{variant.name}" if variant.name else "")
            runs_ = list(per_seed.values())
            final = f"final_{exp.metric}"
            methods[key] = {k: _mean_or_none([s[k] for s in runs_]) for k in runs_[0]} | {
                f"{final}_sd": _sd([s[final] for s in runs_]),
                "seeds": len(runs_),
            }
            methods[key][f"tail_{exp.metric}_sd"] = _sd([s[f"tail_{exp.metric}"] for s in runs_])
            finals[key] = {seed: s[final] for seed, s in per_seed.items()}
            tails[key] = {seed: s[f"tail_{exp.metric}"] for seed, s in per_seed.items()}
    summary = {"experiment": exp.name, "setting": exp.setting, "target": exp.target}
    if exp.small_of:
        # On the metric's score: for perplexity (log ppl_small − log ppl_m) / (log ppl_small − log ppl_full).
        kind = METRICS[exp.metric]
        finals, tails = ({m: {s: kind.score(v) for s, v in per.items()} for m, per in d.items()} for d in (finals, tails))
        gaps, tail_gaps = _gaps(exp, finals), _gaps(exp, tails, "_tail")
        summary["headroom"] = gaps["headroom"]
        summary["headroom_tail"] = tail_gaps["headroom"]
        for arm, g in gaps["gaps"].items():
            methods[arm] |= g | tail_gaps["gaps"][arm]
        curves = {m: mean_curve(c, exp.metric) for m, c in method_curves(exp, runs).items()}
        for arm, small_arm in exp.small_of.items():
            if arm in curves and small_arm in curves:
                (rounds, mine, _, _), (small_rounds, small, _, _) = curves[arm], curves[small_arm]
                common = sorted(set(rounds) & set(small_rounds))
                at = dict(zip(rounds, mine)), dict(zip(small_rounds, small))
                methods[arm]["crosses_small_round"] = crossing_round(
                    common, [kind.score(at[0][t]) for t in common], [kind.score(at[1][t]) for t in common]
                )
    return summary | {"methods": methods}


def method_curves(exp: Experiment, runs: Path) -> dict[str, list[list[dict]]]:
    """Each method's (and variant's) finished runs under ``runs``, one row list per seed."""
    curves: dict[str, list[list[dict]]] = {}
    for method, seed, variant in exp.grid():
        path = runs / f"{run_name(method, seed, variant)}.jsonl"
        if path.exists():
            rows = read_jsonl(path)
            if finished(rows, run_config(exp, method, seed, variant)["num-server-rounds"]):
                curves.setdefault(method + (f"/{variant.name}" if variant.name else ""), []).append(rows)
    return curves


def write_results(exp: Experiment, work: Path, out_root: Path, command: str) -> Path:
    out = out_root / exp.name
    (out / "runs").mkdir(parents=True, exist_ok=True)
    for method, seed, variant in exp.grid():  # finished runs only: a partial curve is not a result
        name = run_name(method, seed, variant)
        metrics = work / "runs" / name / "metrics.jsonl"
        if metrics.exists() and finished(read_jsonl(metrics), run_config(exp, method, seed, variant)["num-server-rounds"]):
            shutil.copyfile(metrics, out / "runs" / f"{name}.jsonl")
    summary = summarise(exp, out / "runs")
    if (out / "tokens.json").exists():  # LM2: what `python -m benchmarks.lm_tokens` measured
        tokens = json.loads((out / "tokens.json").read_text())
        summary = {
            "unigram_perplexity": tokens["tokenizers"][exp.setting["tokenizer"]]["unigram_test_perplexity"],
            "blocks_param_fraction": tokens["model"]["blocks_param_fraction"],
        } | summary
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    _plot(method_curves(exp, out / "runs"), out / "accuracy.png", exp.target, exp.metric, title=f"{exp.name}: mean over seeds, ±1 sd")
    kind = METRICS[exp.metric]
    lines = [
        f"# {exp.name}",
        "",
        exp.description,
        "",
        kind.target_text(exp.target) + " Setting (run config shared by all methods):",
        "",
        "```toml",
        *(f"{k} = {toml_value(v)}" for k, v in exp.setting.items()),
        "```",
        "",
        f"Reproduce: `{command}`",
        "",
        *(
            [
                "Headroom, full − small (final evaluation; mean of the last 10 % of rounds): "
                + ", ".join(f"{k}: {kind.headroom_text(v, summary['headroom_tail'].get(k, float('nan')))}" for k, v in summary["headroom"].items())
                + ".",
                "",
            ]
            if summary.get("headroom")
            else []
        ),
        f"| method | final {exp.metric} (mean ± sd) | gap closed | last-10 % {exp.metric} | gap closed (last 10 %) | crosses small at round "
        f"| best {exp.metric} | last-fifth gain | last-fifth trend | never trained | train-count CV | rounds to target | FLOPs/participant/round | bytes/participant/round | wall s | seeds |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    value = kind.value_format
    for name, m in summary["methods"].items():
        final, sd = m[f"final_{exp.metric}"], m[f"final_{exp.metric}_sd"]
        tail, tail_sd = m[f"tail_{exp.metric}"], m[f"tail_{exp.metric}_sd"]
        crosses = "" if "crosses_small_round" not in m else _fmt(m["crosses_small_round"], "{:.0f}")
        lines.append(
            f"| {name} | {_pm(value, final, sd)} | {_gap(m, '')} | {_pm(value, tail, tail_sd)} | {_gap(m, '_tail')} | {crosses} | {value.format(m[f'best_{exp.metric}'])} "
            f"| {m['last_fifth_gain']:+.4f} | {m['last_fifth_trend']:+.4f} | {_dash(m['never_trained_fraction'], '{:.4f}')} | {_dash(m['train_count_cv'], '{:.3f}')} "
            f"| {_fmt(m['rounds_to_target'], '{:.0f}')} | {m['flops_per_participant_round']:.3g} "
            f"| {m['bytes_per_participant_round']:.3g} | {m['wall_seconds']:.0f} | {m['seeds']} |"
        )
    profiled = {name: m for name, m in summary["methods"].items() if "server_rss_mb_last" in m}
    if profiled:
        lines += [
            "",
            "The ServerApp's cost (medians of its seconds per round, plan + slice + aggregate + central evaluation; "
            "resident memory at the first and last round; peak memory after the first half and at the end):",
            "",
            "| method | server s/round, 1st half | 2nd half | RSS MiB, first | last | peak, mid-run | peak, end |",
            "|---|---|---|---|---|---|---|",
            *(
                f"| {name} | {m['server_seconds_median_first_half']:.3f} | {m['server_seconds_median_second_half']:.3f} | {m['server_rss_mb_first']:.0f} "
                f"| {m['server_rss_mb_last']:.0f} | {m['server_peak_rss_mb_after_first_half']:.0f} | {m['server_peak_rss_mb_last']:.0f} |"
                for name, m in profiled.items()
            ),
        ]
    lines += ["", f"![{exp.metric} vs round and vs cumulative per-participant FLOPs](accuracy.png)", ""]
    (out / "results.md").write_text("\n".join(lines))
    return out


def _pm(spec: str, mean: float, sd: float | None) -> str:
    return spec.format(mean) + ("" if sd is None else " ± " + spec.format(sd))


def _gap(m: dict[str, Any], suffix: str) -> str:
    key = f"gap_closed{suffix}"
    return "" if key not in m else _pm("{:+.2f}", m[key], m[f"{key}_sd"])


def _dash(value: Any, spec: str) -> str:
    return "–" if value is None else spec.format(value)  # not applicable (a dense method)


def _fmt(value: Any, spec: str) -> str:
    return "never" if value is None or (isinstance(value, float) and math.isnan(value)) else spec.format(value)


def mean_curve(runs: list[list[dict]], metric: str = "accuracy") -> tuple[list[int], list[float], list[float], list[float]]:
    """(rounds, mean, sd, mean cumulative per-participant FLOPs) over seeds, at the rounds every seed evaluated."""
    key = METRICS[metric].key
    per_run = []
    for rows in runs:
        flops = itertools.accumulate(float(r.get("flops-per-participant") or 0.0) for r in rows)
        per_run.append({r["round"]: (float(r[key]), f) for r, f in zip(rows, flops) if key in r})
    rounds = sorted(set.intersection(*(set(c) for c in per_run))) if per_run else []
    mean = [statistics.mean(c[t][0] for c in per_run) for t in rounds]
    sd = [statistics.pstdev([c[t][0] for c in per_run]) for t in rounds]
    flops = [statistics.mean(c[t][1] for c in per_run) for t in rounds]
    return rounds, mean, sd, flops


def crossing_round(rounds: list[int], method: list[float], small: list[float]) -> int | None:
    """The first round from which ``method`` stays at or above ``small`` to the end (None: it ends below)."""
    above = [m >= s for m, s in zip(method, small)]
    if not above or not above[-1]:
        return None
    first = len(above) - 1
    while first > 0 and above[first - 1] and rounds[first - 1] >= 1:
        first -= 1
    return rounds[first]


def _plot(curves: dict[str, list[list[dict]]], path: Path, target: float, metric: str = "accuracy", title: str = "") -> None:
    """Per method: the mean over seeds, with a ±1 sd band where there are several."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for name, runs in curves.items():
        rounds, mean, sd, flops = mean_curve(runs, metric)
        label = f"{name} ({len(runs)} seeds)" if len(runs) > 1 else name
        (line,) = ax1.plot(rounds, mean, label=label)
        spent = [i for i, f in enumerate(flops) if f > 0]  # round 0 has spent nothing: off a log axis
        ax2.plot([flops[i] for i in spent], [mean[i] for i in spent], color=line.get_color(), label=label)
        if len(runs) > 1:
            low, high = [m - d for m, d in zip(mean, sd)], [m + d for m, d in zip(mean, sd)]
            ax1.fill_between(rounds, low, high, color=line.get_color(), alpha=0.2)
            ax2.fill_between([flops[i] for i in spent], [low[i] for i in spent], [high[i] for i in spent], color=line.get_color(), alpha=0.2)
    for ax in (ax1, ax2):
        ax.axhline(target, color="grey", lw=0.8, ls="--")
        ax.grid(alpha=0.3)
        ax.set_ylabel(f"central {metric}")
        if not METRICS[metric].higher_is_better:
            ax.set_yscale("log")  # perplexity
    ax1.set_xlabel("round")
    ax1.xaxis.get_major_locator().set_params(integer=True)
    ax2.set_xlabel("cumulative FLOPs per participant")
    ax2.set_xscale("log")
    ax1.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """``["num-server-rounds=2", "device='cpu'"]`` → settings (values are TOML, as for `flwr run`)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--set {pair!r}: expected KEY=VALUE")
        try:
            out[key.strip()] = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            out[key.strip()] = value  # a bare word: a string
    return out


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    # SystemExit unwinds through `flower_cleanup`, which stops the run's SuperLink, simulation and
    # Ray workers by PID; the default SIGTERM action would leave them orphaned and running.
    sys.exit(128 + signum)


def main() -> None:
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("experiment", choices=sorted(EXPERIMENTS))
    parser.add_argument("--methods", default="", help="comma-separated subset of the experiment's methods")
    parser.add_argument("--seeds", default="", help="comma-separated subset of the experiment's seeds")
    parser.add_argument("--variants", default="", help="comma-separated subset of the experiment's variants (E2: P4,P8,P16)")
    parser.add_argument("--work", default=str(REPO / "benchmark-runs"))
    parser.add_argument("--results", default="", help="where summaries go (default docs/results; with --set, the work dir)")
    parser.add_argument("--timeout", type=float, default=4 * 3600.0, help="seconds allowed for one run")
    parser.add_argument("--engine", choices=ENGINES, help="local: in-process runner; flwr: `flwr run .` (default: the experiment's, mostly local)")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE",
        help="override a setting of every run (TOML value), e.g. for a smoke test at tiny scale: --set num-server-rounds=2",
    )
    parser.add_argument("--summarise-only", action="store_true")
    args = parser.parse_args()
    exp = EXPERIMENTS[args.experiment]
    if args.set:
        exp = dataclasses.replace(exp, setting=exp.setting | parse_overrides(args.set))
    # A run with overridden settings (a smoke test) is not the experiment: it never lands in docs.
    results = Path(args.results or (Path(args.work) / "results" if args.set else REPO / "docs" / "results"))
    work = Path(args.work) / exp.name
    methods = set(args.methods.split(",")) if args.methods else None
    seeds = {int(s) for s in args.seeds.split(",")} if args.seeds else None
    variants = set(args.variants.split(",")) if args.variants else None
    try:
        check_selection(exp, methods, seeds, variants)
    except ValueError as e:
        parser.error(str(e))
    if not args.summarise_only:
        run_grid(exp, work, methods, seeds, args.timeout, results, variants, args.engine or exp.engine)
    out = write_results(exp, work, results, f"python -m benchmarks.run {exp.name}")
    print(f"results: {out}")


if __name__ == "__main__":
    main()
