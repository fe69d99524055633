"""Registry of task ids, functional cores and their Gymnasium shells."""

from __future__ import annotations

import gymnasium as gym

from qsmgym.envs.bayesian_magnetometry import BayesianMagnetometry
from qsmgym.envs.core import FunctionalEnv
from qsmgym.envs.kicked_top import KickedTopSensor
from qsmgym.envs.photon_shaping import PhotonShaping, PhotonStorage
from qsmgym.envs.memory_cutoff import MemoryCutoff
from qsmgym.envs.repeater_delivery import RepeaterDelivery
from qsmgym.envs.time_dependent import TimeDependentEstimation

# id -> functional core class. The Gymnasium shell and the vector env are generic.
TASKS: dict[str, type[FunctionalEnv]] = {
    "qsm/KickedTopSensor-v0": KickedTopSensor,
    "qsm/PhotonShaping-v0": PhotonShaping,
    "qsm/PhotonStorage-v0": PhotonStorage,
    "qsm/MemoryCutoff-v0": MemoryCutoff,
    "qsm/RepeaterDelivery-v0": RepeaterDelivery,
    "qsm/TimeDependentEstimation-v0": TimeDependentEstimation,
    "qsm/BayesianMagnetometry-v0": BayesianMagnetometry,
}


def make_task(env_id: str, **kwargs) -> FunctionalEnv:
    """The functional core of a registered id, built with the same kwargs as gym.make."""
    if env_id not in TASKS:
        raise ValueError(f"env_id must be one of {sorted(TASKS)}, got env_id={env_id!r}")
    return TASKS[env_id](**kwargs)


def register_all() -> None:
    """Register every id (idempotent) with its shell and native vector entry point."""
    for env_id in TASKS:
        if env_id in gym.registry:
            continue
        gym.register(
            id=env_id,
            entry_point="qsmgym.envs.shell:GymnasiumEnv",
            vector_entry_point="qsmgym.envs.vector:JaxVectorEnv",
            kwargs={"env_id": env_id},
        )
