"""The qsm-gym leaderboard: data-only submissions, hidden-seed re-scoring, a static site.

- ``schema.json``: the submission format (JSON Schema, ``additionalProperties: false``).
- ``submission``: strict validation and loading (never pickle, eval or import submitted code).
- ``scorer``: re-evaluation on HMAC-derived hidden seeds, normalised scores, IQM with
  bootstrap CIs, flags for claims that disagree with the re-evaluation.
- ``site``: the static HTML/CSS + PNG site. ``baselines``: the checked-in baseline entries.
- ``cli``: ``qsm leaderboard {validate,score,build}``.
- ``submissions/``: the baseline entries (package data).
"""
