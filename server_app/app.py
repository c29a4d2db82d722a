"""The MSfusion ServerApp: build the strategy from the run config, evaluate the global model
centrally every round, and write the run directory (msfusion_app.runlog)."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from datetime import UTC, datetime
from logging import ERROR, INFO, WARNING
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NoReturn

import torch
from flwr.app import ArrayRecord, Context, MetricRecord
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import Result

from msfusion_app.settings import Settings
from msfusion_core.data import TensorData, load_holdout, load_partition, load_test
from msfusion_app.runlog import RunLog, latest_checkpoint, mark_failed
from msfusion_core.local.training import calibrate_batchnorm, evaluate
from msfusion_core.method.planner import Planner
from msfusion_core.method.split_map import block_stacks
from msfusion_core.method.submodel import build_submodel
from server_app.strategy import MSfusion, NoValidReplies

app = ServerApp()


class RunFailed(RuntimeError):
    """A run that cannot go on for a reason its message states in full (a bad setting, nodes that
    never reply validly): it ends with one line saying so, not a traceback."""


class _OneLineFailure(logging.Filter):
    """Flower logs a ServerApp's exception with its traceback, then an exit-code banner. For a
    ``RunFailed`` our own ``MSfusion run FAILED`` line has said all of it: drop both."""

    def __init__(self) -> None:
        super().__init__()
        self.failed = False

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], RunFailed):
            self.failed = True
            return False
        return not (self.failed and str(record.msg).startswith("Exit Code:"))


_ONE_LINE_FAILURE = _OneLineFailure()


@app.main()
def main(grid: Grid, context: Context) -> None:
    logging.getLogger("flwr").addFilter(_ONE_LINE_FAILURE)  # a no-op if added before
    try:
        settings = Settings.from_mapping(context.run_config)
    except ValueError as exc:
        fail(exc, failed_run_dir(context.run_config))
    run(grid, settings)


def failed_run_dir(run_config: Mapping[str, Any]) -> Path | None:
    """Where a run whose settings are refused says so: ``output-dir/run-name`` when both are usable."""
    out, name = run_config.get("output-dir", Settings.output_dir), run_config.get("run-name")
    if not (isinstance(out, str) and isinstance(name, str) and name):
        return None
    return Path(out) / name


def fail(exc: BaseException, run_dir: Path | None, after_round: int | None = None) -> NoReturn:
    """End the run with one line naming why, and a ``FAILED`` file in the run directory, if any.
    A failure the message explains (a bad setting, nodes that never reply validly) ends as a
    ``RunFailed``, without a traceback; any other exception is raised again as it is."""
    reason = f"{type(exc).__name__}: {exc}"
    if run_dir is not None:
        with contextlib.suppress(OSError):
            mark_failed(run_dir, reason)
    when = "before round 1" if after_round is None else f"after round {after_round}"
    where = f" (run directory {run_dir.resolve()})" if run_dir is not None else ""
    log(ERROR, "MSfusion run FAILED %s: %s%s", when, reason, where)
    if isinstance(exc, (ValueError, NoValidReplies)):
        raise RunFailed(reason) from exc
    raise exc


def make_strategy(settings: Settings, data: ServerData | None = None, planner: Planner | None = None) -> MSfusion:
    """The run's strategy; ``planner`` replaces the settings' (one no run-config key spells, such as
    a schedule with a patience of its own, for an experiment or a test)."""
    family = settings.family()
    data = data or ServerData(settings)
    return MSfusion(
        family.build,
        family.split_map,
        planner or settings.make_planner(),
        local_keys=family.local_keys,
        post_build=family.post_build,
        fraction_train=settings.fraction_train,
        fraction_evaluate=settings.fraction_evaluate,
        min_reply_fraction=settings.min_reply_fraction,
        default_capacity=settings.capacity_tiers()[0],
        seed=settings.seed,
        lr_factor=settings.lr_factor if settings.lr_milestones() else None,
        validation_fn=data.validation_loss if data.validation is not None else None,
        prepare_model=data.calibrate if data.calibration is not None else None,
    )


CALIBRATION_BATCHES = 8  # of 128 rows: BatchNorm statistics of the evaluated model


class ServerData:
    """What the server holds: the test split, BatchNorm calibration rows and its own validation rows."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.preprocess = settings.preprocess()
        path = settings.data_path or None
        limit, seq = settings.central_eval_examples or None, settings.seq_len
        tok = settings.tokenizer
        self.test = load_test(settings.dataset, path, limit=limit, seq_len=seq, tokenizer=tok)
        # A language model reports validation and test perplexity (exp of the per-token loss).
        self.valid = load_test(settings.dataset, path, limit=limit, split="validation", seq_len=seq, tokenizer=tok) if settings.dataset == "wikitext2" else None
        # The server calibrates BatchNorm on training data it is allowed to see: a fixed IID sample
        # (none is loaded for a model without BatchNorm).
        keep = CALIBRATION_BATCHES * 128 if settings.family().has_batchnorm else 0
        holdout = settings.validation_examples
        calib = load_partition(settings.dataset, path, "iid", 1, 0, seed=settings.seed, seq_len=seq, holdout=holdout, tokenizer=tok) if keep else None
        self.calibration = TensorData(calib.x[:keep], calib.y[:keep]) if calib is not None else None
        # The server's own validation split: train rows no node trains on (WikiText-2: its validation
        # split), never the test split. Its loss drives the grow overlap schedule.
        self.validation = load_holdout(settings.dataset, path, holdout, settings.seed, seq_len=seq, tokenizer=tok) if holdout else None

    def evaluated_round(self, server_round: int) -> bool:
        return server_round % self.settings.eval_every == 0 or server_round == self.settings.num_server_rounds

    def calibrate(self, server_round: int | None, model: torch.nn.Module) -> None:
        """BatchNorm statistics for the evaluated model, from the server's calibration rows, at the
        rounds it is tested (a calibration pass costs about a third of a C1 round)."""
        if server_round is not None and not self.evaluated_round(server_round):
            return
        calibrate_batchnorm(model.to(self.settings.torch_device()), self.calibration, self.preprocess, num_batches=CALIBRATION_BATCHES)
        model.to("cpu")

    def validation_loss(self, server_round: int, model: torch.nn.Module) -> float | None:
        """The evaluated model's loss on the validation rows, at evaluated rounds (None otherwise)."""
        if not self.evaluated_round(server_round):
            return None
        loss, _ = evaluate(model.to(self.settings.torch_device()), self.validation, self.preprocess)
        model.to("cpu")
        return loss


