"""A run's directory: config snapshot, per-round metrics (JSON lines + CSV), checkpoints, plots (SPEC §7).

    <run dir>/config.json
    <run dir>/metrics.jsonl       one object per round (round 0: the initial model)
    <run dir>/metrics.csv         the same rows, scalar columns only
    <run dir>/checkpoints/round-0007.safetensors   the evaluated model after round 7 under its own keys, and
                                                   θ (resume/theta/...) with what else a resumed run needs
    <run dir>/checkpoints/round-0007.json          the strategy's state after round 7 (written last:
                                                   its presence marks the checkpoint complete)
    <run dir>/accuracy.png        central accuracy vs round and vs cumulative per-participant FLOPs
    <run dir>/model.safetensors   the run's result: the evaluated global model after the last round
    <run dir>/FAILED              only if the run failed: why (a resumed run removes it)
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from msfusion_core.atomic import atomic_write, atomic_write_text

try:
    import fcntl
except ImportError:  # Windows: no advisory locks, so no guard against a second writer
    fcntl = None

KEEP_CHECKPOINTS = 3
FAILED_MARKER = "FAILED"
logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Checkpoint:
    server_round: int
    state: dict[str, torch.Tensor]
    extra: dict[str, Any]


class RunLog:
    """The writer of one run directory. It holds an exclusive lock on ``<run dir>/.lock`` while it
    lives, so a second ServerApp pointed at the same directory (a SuperLink re-launching a stale
    run beside a new one, say) fails at once instead of interleaving rounds into the same files.
    The OS drops the lock when the process dies, so a crashed run can always be resumed."""

    def __init__(self, run_dir: str | Path, config: Mapping[str, Any]) -> None:
        self.dir = Path(run_dir)
        (self.dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        self._lock = _lock_run_dir(self.dir)
        if (self.dir / "metrics.jsonl").exists():
            raise ValueError(
                f"run directory {str(self.dir)!r} already holds a run: choose another run-name, "
                "or continue it with resume-from"
            )
        atomic_write_text(self.dir / "config.json", json.dumps(dict(config), indent=2, sort_keys=True))
        self.rows: list[dict[str, Any]] = []

    @classmethod
    def resume(cls, run_dir: str | Path, server_round: int) -> RunLog:
        """Reopen a run after round ``server_round``: rows of later (unfinished) rounds are dropped."""
        log = cls.__new__(cls)
        log.dir = Path(run_dir)
        log._lock = _lock_run_dir(log.dir)
        path = log.dir / "metrics.jsonl"
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
        log.rows = [r for r in rows if r.get("round", 0) <= server_round]
        atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in log.rows))
        log._write_csv()
        (log.dir / FAILED_MARKER).unlink(missing_ok=True)
        return log

    def close(self) -> None:
        """Release the writer lock and remove the lock file."""
        if self._lock is not None and not self._lock.closed:
            (self.dir / ".lock").unlink(missing_ok=True)
            self._lock.close()

    def append(self, row: Mapping[str, Any]) -> None:
        row = {k: _plain(v) for k, v in row.items()}
        self.rows.append(row)
        with open(self.dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        self._write_csv()

    def _write_csv(self) -> None:
        columns: list[str] = []
        for r in self.rows:
            columns += [k for k, v in r.items() if not isinstance(v, list) and k not in columns]

        def write(tmp: Path) -> None:
            with open(tmp, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
                writer.writeheader()
                writer.writerows(self.rows)

        atomic_write(self.dir / "metrics.csv", write)

    def save_checkpoint(self, server_round: int, state: Mapping[str, torch.Tensor], extra: Mapping[str, Any]) -> Path:
        """The global model (safetensors) and the strategy state (JSON, written last), atomically."""
        path = self.dir / "checkpoints" / f"round-{server_round:04d}.safetensors"
        _save_tensors(path, state, {"round": str(server_round)})
        atomic_write_text(path.with_suffix(".json"), json.dumps(dict(extra) | {"round": server_round}, indent=1))
        for old in sorted((self.dir / "checkpoints").glob("round-*.safetensors"))[:-KEEP_CHECKPOINTS]:
            old.unlink()
            old.with_suffix(".json").unlink(missing_ok=True)
        return path

    def save_model(self, state: Mapping[str, torch.Tensor]) -> Path:
        """The run's result, ``model.safetensors``: load it with ``model.load_state_dict``."""
        return _save_tensors(self.dir / "model.safetensors", state)

    def plot(self, title: str) -> Path | None:
        """accuracy.png: central accuracy vs round and vs cumulative per-participant FLOPs."""
        rows = [r for r in self.rows if isinstance(r.get("central-accuracy"), (int, float))]
        if not rows:
            return None
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        rounds = [r["round"] for r in rows]
        acc = [r["central-accuracy"] for r in rows]
        flops, total = [], 0.0
        for r in rows:
            f = r.get("flops-per-participant")
            total += f if isinstance(f, (int, float)) and math.isfinite(f) else 0.0
            flops.append(total)
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
        fig.suptitle(f"{title}: {self.dir.name}")
        ax1.xaxis.get_major_locator().set_params(integer=True)
        ax1.plot(rounds, acc, marker="o")
        ax1.set(xlabel="round", ylabel="central accuracy", title="accuracy vs round")
        ax2.plot(flops, acc, marker="o")
        ax2.set(xlabel="cumulative FLOPs per participant", ylabel="central accuracy", title="accuracy vs compute")
        for ax in (ax1, ax2):
            ax.grid(alpha=0.3)
        fig.tight_layout()
        path = self.dir / "accuracy.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return path


def latest_checkpoint(run_dir: str | Path) -> Checkpoint | None:
    """The newest complete, readable checkpoint of a run (model and state both written), or None.

    Checkpoints are written atomically, but a file can still be damaged afterwards (a full disk, a
    copy cut short): an unreadable one is skipped with a warning that names it, and the one before
    it is used."""
    for meta in sorted((Path(run_dir) / "checkpoints").glob("round-*.json"), reverse=True):
        weights = meta.with_suffix(".safetensors")
        if not weights.exists():
            continue
        try:
            extra = json.loads(meta.read_text())
            return Checkpoint(int(extra["round"]), load_file(str(weights)), extra)
        except Exception as exc:  # noqa: BLE001 - any damage means: not this one
            logger.warning("skipping unreadable checkpoint %s: %s: %s", weights, type(exc).__name__, exc)
    return None


def _lock_run_dir(run_dir: Path) -> Any:
    """Take ``run_dir``'s writer lock or raise, naming the process that holds it."""
    lock = open(run_dir / ".lock", "a+")  # noqa: SIM115 -- held open for the writer's lifetime: closing it releases the lock
    if fcntl is None:
        return lock
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        holder = lock.read().strip() or "unknown"
        lock.close()
        raise RuntimeError(
            f"run directory {str(run_dir)!r} is being written by another process (pid {holder}): "
            "two ServerApps must not share a run-name; stop the other one or choose another run-name"
        ) from None
    lock.truncate(0)
    lock.write(str(os.getpid()))
    lock.flush()
    return lock


def _plain(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def mark_failed(run_dir: Path, reason: str) -> None:
    """``run_dir/FAILED``, saying why the run failed (the folder is made if it is not there yet)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / FAILED_MARKER, reason.rstrip() + "\n")


def _save_tensors(path: Path, state: Mapping[str, torch.Tensor], metadata: dict[str, str] | None = None) -> Path:
    return atomic_write(path, lambda tmp: save_file({k: v.contiguous() for k, v in state.items()}, str(tmp), metadata=metadata))
