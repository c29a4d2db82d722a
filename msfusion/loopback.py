"""Real Flower processes on loopback (`flwr run`, SuperLink, SuperNodes), started and stopped by PID.

Rules these helpers keep: every address is loopback (127.0.0.1), every wait is bounded, and every
process a test starts is stopped by its PID (SIGTERM, a bounded wait, then SIGKILL), including the
detached processes Flower spawns itself: the local SuperLink that `flwr run .` starts, and the
`flower-superexec` / `flwr-serverapp` / `flwr-simulation` / `flwr-clientapp` processes under every
SuperLink and SuperNode. Each test gets its own FLWR_HOME; every process started with `flower_env`
inherits `FLWR_HOME=<that dir>`, which is how `stop_flower_processes` finds them all (plus the
process tree of the local SuperLink found by its `--database <FLWR_HOME>/...` command line).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
LOOPBACK = "127.0.0.1"
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


# -- environment and ports -------------------------------------------------------------------
def free_ports(n: int) -> list[int]:
    """``n`` distinct free TCP ports on 127.0.0.1 (all sockets held open until all are chosen)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((LOOPBACK, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def flower_env(flwr_home: Path, **extra: str) -> dict[str, str]:
    """Environment for Flower subprocesses: offline, private FLWR_HOME, the venv's bin first on PATH.

    The local SuperLink that `flwr run .` spawns listens on FLWR_LOCAL_SUPERLINK_HTTP_API_PORT
    (default 39091) and `flwr` reuses *any* SuperLink that answers there: give each test free
    ports so it never talks to another session's SuperLink (or leaves one on 39091).
    """
    flwr_home.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLWR_")}
    http_port, control_port = free_ports(2)
    env |= {
        "FLWR_HOME": str(flwr_home),
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(http_port),
        "FLWR_LOCAL_CONTROL_API_PORT": str(control_port),
        "PATH": f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
        "PYTHONUNBUFFERED": "1",
        "NO_COLOR": "1",
    }
    env |= extra
    return env


# -- /proc -----------------------------------------------------------------------------------
def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, ppid, start time) of a live process, None when gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2 :].split()
    return fields[0], int(fields[1]), int(fields[19])


