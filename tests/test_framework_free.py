"""msfusion_core stays framework-free: importing all of it loads no `flwr` module.

(It does use the separate `flwr-datasets` package for partitioners, as the core issue asks.)"""

import subprocess
import sys


def test_core_imports_no_flwr():
    code = (
        "import sys, pkgutil, importlib, msfusion_core\n"
        "for m in pkgutil.walk_packages(msfusion_core.__path__, 'msfusion_core.'): importlib.import_module(m.name)\n"
        "print(sorted(m for m in sys.modules if m == 'flwr' or m.startswith('flwr.')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
