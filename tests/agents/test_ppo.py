"""PPO: GAE and the clipped loss against slow references, action heads against scipy, the
LSTM carry reset, checkpoints, a vmapped seeds x hyperparameters run, and short learning runs
(slow) that must beat the tasks' naive baselines."""

import pickle
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from qsmgym.agents import distributions as dist
from qsmgym.agents import ppo
from qsmgym.agents.distributions import PolicySpec
from qsmgym.agents.networks import ActorCritic, initial_carry
from qsmgym.envs import KickedTopSensor
from qsmgym.envs.registry import make_task

# float32 policy arithmetic: relative round-off ~1e-7 per op; 1e-5 covers short chains of ops.
F32_RTOL = 1e-5


# ------------------------------------------------------------------------------------- GAE
def _reference_gae(rewards, values, last_value, final_values, terminated, done, gamma, lam):
    """Slow loop over envs and time, written from the definitions."""
    T, B = rewards.shape
    adv = np.zeros((T, B))
    for b in range(B):
        next_adv = 0.0
        for t in reversed(range(T)):
            if terminated[t, b]:
                bootstrap = 0.0
            elif done[t, b]:  # truncated: the value of the finished episode's last observation
                bootstrap = final_values[t, b]
            elif t == T - 1:
                bootstrap = last_value[b]
            else:
                bootstrap = values[t + 1, b]
            delta = rewards[t, b] + gamma * bootstrap - values[t, b]
            if done[t, b]:
                next_adv = 0.0
            adv[t, b] = delta + gamma * lam * next_adv
            next_adv = adv[t, b]
    return adv


