"""Agents that train against qsm-gym's functional cores.

Modules: ``cem`` (cross-entropy method over open-loop sequences), ``grape`` (gradient ascent
on open-loop controls through any differentiable core), ``ppo`` (PPO with MLP/LSTM policies,
jitted end to end), ``repeater_baselines`` (exact chains and value iteration for the repeater
tasks), ``rollout``, ``model_aware`` (a closed-loop policy trained by backpropagation
through a differentiable core). The names below are CEM's, kept for
compatibility: ``from qsmgym.agents import ppo, grape`` for the others.
"""

from qsmgym.agents.cem import CEMConfig, CEMResult, default_hyper, make_train, train_cem
from qsmgym.agents.rollout import open_loop_return

__all__ = ["CEMConfig", "CEMResult", "default_hyper", "make_train", "open_loop_return", "train_cem"]
