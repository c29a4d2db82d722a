"""A federation of memory-capped SuperNodes trains a model none of them can train whole.

    python -m benchmarks.capped_federation [--cap-mb 1000] [--budget-mb 700] [--nodes 4] [--rounds 3]

One SuperLink and ``--nodes`` SuperNodes on loopback. Each SuperNode, with every process it starts
(`flower-superexec`, each round's `flwr-clientapp`), runs in its own cgroup v1 memory group capped at
``--cap-mb`` (swap included), which full-width ResNet-18 (width 64, batch 64) training does not fit.
Each node declares only ``memory-budget-mb`` (the memory its ClientApp process may use while
training: the cap less what its SuperNode's own processes hold) and a ``cache-dir``; before it
starts, ``python -m client_app.footprint`` measures its training footprints inside its cgroup into
that cache, so its capacity query reads them. Two runs, same nodes:

* ``planner = "full"`` (FedAvg of the full model): every ClientApp is OOM-killed; the run must end
  failed, with the nodes' reason, not "completed".
* ``planner = "msfusion"``, capacities from the budget: completes its rounds.

Records the cap, each node's chosen capacity, each node's peak memory, the OOM kills, the rounds'
times and the runs' status in ``docs/results/capped_federation/summary.json``. A node's peak is its
cgroup's high-water mark (every page once, page cache included); the summed RSS of its processes,
sampled every 0.2 s, counts the libraries they share once per process, so it reads higher. Where memory cgroups cannot be
created (no cgroup v1 memory controller, not root), it says so and exits 0.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from benchmarks.experiments import cifar_setting
from msfusion.loopback import (
    REPO,
    VENV_BIN,
    flower_cleanup,
    flower_env,
    free_ports,
    newest_run,
    read_jsonl,
    run_cli,
    started,
    superlink_cmd,
    stop_flower_processes,
    wait_http_health,
    wait_online_nodes,
    write_deploy_connection,
)
from benchmarks.launch import toml_value

MEMORY_ROOT = Path("/sys/fs/cgroup/memory")
ROUND_KEYS = (
    "round", "participants", "accepted", "failed", "applied", "round-seconds", "train-seconds-per-participant",
    "build-seconds-per-participant", "central-accuracy", "never-trained-fraction", "failed-reasons",
)
OUT = REPO / "docs" / "results" / "capped_federation"
SETTING = cifar_setting(64) | {  # ResNet-18 width 64, CIFAR-10, batch 64, SGD with momentum
    "local-examples": 128,  # two steps a round: the point is memory, not accuracy
    "central-eval-examples": 500,
}


# -- cgroups --------------------------------------------------------------------------------------
def own_memory_group() -> Path:
    """This process's cgroup v1 memory group (new groups go under it)."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            return MEMORY_ROOT / path.lstrip("/")
    raise OSError("no cgroup v1 memory controller in /proc/self/cgroup")


class MemoryGroup:
    """A cgroup v1 memory group capped at ``cap_mb`` (memory and memory+swap), removed on close."""

    def __init__(self, name: str, cap_mb: int) -> None:
        self.path = own_memory_group() / name
        self.path.mkdir()
        limit = str(cap_mb * 2**20)
        (self.path / "memory.limit_in_bytes").write_text(limit)
        swap = self.path / "memory.memsw.limit_in_bytes"
        if swap.exists():
            swap.write_text(limit)

    def read(self, name: str) -> str:
        return (self.path / name).read_text()

    def pids(self) -> list[int]:
        return [int(p) for p in self.read("cgroup.procs").split()]

    def oom_kills(self) -> int:
        found = re.search(r"oom_kill (\d+)", self.read("memory.oom_control"))
        return int(found.group(1)) if found else int(self.read("memory.failcnt"))

    def high_water_mb(self) -> float:
        return int(self.read("memory.max_usage_in_bytes")) / 2**20

    def reset_high_water(self) -> None:
        (self.path / "memory.max_usage_in_bytes").write_text("0")

    def command(self, cmd: list[str]) -> list[str]:
        """``cmd`` started inside this group (its children stay in it)."""
        return ["sh", "-c", f'echo $$ > "{self.path / "cgroup.procs"}" && exec "$@"', "sh", *cmd]

    def remove(self) -> None:
        for _ in range(50):
            try:
                self.path.rmdir()
                return
            except OSError:
                time.sleep(0.2)  # processes still leaving it


def cgroups_unavailable() -> str | None:
    """Why memory groups cannot be created here, or None."""
    try:
        probe = MemoryGroup(f"msfusion-probe-{os.getpid()}", 64)
    except OSError as exc:
        return f"cannot create a cgroup v1 memory group ({exc})"
    probe.remove()
    return None


class PeakSampler:
    """The largest summed RSS of each group's processes, sampled every 0.2 s."""

    def __init__(self, groups: list[MemoryGroup]) -> None:
        self.groups, self.peaks = groups, [0.0] * len(groups)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _rss_mb(self, pid: int) -> float:
        try:
            with open(f"/proc/{pid}/status") as status:
                return next((int(line.split()[1]) / 1024 for line in status if line.startswith("VmRSS:")), 0.0)
        except OSError:
            return 0.0

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            for i, group in enumerate(self.groups):
                with contextlib.suppress(OSError):
                    self.peaks[i] = max(self.peaks[i], sum(self._rss_mb(p) for p in group.pids()))

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


