"""Usage errors (unknown option, unknown command) are a usage line and exit 2, never a traceback.

typer may bring its own vendored click (``typer._click``) whose exceptions are not ``click``'s; these run the
installed ``refinery`` console script, so they see what a user of a fresh install sees.
"""

import subprocess
import sys
from pathlib import Path

import pytest

from refinery.cli import main

SCRIPT = Path(sys.executable).parent / "refinery"


def run_script(*args: str):
    if not SCRIPT.exists():
        pytest.skip(f"the refinery console script is not installed next to {sys.executable} (run 'make install')")
    out = subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, timeout=120)
    return out.returncode, out.stdout, out.stderr


@pytest.mark.parametrize(("args", "bad"), [
    (["rl", "train", "--nprocs", "2"], "--nprocs"),      # unknown option on a real subcommand
    (["no-such-command"], "no-such-command"),           # unknown command
    (["--nproc", "2"], "--nproc"),                      # unknown top-level option
])
def test_installed_script_usage_errors(args, bad):
    code, out, err = run_script(*args)
    assert code == 2, (code, out, err)
    assert "Traceback" not in out + err
    assert bad in err
    assert "Usage:" in err


@pytest.mark.parametrize(("args", "bad"), [
    (["rl", "train", "--nprocs", "2"], "--nprocs"),
    (["no-such-command"], "no-such-command"),
])
def test_main_usage_errors(args, bad, capsys):
    assert main(args) == 2
    cap = capsys.readouterr()
    assert "Traceback" not in cap.out + cap.err
    assert bad in cap.err
