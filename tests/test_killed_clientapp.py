"""A node's ClientApp process is killed mid-training (as the OOM killer does on a capped node): the
node is counted as failed, and the run carries on without it.

Two real SuperNodes on loopback run the project's app through a ClientApp that delegates every
message to ``client_app.app``, except that on the node started with ``kill-in-round=1`` it SIGKILLs
its own process when round 1's training message arrives. Flower tells the ServerApp nothing until
the dead task's heartbeat lapses (60 s in flwr 1.42, which then replies "ClientApp stopped
responding."); with ``round-timeout=20`` the round closes first and the strategy counts the missing
reply as failed. The SuperNode stays blocked on the dead task until the lapse, so it may miss
round 2 too; the round is applied with the other node's update either way.
"""

from __future__ import annotations

import re

from msfusion.loopback import (
    LOOPBACK,
    REPO,
    flower_cleanup,
    flower_env,
    free_ports,
    newest_run,
    pids_with_flwr_home,
    read_jsonl,
    run_cli,
    started,
    superlink_cmd,
    stop_flower_processes,
    wait_http_health,
    wait_online_nodes,
    write_deploy_connection,
)

ROUND_TIMEOUT = 20
KILLER = '''
import os
import signal

from flwr.clientapp import ClientApp

import client_app.app as msfusion

app = ClientApp()


@app.query()
def query(msg, context):
    return msfusion.app(msg, context)


@app.train()
def train(msg, context):
    if context.node_config.get("kill-in-round") == msg.content.config_records["plan"]["server-round"]:
        os.kill(os.getpid(), signal.SIGKILL)
    return msfusion.app(msg, context)


@app.evaluate()
def evaluate(msg, context):
    return msfusion.app(msg, context)
'''


def test_a_node_whose_clientapp_is_killed_mid_training_fails_and_the_run_goes_on(tmp_path):
    app_dir, home, out, logs = tmp_path / "app", tmp_path / "flwr-home", tmp_path / "runs", tmp_path / "logs"
    app_dir.mkdir()
    (app_dir / "killer.py").write_text(KILLER)
    # The project's app, with the killer as its ClientApp; the project's packages come from the
    # (editable) install, so the app ships only the killer.
    pyproject = re.sub(r"(?m)^fab-include = .*$", 'fab-include = ["killer.py"]', (REPO / "pyproject.toml").read_text())
    assert 'clientapp = "client_app.app:app"' in pyproject
    (app_dir / "pyproject.toml").write_text(pyproject.replace('clientapp = "client_app.app:app"', 'clientapp = "killer:app"'))
    env = flower_env(home)
    link_port, *node_ports = free_ports(3)
    write_deploy_connection(home, link_port)
    link_cmd = superlink_cmd(link_port)
    configs = ["partition-id=0 num-partitions=2 split-ratio=1.0", "partition-id=1 num-partitions=2 split-ratio=0.5 kill-in-round=1"]
    with flower_cleanup(home), started(link_cmd, logs / "superlink.log", env) as link:
        wait_http_health(link_port, timeout=60.0, proc=link)
        cmds = [
            ["flower-supernode", "--insecure", "--superlink", f"{LOOPBACK}:{link_port}", "--port", str(port), "--node-config", config]
            for port, config in zip(node_ports, configs)
        ]
        with started(cmds[0], logs / "supernode-0.log", env) as n0, started(cmds[1], logs / "supernode-1.log", env) as n1:
            wait_online_nodes(env, 2, [link, n0, n1], "deploy")
            config = f"num-server-rounds=2 round-timeout={ROUND_TIMEOUT} local-epochs=1 local-examples=96 output-dir='{out}' run-name='killed'"
            rc, output = run_cli(["flwr", "run", ".", "deploy", "--stream", "--run-config", config], logs / "flwr-run.log", env, 400.0, cwd=app_dir)
            context = f"\n--- flwr run ---\n{output[-3000:]}\n" + "\n".join(f"--- {p.log.name} ---\n{p.tail(20)}" for p in (link, n0, n1))
            assert rc == 0, f"flwr run exited with {rc}{context}"
            run = newest_run(env, "deploy")
            assert run["status"] == "finished:completed", f"{run}{context}"

    rows = read_jsonl(out / "killed" / "metrics.jsonl")
    assert [r["round"] for r in rows] == [0, 1, 2], rows
    first = rows[1]
    assert first["participants"] == 2 and first["accepted"] == 1 and first["failed"] == 1 and first["applied"] == 1, first
    assert "no reply before the round timed out" in str(first["failed-reasons"]), first
    assert re.search(r"round 1: node \d+ failed: no reply before the round timed out", output), output[-3000:]
    assert rows[2]["applied"] == 1 and rows[2]["accepted"] >= 1, rows[2]  # the run carried on
    left = stop_flower_processes(home)
    assert not left, f"processes survived SIGKILL: {left}"
    assert not pids_with_flwr_home(home)
