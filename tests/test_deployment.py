"""Deployment on loopback: a real SuperLink, two SuperNodes with different capacities, `flwr run . deploy`.

In flwr 1.41 the SuperLink serves the Fleet API, the Control API and the runtime API on ONE HTTP
port (``--host``/``--port``; ``--control-api-address`` is deprecated); `flwr` talks to that port
and every SuperNode needs its own ``--port`` (its runtime API for the `flwr-clientapp`s). Each
SuperNode starts a fresh `flwr-clientapp` process per message, so 2 rounds take a minute or two.
"""

from __future__ import annotations

import re

from msfusion.loopback import (
    REPO,
    flower_cleanup,
    flower_env,
    free_ports,
    newest_run,
    pids_with_flwr_home,
    read_jsonl,
    run_cli,
    started,
    stop_flower_processes,
    superlink_cmd,
    supernode_cmd,
    wait_http_health,
    wait_online_nodes,
    write_deploy_connection,
)

RUN_TIMEOUT = 480.0
NODES = {0: 1.0, 1: 0.5}  # partition id → split-ratio (capacity)


def test_deployment_two_supernodes(tmp_path):
    home, out, logs = tmp_path / "flwr-home", tmp_path / "runs", tmp_path / "logs"
    env = flower_env(home)
    link_port, *node_ports = free_ports(1 + len(NODES))
    write_deploy_connection(home, link_port)
    link_cmd = superlink_cmd(link_port)
    with flower_cleanup(home), started(link_cmd, logs / "superlink.log", env) as link:
        wait_http_health(link_port, timeout=60.0, proc=link)
        with started(supernode_cmd(link_port, node_ports[0], 0, len(NODES), NODES[0]), logs / "supernode-0.log", env) as n0, started(
            supernode_cmd(link_port, node_ports[1], 1, len(NODES), NODES[1]), logs / "supernode-1.log", env
        ) as n1:
            node_procs = [link, n0, n1]
            wait_online_nodes(env, len(NODES), node_procs, "deploy")

            cmd = ["flwr", "run", ".", "deploy", "--stream", "--run-config", f"num-server-rounds=2 output-dir='{out}' run-name='deploy'"]
            rc, output = run_cli(cmd, logs / "flwr-run.log", env, RUN_TIMEOUT, cwd=REPO)
            context = f"\n--- flwr run ---\n{output[-4000:]}\n" + "\n".join(f"--- {p.log.name} ---\n{p.tail(30)}" for p in node_procs)
            assert rc == 0, f"flwr run exited with {rc}{context}"
            run = newest_run(env, "deploy")
            assert run["status"] == "finished:completed", f"run {run.get('run-id')}: {run}{context}"

            # The server learned both capacities with its QUERY round (ServerApp log, streamed).
            for pid, ratio in NODES.items():
                assert re.search(rf"node \d+: partition {pid}, capacity {ratio:.3f}", output), f"capacity of partition {pid} not learned{context}"

            rows = read_jsonl(out / "deploy" / "metrics.jsonl")
            assert [r["round"] for r in rows] == [0, 1, 2], rows
            for r in rows[1:]:
                assert r["accepted"] == 2 and r["failed"] == 0 and r["rejected"] == 0, r
                # r=1.0 gets the whole model, r=0.5 about a quarter: the mean is ~5/8 of it
                # (both at 0.5 — capacities not learned — would give ~1/4).
                share = r["bytes-down-per-participant"] / r["full-model-bytes"]
                assert 0.5 < share < 0.75, r
            assert (out / "deploy" / "checkpoints" / "round-0002.safetensors").is_file()

    # Every context manager has stopped its process tree by PID; sweep what is left of FLWR_HOME.
    left = stop_flower_processes(home)
    assert not left, f"processes survived SIGKILL: {left}"
    assert not pids_with_flwr_home(home)