def _all_pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def descendants(pid: int) -> set[int]:
    """All live descendants of ``pid`` (by parent pid, so also detached/new-session children)."""
    children: dict[int, list[int]] = {}
    for p in _all_pids():
        st = _stat(p)
        if st is not None:
            children.setdefault(st[1], []).append(p)
    found, todo = set(), [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            if c not in found:
                found.add(c)
                todo.append(c)
    return found


def pids_with_flwr_home(flwr_home: Path) -> set[int]:
    """Processes whose environment has ``FLWR_HOME=<flwr_home>`` (what `flower_env` children inherit)."""
    marker = b"\0FLWR_HOME=" + str(flwr_home).encode() + b"\0"
    me = os.getpid()
    found = set()
    for p in _all_pids():
        if p == me:
            continue
        try:
            data = b"\0" + Path(f"/proc/{p}/environ").read_bytes() + b"\0"
        except OSError:
            continue
        if marker in data:
            found.add(p)
    return found


def local_superlink_pids(flwr_home: Path) -> set[int]:
    """The detached SuperLink `flwr run .` spawned for this FLWR_HOME (its command line has
    ``--database <FLWR_HOME>/local-superlink/state.db`` or the log file there), plus its
    descendants (its `flower-superexec` and whatever that runs)."""
    needle = str(Path(flwr_home) / "local-superlink") + "/"
    found = {p for p in _all_pids() if "flower-superlink" in (cmd := cmdline(p)) and needle in cmd}
    for p in list(found):
        found |= descendants(p)
    return found


def _alive(pid: int, start: int) -> bool:
    st = _stat(pid)
    return st is not None and st[2] == start and st[0] != "Z"


def stop_pids(pids: Iterable[int], grace: float = 10.0) -> list[int]:
    """SIGTERM each pid, wait up to ``grace`` s, SIGKILL the rest; return pids still alive (should be [])."""
    me = os.getpid()
    targets = {p: st[2] for p in set(pids) if p != me and (st := _stat(p)) is not None and st[0] != "Z"}
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        live = [p for p, start in targets.items() if _alive(p, start)]
        for p in live:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(p, sig)
        deadline = time.monotonic() + wait
        while live and time.monotonic() < deadline:
            time.sleep(0.1)
            live = [p for p in live if _alive(p, targets[p])]
        if not live:
            return []
    return [p for p, start in targets.items() if _alive(p, start)]


def flower_pids(flwr_home: Path) -> set[int]:
    """Live processes of this FLWR_HOME: its local SuperLink tree, everything that inherited the
    FLWR_HOME, and their descendants."""
    pids = local_superlink_pids(flwr_home) | pids_with_flwr_home(flwr_home)
    for p in list(pids):
        pids |= descendants(p)
    return {p for p in pids if (st := _stat(p)) is not None and st[0] != "Z"}


def stop_flower_processes(flwr_home: Path, grace: float = 10.0) -> list[int]:
    """Stop, by PID, every process that belongs to this FLWR_HOME (see the module docstring).
    Returns the PIDs still alive afterwards (empty when all went)."""
    left: list[int] = []
    for _ in range(3):  # a dying parent may spawn nothing new, but look again to be sure
        pids = flower_pids(flwr_home)
        if not pids:
            return []
        left = stop_pids(pids, grace)
    return left


@contextlib.contextmanager
def flower_cleanup(flwr_home: Path) -> Iterator[None]:
    """On exit (also on failure) stop every process of this FLWR_HOME by PID."""
    try:
        yield
    finally:
        stop_flower_processes(flwr_home)


# -- processes -------------------------------------------------------------------------------
class Proc:
    """A started process with its log file."""

    def __init__(self, popen: subprocess.Popen, log: Path) -> None:
        self.popen, self.log = popen, log

    @property
    def pid(self) -> int:
        return self.popen.pid

    def output(self) -> str:
        return _ANSI.sub("", self.log.read_text(errors="replace")) if self.log.exists() else ""

    def tail(self, n: int = 60) -> str:
        return "\n".join(self.output().splitlines()[-n:])

    def stop(self, grace: float = 10.0) -> None:
        pids = {self.pid} | descendants(self.pid)
        stop_pids(pids, grace)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=5)


