"""Both an editable install and a built wheel import qsmgym.envs (namespace package mapping)."""

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_installed_package_imports_from_repo_folders():
    import qsmgym.envs
    import qsmgym.physics

    assert Path(qsmgym.physics.__file__).parent == ROOT / "physics"
    assert Path(qsmgym.envs.__file__).parent == ROOT / "envs"



def test_built_wheel_imports_envs(tmp_path):
    dist = tmp_path / "dist"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(dist), str(ROOT)],
        capture_output=True, text=True, timeout=600,
    )
    assert build.returncode == 0, build.stderr[-2000:]
    wheel = next(dist.glob("qsm_gym-*.whl"))
    target = tmp_path / "site"
    inst = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--target", str(target), str(wheel)],
        capture_output=True, text=True, timeout=600,
    )
    assert inst.returncode == 0, inst.stderr[-2000:]
    # -S: no site processing, so the editable install's .pth finder is not active; the
    # dependencies come from site-packages appended by hand after the wheel's folder.
    site = sysconfig.get_paths()["purelib"]
    code = (
        "import sys; sys.path[:0] = [sys.argv[1]]; sys.path.append(sys.argv[2]);"
        "import qsmgym.envs, qsmgym.physics, qsmgym.agents, gymnasium as gym;"
        "print(qsmgym.envs.__file__);"
        "from qsmgym.agents import pf_native; assert pf_native.SOURCE.is_file(), pf_native.SOURCE;"  # kernel source ships
        "env = gym.make('qsm/KickedTopSensor-v0', j=1); env.reset(seed=0)"
    )
    out = subprocess.run([sys.executable, "-S", "-c", code, str(target), site],
                         capture_output=True, text=True, timeout=300, env=dict(os.environ))
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().startswith(str(target))