# -- the federation -------------------------------------------------------------------------------
@contextlib.contextmanager
def federation(work: Path, groups: list[MemoryGroup], node_configs: list[str]) -> Iterator[tuple[dict, list]]:
    """A SuperLink (uncapped) and one SuperNode per group, inside it."""
    home, logs = work / "flwr-home", work / "logs"
    env = flower_env(home)
    link_port, *node_ports = free_ports(1 + len(groups))
    write_deploy_connection(home, link_port)
    link_cmd = superlink_cmd(link_port)
    with contextlib.ExitStack() as stack:
        stack.enter_context(flower_cleanup(home))
        link = stack.enter_context(started(link_cmd, logs / "superlink.log", env))
        wait_http_health(link_port, timeout=60.0, proc=link)
        nodes = []
        for i, (group, config) in enumerate(zip(groups, node_configs)):
            cmd = ["flower-supernode", "--insecure", "--superlink", f"127.0.0.1:{link_port}", "--port", str(node_ports[i]), "--node-config", config]
            nodes.append(stack.enter_context(started(group.command(cmd), logs / f"supernode-{i}.log", env)))
        wait_online_nodes(env, len(groups), [link, *nodes], "deploy")
        yield env, [link, *nodes]


def one_run(planner: str, rounds: int, work: Path, env: dict, procs: list, groups: list[MemoryGroup], timeout: float) -> dict[str, Any]:
    name = f"capped-{planner}"
    config = SETTING | {"planner": planner, "num-server-rounds": rounds, "output-dir": str(work / "runs"), "run-name": name}
    toml = work / f"{name}.toml"
    toml.write_text("".join(f"{k} = {toml_value(v)}\n" for k, v in config.items()))
    for group in groups:
        group.reset_high_water()
    kills = [g.oom_kills() for g in groups]
    started_at = time.perf_counter()
    with PeakSampler(groups) as sampler:
        rc, output = run_cli(["flwr", "run", ".", "deploy", "--stream", "--run-config", str(toml)], work / "logs" / f"{name}.log", env, timeout)
    wall = time.perf_counter() - started_at
    run = newest_run(env, "deploy")
    metrics = work / "runs" / name / "metrics.jsonl"
    rows = read_jsonl(metrics) if metrics.exists() else []
    return {
        "planner": planner,
        "flwr-run-exit": rc,
        "status": run.get("status"),
        "status-details": run.get("status-details", ""),
        "wall-seconds": wall,
        "capacities": {int(p): float(c) for p, c in re.findall(r"node \d+: partition (\d+), capacity ([0-9.]+)", output)},
        "node-peak-rss-mb": sampler.peaks,
        "node-cgroup-high-water-mb": [g.high_water_mb() for g in groups],
        "oom-kills": [g.oom_kills() - k for g, k in zip(groups, kills)],
        "rounds": [
            {k: r.get(k) for k in ROUND_KEYS}
            for r in rows[1:]
        ],
        "output-tail": output[-1500:],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cap-mb", type=int, default=1000)
    parser.add_argument("--budget-mb", type=int, default=700)
    parser.add_argument("--nodes", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--work", type=Path, default=Path("/tmp/msfusion-capped"))
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--timeout", type=float, default=900.0, help="per run, seconds")
    args = parser.parse_args(argv)
    why = cgroups_unavailable()
    if why:
        print(f"capped_federation: skipped: {why}")
        return
    work = args.work.resolve()
    groups: list[MemoryGroup] = []
    try:
        groups = [MemoryGroup(f"msfusion-capped-{os.getpid()}-node{i}", args.cap_mb) for i in range(args.nodes)]
        configs = [
            f'partition-id={i} num-partitions={args.nodes} memory-budget-mb={args.budget_mb} cache-dir="{work / f"node{i}"}"'
            for i in range(args.nodes)
        ]
        run_config = " ".join(f"{k}={toml_value(v)}" for k, v in SETTING.items())
        measured = []
        for group, config in zip(groups, configs):  # each node measures inside its own cap, before it starts
            cmd = group.command([str(VENV_BIN / "python"), "-m", "client_app.footprint", "--run-config", run_config, "--node-config", config])
            rc, output = run_cli(cmd, work / "logs" / f"footprint-{len(measured)}.log", flower_env(work / "footprint-home"), 600.0)
            measured.append(json.loads(output.strip().splitlines()[-1]) if rc == 0 else {"error": output[-500:]})
            print("measured", json.dumps(measured[-1])[:300], flush=True)
        with federation(work, groups, configs) as (env, procs):
            runs = [one_run(planner, args.rounds, work, env, procs, groups, args.timeout) for planner in ("full", "msfusion")]
        for run in runs:
            print(json.dumps({k: v for k, v in run.items() if k != "output-tail"}), flush=True)
        summary = {
            "cap-mb": args.cap_mb,
            "memory-budget-mb": args.budget_mb,
            "nodes": args.nodes,
            "setting": SETTING,
            "footprints": measured,
            "runs": runs,
        }
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "summary.json").write_text(json.dumps(summary, indent=1, default=str) + "\n")
    finally:
        stop_flower_processes(work / "flwr-home")
        for group in groups:
            for pid in group.pids() if group.path.exists() else []:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, 9)
            group.remove()


if __name__ == "__main__":
    main()
