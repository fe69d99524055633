"""qsm-gym environments. Importing this package registers every id with Gymnasium.

    import gymnasium as gym, qsmgym.envs
    env = gym.make("qsm/KickedTopSensor-v0")
    venv = gym.make_vec("qsm/KickedTopSensor-v0", num_envs=1024)   # native JAX batch

Functional cores (gymnax style) for jit/vmap/grad: ``task = make_task(id, **kwargs)``,
``params = task.default_params()``, ``obs, state = task.reset(key, params)``.
"""

from qsmgym.envs.bayesian_magnetometry import BayesianMagnetometry
from qsmgym.envs.core import FunctionalEnv
from qsmgym.envs.kicked_top import KickedTopSensor
from qsmgym.envs.photon_shaping import PhotonShaping, PhotonStorage
from qsmgym.envs.memory_cutoff import MemoryCutoff
from qsmgym.envs.repeater_delivery import RepeaterDelivery
from qsmgym.envs.time_dependent import TimeDependentEstimation
from qsmgym.envs.registry import TASKS, make_task, register_all

register_all()

__all__ = ["BayesianMagnetometry", "FunctionalEnv", "KickedTopSensor", "PhotonShaping", "PhotonStorage", "MemoryCutoff", "RepeaterDelivery", "TimeDependentEstimation", "TASKS", "make_task", "register_all"]
