"""Run the app the way users do — `flwr run .` on a local simulation — and read back what it wrote.

Each call gets its own FLWR_HOME and loopback ports, waits boundedly, reads the run's status with
`flwr ls` (`--stream` exits 0 on failure) and stops every Flower process it caused, by PID.
"""

from __future__ import annotations

import json
import shutil
import time
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from msfusion.loopback import REPO, flower_cleanup, flower_env, newest_run, read_jsonl, run_cli


@dataclass(frozen=True)
class FlwrRun:
    status: str
    run_dir: Path
    wall_seconds: float
    rows: list[dict]
    output_tail: str


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string
    return repr(value)


def flwr_run(
    run_config: Mapping[str, Any],
    *,
    work: Path,
    run_name: str,
    num_supernodes: int = 2,
    cpus_per_node: int = 1,
    timeout: float = 3600.0,
    config_files: tuple[Path, ...] = (),
) -> FlwrRun:
    """`flwr run . --stream` with ``config_files`` (presets) overlaid by ``run_config``; output goes
    to ``work/runs/<run_name>``. `flwr run` takes either TOML files or key=value pairs, not both, so
    everything is merged into one TOML file under ``work/configs``."""
    work = Path(work).resolve()
    home = work / "flwr-home" / run_name
    out = work / "runs"
    config: dict[str, Any] = {}
    for f in config_files:
        config |= tomllib.loads(Path(f).read_text())
    config |= dict(run_config) | {"output-dir": str(out), "run-name": run_name}
    merged = work / "configs" / f"{run_name}.toml"
    merged.parent.mkdir(parents=True, exist_ok=True)
    merged.write_text("".join(f"{k} = {toml_value(v)}\n" for k, v in config.items()))
    cmd = ["flwr", "run", ".", "--stream", "--run-config", str(merged)]
    cmd += ["--federation-config", f"num-supernodes={num_supernodes} client-resources-num-cpus={cpus_per_node}"]
    # A SuperLink re-launches the runs its database still lists as pending, so a database left by
    # an attempt killed mid-start would run beside this one. Resuming is the app's job (its
    # checkpoints), so every attempt starts from an empty SuperLink.
    shutil.rmtree(home / "local-superlink", ignore_errors=True)
    env = flower_env(home)
    log = work / "logs" / f"{run_name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with flower_cleanup(home):
        started = time.perf_counter()
        rc, output = run_cli(cmd, log, env, timeout, cwd=REPO)
        wall = time.perf_counter() - started
        status = newest_run(env).get("status", "unknown") if rc == 0 else f"flwr exited {rc}"
    run_dir = out / run_name
    rows = read_jsonl(run_dir / "metrics.jsonl") if (run_dir / "metrics.jsonl").exists() else []
    return FlwrRun(status, run_dir, wall, rows, output[-3000:])


if __name__ == "__main__":  # a quick manual check: the default app for 2 rounds
    result = flwr_run({"num-server-rounds": 2}, work=Path("/tmp/msfusion-launch"), run_name="default")
    print(json.dumps({"status": result.status, "wall": result.wall_seconds, "rounds": len(result.rows)}))
