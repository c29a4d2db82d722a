"""msfusion_core stays framework-free: importing all of it loads no `flwr` module, and none of the
app layer above it (msfusion_app, server_app, client_app).

(It does use the separate `flwr-datasets` package for partitioners, as the core issue asks.)"""

import subprocess
import sys


def test_core_imports_no_flwr():
    code = (
        "import sys, pkgutil, importlib, msfusion_core\n"
        "for m in pkgutil.walk_packages(msfusion_core.__path__, 'msfusion_core.'): importlib.import_module(m.name)\n"
        "above = ('flwr', 'msfusion_app', 'server_app', 'client_app')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in above))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