class CentralEvaluation:
    """``evaluate_fn`` for ``Strategy.start``: test the arrays Flower hands over (the strategy's
    evaluated model, the run's result), log the round's row and checkpoint it. The strategy prints
    the round's progress line with the metrics returned here."""

    def __init__(self, strategy: MSfusion, settings: Settings, runlog: RunLog, data: ServerData) -> None:
        self.strategy, self.settings, self.runlog, self.data = strategy, settings, runlog, data
        self.family = settings.family()
        self.last = time.perf_counter()

    def model_of(self, arrays: ArrayRecord) -> torch.nn.Module:
        stacks = block_stacks(self.family.split_map)
        return build_submodel(self.family.build, arrays.to_torch_state_dict(), self.family.post_build, stacks).to(self.settings.torch_device())

    def __call__(self, server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        started = time.perf_counter()
        round_seconds = started - self.last
        if server_round == 0 and self.settings.resume_from:  # the checkpoint resumed from: logged already
            self.last = time.perf_counter()
            return None
        server_round += self.strategy.round_offset
        row: dict = {"round": server_round}
        evaluated = self.data.evaluated_round(server_round)
        if evaluated:
            model = self.model_of(arrays)
            loss, accuracy = evaluate(model, self.data.test, self.data.preprocess)
            row |= {"central-accuracy": accuracy, "central-loss": loss}
            if self.data.valid is not None:
                valid_loss, _ = evaluate(model, self.data.valid, self.data.preprocess)
                row |= {"central-perplexity": math.exp(loss), "central-valid-perplexity": math.exp(valid_loss)}
        record = self.strategy.rounds.get(server_round)
        row |= record.metrics if record is not None else {}
        row |= {"round-seconds": round_seconds if server_round else 0.0, "eval-seconds": time.perf_counter() - started}
        # The ServerApp's own cost: its seconds (plan + slice, aggregate, central evaluation) and
        # memory, which should stay flat as rounds go by and nodes join.
        row["server-seconds"] = row["eval-seconds"] + sum(record.seconds.values()) if record is not None else row["eval-seconds"]
        row |= server_memory_mb()
        if record is not None:
            row |= {"rejected-reasons": sorted({why for _, why in record.rejected}), "failed-reasons": sorted({why for _, why in record.failed})}
        self.runlog.append(row)
        self.runlog.save_checkpoint(server_round, self.strategy.checkpoint_tensors(), self.strategy.state_dict())
        self.last = time.perf_counter()
        return MetricRecord({"accuracy": row["central-accuracy"], "loss": row["central-loss"]}) if evaluated else None


# Settings that may differ between a run and its resumption.
RESUMABLE_CHANGES = {"resume-from", "num-server-rounds", "output-dir", "run-name", "round-timeout"}


def resume(settings: Settings, strategy: MSfusion) -> RunLog:
    """Reopen ``settings.resume_from`` at its last complete round and restore the strategy.

    Every setting but those in RESUMABLE_CHANGES must equal the run's: the ClientApps train with
    the run config they are given, so a silently different config would not continue the run. A
    setting the run's config.json predates (added to the app since) is accepted at its default only,
    and named in a warning: the older code had no such knob, so its behaviour may differ."""
    run_dir = Path(settings.resume_from)
    if not (run_dir / "config.json").is_file():
        raise ValueError(f"resume-from {str(run_dir)!r} is not a run directory (no config.json)")
    saved = json.loads((run_dir / "config.json").read_text())
    now = settings.to_mapping()
    default = Settings().to_mapping()
    added = sorted(k for k in now if k not in saved and now[k] == default[k])
    if added:
        log(WARNING, "Resuming %s, recorded before these settings existed: %s", run_dir,
            ", ".join(f"{k} = {now[k]!r} (default)" for k in added))
    changed = sorted(k for k in now if k not in RESUMABLE_CHANGES and k not in added and saved.get(k) != now[k])
    if changed:
        raise ValueError(
            "resume-from: settings differ from the run's config.json: "
            + ", ".join(f"{k} (was {saved.get(k)!r}, now {now[k]!r})" for k in changed)
            + "; pass the same --run-config as the original run plus resume-from"
        )
    checkpoint = latest_checkpoint(run_dir)
    if checkpoint is None:
        raise ValueError(f"resume-from {str(run_dir)!r} has no complete checkpoint")
    strategy.restore(checkpoint.server_round, checkpoint.state, checkpoint.extra)
    log(INFO, "Resuming %s after round %d", run_dir, checkpoint.server_round)
    return RunLog.resume(run_dir, checkpoint.server_round)


def run(grid: Grid, settings: Settings, strategy: MSfusion | None = None) -> Result:
    """The whole server side of a run (also what tests call with a run config of their own).

    Raises ``RunFailed`` when it cannot go on for a stated reason (a setting refused before round 1,
    ``max-failed-rounds`` rounds without a valid reply), having said why in one line and, where a
    run directory exists, in its ``FAILED`` file."""
    name = settings.run_name or f"{settings.planner}-{settings.dataset}-s{settings.seed}-{datetime.now(UTC):%Y%m%d-%H%M%S}"
    try:
        data = ServerData(settings)
        strategy = strategy or make_strategy(settings, data)
        runlog = resume(settings, strategy) if settings.resume_from else RunLog(Path(settings.output_dir) / name, settings.to_mapping())
    except ValueError as exc:
        fail(exc, Path(settings.resume_from) if settings.resume_from else failed_run_dir(settings.to_mapping()))
    log(INFO, "MSfusion run directory: %s", runlog.dir.resolve())
    try:
        result = strategy.start(
            grid,
            None,
            num_rounds=max(settings.num_server_rounds - strategy.round_offset, 0),
            timeout=settings.round_timeout,
            evaluate_fn=CentralEvaluation(strategy, settings, runlog, data),
        )
    except BaseException as exc:
        # The reason goes where a user looks: the run directory, and the last log line (Flower
        # records it as the run's failure details too).
        fail(exc, runlog.dir, after_round=len(runlog.rows) - 1)
    finally:
        runlog.close()
    runlog.plot()
    if len(result.arrays):
        runlog.save_model(result.arrays.to_torch_state_dict())
    log(INFO, "MSfusion run finished: %s (the model: model.safetensors)", runlog.dir.resolve())
    return result


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