@contextlib.contextmanager
def started(cmd: list[str], log: Path, env: Mapping[str, str], cwd: Path = REPO) -> Iterator[Proc]:
    """Start ``cmd`` in its own session (stdout+stderr to ``log``); on exit stop it and its
    descendants by PID (SIGTERM, wait, SIGKILL)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as fh:
        popen = subprocess.Popen(cmd, cwd=cwd, env=dict(env), stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    proc = Proc(popen, log)
    try:
        yield proc
    finally:
        proc.stop()


def run_cli(cmd: list[str], log: Path, env: Mapping[str, str], timeout: float, cwd: Path = REPO) -> tuple[int, str]:
    """Run a command to completion within ``timeout`` s (killed by PID, tree included, past it);
    return (exit code, output without ANSI codes)."""
    with started(cmd, log, env, cwd) as proc:
        try:
            rc = proc.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.stop()
            raise AssertionError(f"{' '.join(cmd[:3])} ran past {timeout:.0f}s; last output:\n{proc.tail()}") from None
        return rc, proc.output()


def flwr_json(args: list[str], env: Mapping[str, str], timeout: float = 60.0, cwd: Path = REPO) -> dict:
    """Run ``flwr <args> --format json`` and parse its JSON answer."""
    out = subprocess.run(
        ["flwr", *args, "--format", "json"], cwd=cwd, env=dict(env), capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL, check=False
    )
    text = _ANSI.sub("", out.stdout)
    start = text.find("{")
    if start < 0:
        raise AssertionError(f"flwr {' '.join(args)} gave no JSON (rc={out.returncode}):\n{out.stdout}\n{out.stderr}")
    return json.loads(text[start:])


def newest_run(env: Mapping[str, str], connection: str | None = None, wait_finished: float = 30.0) -> dict:
    """The newest run from ``flwr ls --format json`` (keys "run-id", "status", ...), waiting up to
    ``wait_finished`` s for its status to reach ``finished:*``. NOTE: with the default local
    connection `flwr ls` starts a local SuperLink when none answers: call this before cleanup."""
    args = ["ls", *([connection] if connection else [])]
    deadline = time.monotonic() + wait_finished
    while True:
        answer = flwr_json(args, env)
        runs = answer.get("runs") or []
        if not runs:
            raise AssertionError(f"flwr ls lists no runs: {answer}")
        run = max(runs, key=lambda r: (str(r.get("pending-at", "")), str(r.get("run-id", ""))))
        if str(run.get("status", "")).startswith("finished") or time.monotonic() > deadline:
            return run
        time.sleep(1.0)


def wait_http_health(port: int, timeout: float = 30.0, proc: Proc | None = None) -> None:
    """Wait until ``http://127.0.0.1:<port>/health`` answers (a SuperLink's HTTP API is up)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.popen.poll() is not None:
            raise AssertionError(f"process exited with {proc.popen.returncode}:\n{proc.tail()}")
        try:
            with urllib.request.urlopen(f"http://{LOOPBACK}:{port}/health", timeout=1.0) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise AssertionError(f"nothing healthy on {LOOPBACK}:{port} after {timeout:.0f}s" + (f":\n{proc.tail()}" if proc else ""))


def superlink_cmd(port: int) -> list[str]:
    """An insecure SuperLink on loopback, serving the Fleet, Control and runtime APIs on ``port``."""
    return ["flower-superlink", "--insecure", "--disable-runtime-dependency-installation", "--host", LOOPBACK, "--port", str(port)]


def write_deploy_connection(flwr_home: Path, port: int) -> None:
    """``$FLWR_HOME/config.toml`` with one connection, ``deploy`` (the default), to that SuperLink."""
    (flwr_home / "config.toml").write_text(f'[superlink]\ndefault = "deploy"\n\n[superlink.deploy]\naddress = "{LOOPBACK}:{port}"\ninsecure = true\n')


def supernode_cmd(link_port: int, port: int, partition_id: int, num_partitions: int, split_ratio: float) -> list[str]:
    """An insecure SuperNode on loopback with its partition and capacity in the node config."""
    node_config = f"partition-id={partition_id} num-partitions={num_partitions} split-ratio={split_ratio}"
    return ["flower-supernode", "--insecure", "--superlink", f"{LOOPBACK}:{link_port}", "--port", str(port), "--node-config", node_config]


def wait_online_nodes(env: Mapping[str, str], count: int, procs: list[Proc], connection: str, timeout: float = 90.0) -> list[dict]:
    """Wait until ``flwr supernode ls <connection>`` shows ``count`` online nodes; return the list.
    Fails early, with their logs, if one of ``procs`` exits."""
    deadline = time.monotonic() + timeout
    nodes: list[dict] = []
    while time.monotonic() < deadline:
        for p in procs:
            assert p.popen.poll() is None, f"a Flower process exited early ({p.popen.returncode}):\n{p.tail()}"
        nodes = flwr_json(["supernode", "ls", connection], env).get("nodes") or []
        if sum(n.get("status") == "online" for n in nodes) >= count:
            return nodes
        time.sleep(1.0)
    raise AssertionError(f"fewer than {count} SuperNodes online after {timeout:.0f}s: {nodes}\n" + "\n".join(p.tail(20) for p in procs))


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
