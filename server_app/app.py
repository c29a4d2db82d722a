"""The MSfusion ServerApp: build the strategy from the run config, own the loop's edges (resume,
central evaluation, the run directory and its checkpoints) and end every failure in one line."""

from __future__ import annotations

import contextlib
import json
import logging
import time
from datetime import UTC, datetime
from logging import ERROR, INFO, WARNING
from pathlib import Path
from typing import NoReturn

from flwr.app import ArrayRecord, Context, MetricRecord
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import Result

from msfusion_app.runlog import RunLog, latest_checkpoint, mark_failed
from msfusion_app.settings import Settings
from msfusion_core.models import ModelFamily
from server_app.evaluation import CentralEvaluation, ServerData, server_memory_mb
from server_app.replies import NoValidReplies
from server_app.strategy import MSfusion

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
        fail(exc, Settings.run_dir_of(context.run_config))
    run(grid, settings)


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


def make_strategy(settings: Settings, family: ModelFamily | None = None, data: ServerData | None = None) -> MSfusion:
    """The run's strategy (``family`` and ``data``: the run's, where the caller has them)."""
    family = family or settings.family()
    data = data or ServerData(settings, family)
    planner = settings.make_planner()
    return MSfusion(
        family.build,
        family.split_map,
        planner,
        local_keys=family.local_keys,
        post_build=family.post_build,
        fraction_train=settings.fraction_train,
        fraction_evaluate=settings.fraction_evaluate,
        min_reply_fraction=settings.min_reply_fraction,
        default_capacity=settings.capacity_tiers()[0],
        seed=settings.seed,
        contrastive_mu=settings.contrastive_mu if planner.uses_contrastive else None,
        lr_factor=settings.lr_factor if settings.lr_milestones() else None,
        prepare_model=data.calibrate if data.calibration is not None else None,
    )


class RoundEnd:
    """``evaluate_fn`` for ``Strategy.start``, Flower's one callback at the end of every round. The
    ServerApp's round-end steps run here, each its own: central evaluation, the run log's row, and
    the checkpoint (written after the row, so a resumed run finds both)."""

    def __init__(self, strategy: MSfusion, evaluation: CentralEvaluation, runlog: RunLog, resumed: bool) -> None:
        self.strategy, self.evaluation, self.runlog, self.resumed = strategy, evaluation, runlog, resumed
        self.last = time.perf_counter()

    def __call__(self, server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        started = time.perf_counter()
        round_seconds, self.last = started - self.last, started
        if server_round == 0 and self.resumed:  # the checkpoint resumed from: logged already
            return None
        run_round = self.strategy.run_round(server_round)
        evaluated = self.evaluation(run_round, arrays)
        record = self.strategy.rounds.get(run_round) if server_round > 0 else None
        row = {"round": run_round} | evaluated | (record.metrics if record is not None else {})
        row |= {"round-seconds": round_seconds if server_round else 0.0, "eval-seconds": time.perf_counter() - started}
        # The ServerApp's own cost (plan + slice, aggregate, central evaluation) and memory, which
        # should stay flat as rounds go by and nodes join.
        row["server-seconds"] = row["eval-seconds"] + (sum(record.seconds.values()) if record is not None else 0.0)
        row |= server_memory_mb()
        if record is not None:
            row |= {"rejected-reasons": sorted({why for _, why in record.rejected}), "failed-reasons": sorted({why for _, why in record.failed})}
        self.runlog.append(row)
        self.runlog.save_checkpoint(run_round, *self.strategy.checkpoint_state())
        self.last = time.perf_counter()
        if "central-accuracy" not in evaluated:
            return None
        return MetricRecord({"accuracy": evaluated["central-accuracy"], "loss": evaluated["central-loss"]})


def resume(settings: Settings, strategy: MSfusion) -> RunLog:
    """Reopen ``settings.resume_from`` at its last complete round and restore the strategy.

    Every setting but ``Settings.RESUMABLE`` must equal the run's: the ClientApps train with the
    run config they are given, so a silently different config would not continue the run. A
    setting the run's config.json predates is accepted at its default only, and named in a warning."""
    run_dir = Path(settings.resume_from)
    if not (run_dir / "config.json").is_file():
        raise ValueError(f"resume-from {str(run_dir)!r} is not a run directory (no config.json)")
    added, changed = settings.differences(json.loads((run_dir / "config.json").read_text()))
    if added:
        log(WARNING, "Resuming %s, recorded before these settings existed: %s (their defaults)", run_dir, ", ".join(added))
    if changed:
        raise ValueError(f"resume-from: settings differ from the run's config.json: {', '.join(changed)}; "
                         "pass the same --run-config as the original run plus resume-from")
    checkpoint = latest_checkpoint(run_dir)
    if checkpoint is None:
        raise ValueError(f"resume-from {str(run_dir)!r} has no complete checkpoint")
    strategy.core.restore(checkpoint.server_round, checkpoint.state, checkpoint.extra)
    log(INFO, "Resuming %s after round %d", run_dir, checkpoint.server_round)
    return RunLog.resume(run_dir, checkpoint.server_round)


def run(grid: Grid, settings: Settings, strategy: MSfusion | None = None) -> Result:
    """The whole server side of a run; ``strategy``: one the caller made from the same settings
    (``make_strategy``) and keeps a handle on.

    Raises ``RunFailed`` when it cannot go on for a stated reason (a setting refused before round 1,
    ``max-failed-rounds`` rounds without a valid reply), having said why in one line and, where a
    run directory exists, in its ``FAILED`` file."""
    name = settings.run_name or f"{settings.planner}-{settings.dataset}-s{settings.seed}-{datetime.now(UTC):%Y%m%d-%H%M%S}"
    try:
        family = settings.family()
        data = ServerData(settings, family)
        strategy = strategy or make_strategy(settings, family, data)
        runlog = resume(settings, strategy) if settings.resume_from else RunLog(Path(settings.output_dir) / name, settings.to_mapping())
    except ValueError as exc:
        fail(exc, Path(settings.resume_from) if settings.resume_from else Settings.run_dir_of(settings.to_mapping()))
    log(INFO, "MSfusion run directory: %s", runlog.dir.resolve())
    round_end = RoundEnd(strategy, CentralEvaluation(settings, family, data), runlog, resumed=bool(settings.resume_from))
    try:
        remaining = max(settings.num_server_rounds - strategy.core.resumed_after, 0)
        result = strategy.start(grid, None, num_rounds=remaining, timeout=settings.round_timeout, evaluate_fn=round_end)
    except BaseException as exc:
        # The reason goes where a user looks: the run directory, and the last log line (Flower
        # records it as the run's failure details too).
        fail(exc, runlog.dir, after_round=len(runlog.rows) - 1)
    finally:
        runlog.close()
    runlog.plot(f"{settings.planner} on {settings.dataset} ({settings.model})")
    if len(result.arrays):
        runlog.save_model(result.arrays.to_torch_state_dict())
    log(INFO, "MSfusion run finished: %s (the model: model.safetensors)", runlog.dir.resolve())
    return result
