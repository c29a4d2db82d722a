"""scripts/flwr_connection.sh: the README's deployment step, safe to run twice and on a fresh FLWR_HOME."""

import subprocess
import tomllib

from msfusion.loopback import REPO, flower_env

SCRIPT = REPO / "scripts" / "flwr_connection.sh"


def test_adding_a_connection_twice_keeps_one_valid_table(tmp_path):
    home = tmp_path / "fresh" / ".flwr"  # does not exist yet
    env = flower_env(tmp_path / "unused") | {"FLWR_HOME": str(home)}
    for port in (19100, 19101):
        subprocess.run(["bash", str(SCRIPT), "deploy", f"127.0.0.1:{port}", "--insecure"], env=env, check=True, capture_output=True, timeout=60)
    text = (home / "config.toml").read_text()
    assert text.count("[superlink.deploy]") == 1
    config = tomllib.loads(text)["superlink"]
    assert config["deploy"] == {"address": "127.0.0.1:19101", "insecure": True}
    assert "local" in config  # Flower's own default connection is kept
    listed = subprocess.run(["flwr", "config", "ls"], env=env, capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0 and "deploy" in listed.stdout, listed.stderr


def test_bad_arguments_are_named(tmp_path):
    env = flower_env(tmp_path / "home")
    bad = subprocess.run(["bash", str(SCRIPT), "deploy", "127.0.0.1:1", "--tls"], env=env, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "unknown option --tls" in bad.stderr
