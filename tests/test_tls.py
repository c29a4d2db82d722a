"""Deployment over TLS with SuperNode authentication, built with `scripts/tls_deploy.sh`.

The script makes a CA, a SuperLink certificate for 127.0.0.1/localhost and ECDSA P-384 node keys
(OpenSSH format, what `flower-supernode --auth-supernode-private-key` and `flwr supernode register`
load), adds a `[superlink.tls]` connection with `root-certificates` to `$FLWR_HOME/config.toml` and
registers public keys. Here it starts the SuperLink and SuperNodes with FOREGROUND=1 (it `exec`s the
Flower command), so each test-owned PID is the Flower process itself and is stopped by PID.

Two registered SuperNodes (split-ratio 1.0 and 0.5) train 2 rounds. A third SuperNode whose key was
never registered is refused: `flower-supernode` logs "Exit Code: 305" (SUPERNODE_CONNECTION_ERROR;
the process itself exits with 1, as the exit happens inside its uvicorn lifespan) after the SuperLink answers its ActivateNode call with "[code: 2004] Failed to activate SuperNode."
(flwr 1.41 `supernode/fleet_http_connection.py`: with auth enabled a node cannot self-register, and
activation looks the key up among registered ones); it never appears in `flwr supernode ls`, and the
server only ever plans for the two registered nodes.
"""

from __future__ import annotations

import re
import ssl
import subprocess
import time
import urllib.request
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from msfusion.loopback import (
    REPO,
    Proc,
    flower_cleanup,
    flower_env,
    flwr_json,
    free_ports,
    newest_run,
    pids_with_flwr_home,
    read_jsonl,
    run_cli,
    started,
    stop_flower_processes,
    wait_online_nodes,
)

SCRIPT = REPO / "scripts" / "tls_deploy.sh"
CONNECTION = "tls"
RUN_TIMEOUT = 480.0
NODES = {0: 1.0, 1: 0.5}  # partition id → split-ratio, keys node-0 and node-1 (registered)
INTRUDER = 2  # key node-2: made, never registered


def script(work: Path, env: dict, *args: str, timeout: float = 120.0) -> str:
    out = subprocess.run(
        ["bash", str(SCRIPT), str(work), *args], check=False, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )
    assert out.returncode == 0, f"tls_deploy.sh {' '.join(args)} exited with {out.returncode}:\n{out.stdout}\n{out.stderr}"
    return out.stdout + out.stderr


def wait_https_health(port: int, ca: Path, proc: Proc, timeout: float = 60.0) -> None:
    """Wait for https://127.0.0.1:<port>/health, verifying the server certificate against our CA
    (so this also checks the certificate is valid for the IP address 127.0.0.1)."""
    context = ssl.create_default_context(cafile=str(ca))
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        assert proc.popen.poll() is None, f"SuperLink exited with {proc.popen.returncode}:\n{proc.tail()}"
        try:
            with urllib.request.urlopen(f"https://127.0.0.1:{port}/health", timeout=2.0, context=context) as resp:
                if resp.status == 200:
                    return
        except OSError as exc:
            last = exc
        time.sleep(0.3)
    raise AssertionError(f"SuperLink not healthy over TLS after {timeout:.0f}s ({last}):\n{proc.tail()}")


def pem_public_key(ssh_pub: Path) -> str:
    """The PEM form in which the SuperLink logs a node's public key."""
    key = serialization.load_ssh_public_key(ssh_pub.read_bytes())
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def supernodes(env: dict) -> list[dict]:
    return flwr_json(["supernode", "ls", CONNECTION], env).get("nodes") or []


