"""`lightman.platform.runtime.setup()`: the one call that applies Lightman's process-wide
settings; a value the user set is kept."""

import os
import subprocess
import sys

SETTINGS = ("RAY_AUTH_MODE", "OMP_WAIT_POLICY")
PRINT = (
    "import os; from lightman.platform.runtime import setup; setup(); "
    "print(os.environ['RAY_AUTH_MODE'], os.environ['OMP_WAIT_POLICY'])"
)


def _settings(**env: str) -> list[str]:
    clean = {k: v for k, v in os.environ.items() if k not in SETTINGS}
    out = subprocess.run(
        [sys.executable, "-c", PRINT], env={**clean, **env}, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.split()


def test_setup_turns_rays_token_authentication_on_and_waits_passively():
    assert _settings() == ["token", "PASSIVE"]


def test_setup_keeps_what_the_user_set():
    # "Token": a spelling of the mode Ray accepts (it compares lower-cased) and setup does not
    assert _settings(RAY_AUTH_MODE="Token", OMP_WAIT_POLICY="ACTIVE") == ["Token", "ACTIVE"]
