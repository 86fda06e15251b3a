"""The `platform/` folder must never shadow the standard library's `platform` module."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_no_platform_init():
    assert not (REPO / "platform" / "__init__.py").exists()


def test_stdlib_platform_under_pytest():
    import platform

    assert platform.system() in ("Linux", "Darwin", "Windows")
    import lightman.platform.config as config

    assert Path(config.__file__).parent == REPO / "platform"


def test_stdlib_platform_from_repo_root():
    code = "import platform, torch, ray; print(platform.system()); import lightman.platform.config"
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() in ("Linux", "Darwin", "Windows")


@pytest.mark.integration
def test_stdlib_platform_in_ray_task_with_repo_working_dir(tmp_path):
    code = f"""
import ray
ray.init(num_cpus=1, include_dashboard=False, runtime_env={{"working_dir": {str(REPO)!r},
         "excludes": [".venv", ".git", "runs", "data", "*.pt"]}})

@ray.remote
def probe():
    import os, platform
    import lightman.platform.config
    return platform.system(), os.path.exists("platform/config.py")

print(ray.get(probe.remote()))
ray.shutdown()
"""
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=dict(os.environ),
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "('Linux', True)" in out.stdout or "('Darwin', True)" in out.stdout