def test_tls_with_supernode_auth(tmp_path):
    work, home, out = tmp_path / "tls", tmp_path / "flwr-home", tmp_path / "runs"
    logs = work / "logs"
    link_port, *node_ports = free_ports(4)
    env = flower_env(home, SUPERLINK_PORT=str(link_port), CONNECTION=CONNECTION)
    fg = env | {"FOREGROUND": "1"}
    ca = work / "certs" / "ca.crt"

    script(work, env, "certs", "3")
    assert {p.name for p in (work / "keys").iterdir()} == {f"node-{i}{s}" for i in range(3) for s in ("", ".pub")}

    with flower_cleanup(home), started(["bash", str(SCRIPT), str(work), "superlink"], logs / "superlink.log", fg) as link:
        wait_https_health(link_port, ca, link)
        script(work, env, "connection")
        toml = (home / "config.toml").read_text()
        assert f'[superlink.{CONNECTION}]\naddress = "127.0.0.1:{link_port}"\nroot-certificates = "{ca}"' in toml, toml

        registered = script(work, env, "register", *(str(work / "keys" / f"node-{i}.pub") for i in NODES))
        assert registered.count("registered successfully") == len(NODES), registered
        before = supernodes(env)
        assert len(before) == len(NODES) and all(n["status"] == "registered" for n in before), before

        def node(i: int, num: int, ratio: float):
            cmd = ["bash", str(SCRIPT), str(work), "supernode", str(work / "keys" / f"node-{i}"), str(i), str(num), str(ratio), str(node_ports[i])]
            return started(cmd, logs / f"supernode-{i}.log", fg)

        with node(0, len(NODES), NODES[0]) as n0, node(1, len(NODES), NODES[1]) as n1:
            procs = [link, n0, n1]
            online = wait_online_nodes(env, len(NODES), procs, CONNECTION)
            node_ids = {n["node-id"] for n in online}

            # An unregistered key: it would claim partition 1 at full capacity if it got in.
            with node(INTRUDER, len(NODES), 1.0) as intruder:
                try:
                    rc = intruder.popen.wait(timeout=90)
                except subprocess.TimeoutExpired:
                    raise AssertionError(f"the unregistered SuperNode was not refused within 90 s:\n{intruder.tail()}") from None
                refusal = intruder.output()
            # flwr_exit(305) inside the SuperNode's uvicorn lifespan: logged, the process exits with 1.
            assert rc != 0 and "Exit Code: 305" in refusal, f"unregistered SuperNode exited with {rc}:\n{refusal}"
            assert "Failed to initialize the connection to the SuperLink" in refusal and "Failed to activate SuperNode" in refusal, refusal
            assert "Received" not in refusal and "flwr-clientapp" not in refusal, refusal
            # The SuperLink's side: ActivateNode refused (HTTP 412) for exactly that public key.
            intruder_pem = pem_public_key(work / "keys" / f"node-{INTRUDER}.pub")
            refused = [ln for ln in link.output().splitlines() if "No SuperNode found with the given public key" in ln]
            assert len(refused) == 1 and intruder_pem.replace("\n", "\\n") in refused[0], refused or link.tail()

            cmd = ["flwr", "run", ".", CONNECTION, "--stream", "--run-config", f"output-dir='{out}' run-name='tls' num-server-rounds=2"]
            rc, output = run_cli(cmd, logs / "flwr-run.log", env, RUN_TIMEOUT)
            context = f"\n--- flwr run ---\n{output[-4000:]}\n" + "\n".join(f"--- {p.log.name} ---\n{p.tail(30)}" for p in procs)
            assert rc == 0, f"flwr run exited with {rc}{context}"
            run = newest_run(env, CONNECTION)
            assert run["status"] == "finished:completed", f"run {run.get('run-id')}: {run}{context}"

            # The SuperLink still knows exactly the two registered nodes: the intruder never got a node id.
            after = supernodes(env)
            assert {n["node-id"] for n in after} == node_ids and len(after) == len(NODES), after
            # The server asked (QUERY) and planned for the two registered nodes only.
            learned = re.findall(r"node (\d+): partition (\d+), capacity ([0-9.]+)", output)
            assert sorted((int(p), float(c)) for _, p, c in learned) == sorted(NODES.items()), f"{learned}{context}"
            assert {nid for nid, _, _ in learned} == node_ids, f"{learned} vs {node_ids}{context}"

            rows = read_jsonl(out / "tls" / "metrics.jsonl")
            assert [r["round"] for r in rows] == [0, 1, 2], rows
            for r in rows[1:]:
                assert r["participants"] == 2 and r["accepted"] == 2 and r["failed"] == 0 and r["rejected"] == 0, r

    left = stop_flower_processes(home)
    assert not left, f"processes survived SIGKILL: {left}"
    assert not pids_with_flwr_home(home)