def test_gae_matches_reference_loop_with_truncation_and_termination():
    rng = np.random.default_rng(0)
    T, B, gamma, lam = 9, 3, 0.97, 0.9
    rewards = rng.normal(size=(T, B))
    values = rng.normal(size=(T, B))
    last_value = rng.normal(size=B)
    final_values = np.full((T, B), 100.0)  # distinctive: must appear only where truncated
    terminated = np.zeros((T, B), bool)
    truncated = np.zeros((T, B), bool)
    terminated[3, 0] = True
    truncated[6, 0] = True  # both kinds of end in one env and one batch
    truncated[2, 1] = True
    terminated[8, 2] = True  # termination on the last step: no bootstrap from last_value
    done = terminated | truncated
    next_values = ppo.bootstrap_values(jnp.asarray(values), jnp.asarray(last_value),
                                       jnp.asarray(final_values), jnp.asarray(terminated), jnp.asarray(done))
    adv, returns = ppo.gae(jnp.asarray(rewards), jnp.asarray(values), next_values, jnp.asarray(terminated),
                           jnp.asarray(done), gamma, lam)
    expected = _reference_gae(rewards, values, last_value, final_values, terminated, done, gamma, lam)
    # float64 in and out: agreement to round-off of ~T operations
    np.testing.assert_allclose(np.asarray(adv), expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(np.asarray(returns), expected + values, rtol=1e-12, atol=1e-12)
    # truncation bootstraps from V(final_obs), termination from nothing; no carry across ends
    np.testing.assert_allclose(float(adv[6, 0]), rewards[6, 0] + gamma * 100.0 - values[6, 0], rtol=1e-12)
    np.testing.assert_allclose(float(adv[3, 0]), rewards[3, 0] - values[3, 0], rtol=1e-12)
    np.testing.assert_allclose(float(adv[8, 2]), rewards[8, 2] - values[8, 2], rtol=1e-12)
    assert float(next_values[5, 1]) == values[6, 1]  # inside an episode: V(obs_{t+1})


# -------------------------------------------------------------------------------- PPO loss
def test_ppo_loss_matches_hand_computation():
    logp = np.array([0.0, np.log(1.5), np.log(0.5), np.log(1.1)])
    old = np.zeros(4)
    adv = np.array([1.0, 2.0, -1.0, -3.0])
    v = np.array([0.5, 1.0, 0.0, 2.0])
    v_old = np.array([0.4, 0.5, 0.1, 2.0])
    ret = np.array([1.0, 0.0, 0.3, 1.5])
    ent = np.array([1.0, 0.8, 1.2, 1.0])
    eps, vf, ec = 0.2, 0.5, 0.01
    # ratios 1, 1.5, 0.5, 1.1. Policy terms min(rA, clip(r)A): 1; min(3, 2.4) = 2.4 (clipped);
    # min(-0.5, -0.8) = -0.8 (clipped from below, pessimistic); min(-3.3, -3.3) = -3.3.
    policy = -(1.0 + 2.4 - 0.8 - 3.3) / 4
    # value: V_clip = (0.5, 0.7, 0.0, 2.0); squared errors max((V-R)^2, (Vc-R)^2):
    # max(0.25, 0.25), max(1, 0.49), max(0.09, 0.09), max(0.25, 0.25)
    value = 0.5 * (0.25 + 1.0 + 0.09 + 0.25) / 4
    entropy = (1.0 + 0.8 + 1.2 + 1.0) / 4
    total, aux = ppo.ppo_loss(*(jnp.asarray(x) for x in (logp, old, adv, v, v_old, ret, ent)), eps, vf, ec)
    np.testing.assert_allclose(float(aux["policy_loss"]), policy, rtol=1e-12)
    np.testing.assert_allclose(float(aux["value_loss"]), value, rtol=1e-12)
    np.testing.assert_allclose(float(aux["entropy"]), entropy, rtol=1e-12)
    np.testing.assert_allclose(float(total), policy + vf * value - ec * entropy, rtol=1e-12)
    np.testing.assert_allclose(float(aux["clip_fraction"]), 0.5, rtol=1e-12)  # 1.5 and 0.5
    kl = np.mean([0.0, 0.5 - np.log(1.5), -0.5 - np.log(0.5), 0.1 - np.log(1.1)])
    np.testing.assert_allclose(float(aux["approx_kl"]), kl, rtol=1e-12)
    # without value clipping: plain 0.5 * mean squared error
    _, aux = ppo.ppo_loss(*(jnp.asarray(x) for x in (logp, old, adv, v, v_old, ret, ent)), eps, vf, ec,
                          clip_value_loss=False)
    np.testing.assert_allclose(float(aux["value_loss"]), 0.5 * np.mean((v - ret) ** 2), rtol=1e-12)


def test_running_mean_std_matches_numpy():
    rng = np.random.default_rng(2)
    batches = [rng.normal(3.0, 2.0, size=(n, 4)) for n in (5, 1, 17)]
    rms = ppo.RunningMeanStd.create((4,))
    for x in batches:
        rms = rms.update(jnp.asarray(x))
    allx = np.concatenate(batches)
    # the 1e-4 pseudo-count biases by ~1e-4/n relative; float32 sums add ~1e-6
    np.testing.assert_allclose(np.asarray(rms.mean), allx.mean(0), rtol=1e-4)
    np.testing.assert_allclose(np.asarray(rms.var), allx.var(0), rtol=1e-4)


# --------------------------------------------------------------------------- action heads
BOX = PolicySpec(obs_dim=3, kind="box", action_dim=2, action_shape=(2,), low=(-2.0, 0.0), high=(1.0, 3.0))
CAT = PolicySpec(obs_dim=3, kind="discrete", action_dim=4, start=1)
BERN = PolicySpec(obs_dim=3, kind="multibinary", action_dim=3, action_shape=(3,))


def test_gaussian_head_log_prob_entropy_and_bounds():
    mean = jnp.asarray([[0.3, -0.2], [2.0, -3.0]], jnp.float32)
    log_std = jnp.asarray([[0.1, -0.5], [0.1, -0.5]], jnp.float32)
    raw = jnp.asarray([[0.0, 0.5], [1.5, -2.0]], jnp.float32)
    mask = jnp.ones((2, 2), bool)
    lp = dist.log_prob(BOX, (mean, log_std), raw, mask)
    ref = stats.norm.logpdf(np.asarray(raw), np.asarray(mean), np.exp(np.asarray(log_std))).sum(-1)
    np.testing.assert_allclose(np.asarray(lp), ref, rtol=F32_RTOL)
    ent = dist.entropy(BOX, (mean, log_std), mask)
    np.testing.assert_allclose(np.asarray(ent), stats.norm(0, np.exp([0.1, -0.5])).entropy().sum(), rtol=F32_RTOL)
    # wide distribution: many raw draws beyond +-1, every env action inside the bounds
    wide = (jnp.zeros((1000, 2)), jnp.full((1000, 2), 1.0))
    draws = dist.sample(BOX, jax.random.PRNGKey(0), wide, jnp.ones((1000, 2), bool))
    assert float(jnp.abs(draws).max()) > 1.5
    actions = np.asarray(jax.vmap(lambda r: dist.to_env_action(BOX, r))(draws))
    assert np.all(actions >= np.array(BOX.low, np.float32)) and np.all(actions <= np.array(BOX.high, np.float32))
    assert actions.min(0)[0] == -2.0 and actions.max(0)[1] == 3.0  # clipped onto the bounds
    # deterministic action: clip(mean) mapped to the bounds
    np.testing.assert_allclose(np.asarray(dist.to_env_action(BOX, dist.mode(BOX, (mean, log_std), mask)[1])),
                               [1.0, 0.0])


def test_categorical_head_with_mask_matches_numpy():
    logits = jnp.asarray([[0.5, -1.0, 2.0, 0.0]], jnp.float32)
    mask = jnp.asarray([[True, True, False, True]])
    p = np.exp([0.5, -1.0, 0.0])
    p = p / p.sum()  # softmax over the valid actions 0, 1, 3
    for a, pa in zip((0, 1, 3), p):
        lp = dist.log_prob(CAT, logits, jnp.asarray([a]), mask)
        np.testing.assert_allclose(float(lp[0]), np.log(pa), rtol=F32_RTOL)
    np.testing.assert_allclose(float(dist.entropy(CAT, logits, mask)[0]), stats.entropy(p), rtol=F32_RTOL)
    assert int(dist.mode(CAT, logits, mask)[0]) == 0  # argmax among valid (2 is masked)
    draws = dist.sample(CAT, jax.random.PRNGKey(1), jnp.broadcast_to(logits, (4000, 4)),
                        jnp.broadcast_to(mask, (4000, 4)))
    counts = np.bincount(np.asarray(draws), minlength=4) / 4000
    assert counts[2] == 0.0
    # binomial sampling error: std <= sqrt(0.25 / 4000) = 0.008; 5 sigma
    np.testing.assert_allclose(counts[[0, 1, 3]], p, atol=0.04)
    assert int(dist.to_env_action(CAT, jnp.asarray(0))) == 1  # space.start offset


def test_bernoulli_head_with_mask_matches_scipy():
    logits = jnp.asarray([[0.4, -1.2, 2.0]], jnp.float32)
    mask = jnp.asarray([[True, False, True]])
    a = np.array([[1, 0, 0]])
    p = 1 / (1 + np.exp(-np.asarray(logits[0], np.float64)))
    lp = dist.log_prob(BERN, logits, jnp.asarray(a), mask)
    ref = stats.bernoulli.logpmf(1, p[0]) + stats.bernoulli.logpmf(0, p[2])  # flag 1 masked out
    np.testing.assert_allclose(float(lp[0]), ref, rtol=F32_RTOL)
    ent = dist.entropy(BERN, logits, mask)
    np.testing.assert_allclose(float(ent[0]), stats.bernoulli(p[0]).entropy() + stats.bernoulli(p[2]).entropy(),
                               rtol=F32_RTOL)
    full = dist.log_prob(BERN, logits, jnp.asarray(a), jnp.ones((1, 3), bool))
    np.testing.assert_allclose(float(full[0]), ref + stats.bernoulli.logpmf(0, p[1]), rtol=F32_RTOL)
    draws = np.asarray(dist.sample(BERN, jax.random.PRNGKey(2), jnp.broadcast_to(logits, (4000, 3)), mask))
    assert set(np.unique(draws)) <= {0, 1}
    np.testing.assert_allclose(draws.mean(0), p, atol=0.04)  # 5 sigma of 4000 Bernoulli draws


# ------------------------------------------------------------------------------------ LSTM
def test_lstm_carry_resets_at_episode_start():
    net = ActorCritic(spec=BOX, network="lstm", hidden_sizes=(16, 16), lstm_size=8)
    B = 3
    obs = jax.random.normal(jax.random.PRNGKey(0), (2, B, 3))
    variables = net.init(jax.random.PRNGKey(1), initial_carry("lstm", 8, B), obs, jnp.zeros((2, B), bool))
    warm = tuple(jax.random.normal(k, (B, 8)) for k in jax.random.split(jax.random.PRNGKey(2)))
    resets = jnp.asarray([[False] * B, [True, False, True]])
    apply = jax.jit(net.apply)
    _, (mean, _), value = apply(variables, warm, obs, resets)
    fresh_carry, (fresh_mean, _), fresh_value = apply(variables, initial_carry("lstm", 8, B), obs[1:],
                                                          jnp.zeros((1, B), bool))
    for b in (0, 2):  # reset: identical to a fresh carry (same ops, float32 round-off at most)
        np.testing.assert_allclose(np.asarray(mean[1, b]), np.asarray(fresh_mean[0, b]), rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(float(value[1, b]), float(fresh_value[0, b]), rtol=1e-6, atol=1e-7)
    # env 1 did not reset: its memory of step 0 changes the output
    assert abs(float(value[1, 1]) - float(fresh_value[0, 1])) > 1e-4


# ----------------------------------------------------------------------- config, checkpoints
def test_config_validation():
    with pytest.raises(ValueError, match="network must be one of"):
        ppo.PPOConfig(network="gru")
    with pytest.raises(ValueError, match="num_minibatches must divide num_envs"):
        ppo.PPOConfig(network="lstm", num_envs=6, num_minibatches=4)
    with pytest.raises(ValueError, match="total_timesteps"):
        ppo.PPOConfig(num_envs=4, num_steps=8, total_timesteps=16)
    with pytest.raises(ValueError, match="hyper must be a dict with keys"):
        ppo.make_train(ppo.PPOConfig(num_envs=2, num_steps=4, total_timesteps=8, num_minibatches=1),
                       KickedTopSensor(j=1, n_periods=2), KickedTopSensor(j=1, n_periods=2).default_params()
                       )(jax.random.PRNGKey(0), {"learning_rate": 1e-3})


def _tiny_task():
    return KickedTopSensor(j=1, n_periods=4)


def test_checkpoint_round_trip_and_pickle_refused(tmp_path):
    task = _tiny_task()
    params = task.default_params()
    cfg = ppo.PPOConfig(network="lstm", hidden_sizes=(16, 8), lstm_size=8, num_envs=4, num_steps=4,
                        total_timesteps=16, num_minibatches=2)
    spec = PolicySpec.from_task(task, params)
    net = ppo.make_network(cfg, spec)
    variables = net.init(jax.random.PRNGKey(3), initial_carry("lstm", 8, 1), jnp.zeros((1, 1, spec.obs_dim)),
                         jnp.zeros((1, 1), bool))
    rms = ppo.RunningMeanStd.create((spec.obs_dim,)).update(jax.random.normal(jax.random.PRNGKey(4), (7, spec.obs_dim)))
    path = ppo.save_checkpoint(tmp_path / "policy.msgpack", variables, cfg, spec, rms)
    loaded = ppo.load_checkpoint(path)
    assert loaded.config == cfg and loaded.spec == spec
    for a, b in zip(jax.tree_util.tree_leaves(variables), jax.tree_util.tree_leaves(loaded.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_array_equal(np.asarray(loaded.obs_rms.var), np.asarray(rms.var))
    key = jax.random.PRNGKey(9)
    r1 = ppo.evaluate(task, params, variables, cfg, key, 3, obs_rms=rms)
    evaluate = jax.jit(lambda p, rms, k: ppo.evaluate(task, params, p, loaded.config, k, 3, obs_rms=rms))
    r2 = evaluate(loaded.params, loaded.obs_rms, key)  # jittable, closing over the static arguments
    np.testing.assert_array_equal(np.asarray(r1), np.asarray(r2))

    bad = tmp_path / "evil.msgpack"
    bad.write_bytes(pickle.dumps({"params": np.zeros(3)}))
    (tmp_path / "evil.msgpack.json").write_text((tmp_path / "policy.msgpack.json").read_text())
    with pytest.raises(ValueError, match="pickle"):
        ppo.load_checkpoint(bad)
    bad.write_bytes(b"\xc1 not msgpack at all")
    with pytest.raises(ValueError, match="not a flax msgpack checkpoint"):
        ppo.load_checkpoint(bad)
    other = ppo.PPOConfig(network="mlp", num_envs=4, num_steps=4, total_timesteps=16, num_minibatches=2)
    ppo.save_checkpoint(tmp_path / "mlp.msgpack", variables, other, spec)  # LSTM weights, MLP config
    with pytest.raises(ValueError, match="do not match"):
        ppo.load_checkpoint(tmp_path / "mlp.msgpack")


# ----------------------------------------------------------------------------- train loops
def test_vmap_over_seeds_and_hypers():
    task = _tiny_task()
    cfg = ppo.PPOConfig(num_envs=4, num_steps=8, total_timesteps=4 * 8 * 3, num_minibatches=2, update_epochs=2,
                        hidden_sizes=(16, 16))
    hyper = dict(ppo.default_hyper())
    hyper["learning_rate"] = jnp.asarray([1e-3, 3e-3])
    hyper["max_grad_norm"] = jnp.asarray([0.5, 1e-3])  # traced clipping limit, per hyper lane
    for k in ("gamma", "gae_lambda", "clip_eps", "ent_coef", "vf_coef"):
        hyper[k] = jnp.stack([hyper[k], hyper[k]])
    train = jax.jit(jax.vmap(jax.vmap(ppo.make_train(cfg, task, task.default_params()), in_axes=(None, 0)),
                             in_axes=(0, None)))
    res = train(jax.random.split(jax.random.PRNGKey(0), 3), hyper)
    assert res.metrics["episode_return"].shape == (3, 2, cfg.num_updates)
    assert np.all(np.isfinite(np.asarray(res.metrics["loss"])))
    assert np.all(np.asarray(res.metrics["episodes"]) == 4 * 8 // 4)  # 4-step episodes
    kernel = np.asarray(res.params["params"]["Dense_0"]["kernel"])  # actor output layer
    assert kernel.shape[:2] == (3, 2)
    assert not np.allclose(kernel[0, 0], kernel[1, 0])  # seeds differ
    assert not np.allclose(kernel[0, 0], kernel[0, 1])  # hypers differ


def test_multibinary_lstm_with_mask_and_reward_scaling_runs():
    task = make_task("qsm/MemoryCutoff-v0", horizon=12)
    params = task.default_params()
    cfg = ppo.PPOConfig(network="lstm", num_envs=4, num_steps=8, total_timesteps=4 * 8 * 3, num_minibatches=2,
                        update_epochs=1, hidden_sizes=(16, 16), lstm_size=8, normalize_reward=True)
    res = jax.jit(ppo.make_train(cfg, task, params))(jax.random.PRNGKey(0), ppo.default_hyper())
    eps = np.asarray(res.metrics["episodes"])
    np.testing.assert_array_equal(eps, [0, 4, 4])  # truncations at slots 12 and 24 (updates 2, 3)
    assert np.all(np.isfinite(np.asarray(res.metrics["loss"])))
    assert np.isnan(np.asarray(res.metrics["episode_return"])[0])  # no finished episode yet
    returns = ppo.evaluate(task, params, res.params, cfg, jax.random.PRNGKey(5), 3, obs_rms=res.obs_rms)
    assert returns.shape == (3,) and np.all(np.asarray(returns) >= 0.0)


# ---------------------------------------------------------------------- learning runs (slow)
LEARNING = {
    # task, config overrides, hyper overrides; budgets from runs on a 2-core CPU (see report)
    "time_dependent": (lambda: make_task("qsm/TimeDependentEstimation-v0", n_bins=10, total_time=3.0),
                       dict(num_envs=16, num_steps=40, total_timesteps=64_000),
                       dict(learning_rate=1e-3, gamma=1.0, ent_coef=0.0)),
    "kicked_top": (lambda: make_task("qsm/KickedTopSensor-v0", j=2, n_periods=8),
                   dict(num_envs=16, num_steps=32, total_timesteps=32_768),
                   dict(learning_rate=1e-3, gamma=1.0)),
}


@pytest.mark.slow
@pytest.mark.parametrize("network", ["mlp", "lstm"])
@pytest.mark.parametrize("name", sorted(LEARNING))
def test_ppo_learning_run_beats_naive_baseline(name, network):
    make, cfg_kw, hyper_kw = LEARNING[name]
    task = make()
    params = task.default_params()
    ref = task.references(params)
    cfg = ppo.PPOConfig(network=network, **cfg_kw)
    hyper = dict(ppo.default_hyper(), **{k: jnp.asarray(v) for k, v in hyper_kw.items()})
    start = time.perf_counter()
    res = ppo.train_ppo(task, params, cfg, seed=0, hyper=hyper)
    returns = np.asarray(ppo.evaluate(task, params, res.params, cfg, jax.random.PRNGKey(1234), 8,
                                      obs_rms=res.obs_rms))
    curve = res.metrics["episode_return"]
    print(f"{name}/{network}: eval {returns.mean():.4f} naive {ref['naive_baseline']:.4f} "
          f"limit {ref['physical_limit']:.4f} first {curve[0]:.4f} last {curve[-1]:.4f} "
          f"steps {cfg.num_updates * cfg.num_envs * cfg.num_steps} time {time.perf_counter() - start:.1f}s")
    # "well above" the naive baseline: at least a quarter of the way from it to the limit
    target = ref["naive_baseline"] + 0.25 * (ref["physical_limit"] - ref["naive_baseline"])
    assert returns.mean() > target
    assert curve[-1] > curve[0]
