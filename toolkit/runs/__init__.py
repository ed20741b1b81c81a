"""Runs: composing a run's config, executing it as a job, and recording what it gave.

``config`` (Hydra composition, strategies and models from config nodes), ``jobs`` (one tracked
rollout), ``grid`` (an experiment's multirun), ``sweep`` (Optuna studies), ``tracking`` (the run
key, the local run record, the MLflow store), ``stores`` (reaching a store fast, never showing a
password), ``aggregate`` (means, intervals and paired tests over stored runs), ``media``
(filmstrips and videos).
"""
