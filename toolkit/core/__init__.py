"""The core: the strategy contract and the one rollout loop every run goes through.

``spec`` (model sizes), ``model`` (the ``VideoModel`` protocol and its Wan driver), ``attention``
(the swappable processor and its plans), ``rope`` (3D positions), ``sampling`` (per-block
samplers), ``schedule`` (prompt schedules), ``cache`` (the ``CacheStrategy`` base classes),
``contract`` (how the harness talks to a strategy across versions), ``rollout`` (the loop),
``trace`` and ``timing`` (what a rollout records), ``testing`` (the contract suite every
strategy, a user's included, runs through), ``bins`` (the one binning convention of curves and
integer measures; numpy only, so findings and reports import it lightly). Nothing here knows
a world, a run store or a CLI.
"""
