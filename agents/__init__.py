"""Agents that train against qsm-gym's functional cores.

cem: cross-entropy method over open-loop sequences (this release); PPO, model-aware RL and
GRAPE come with their issues.
"""

from qsmgym.agents.cem import CEMConfig, CEMResult, default_hyper, make_train, train_cem
from qsmgym.agents.rollout import open_loop_return

__all__ = ["CEMConfig", "CEMResult", "default_hyper", "make_train", "open_loop_return", "train_cem"]
