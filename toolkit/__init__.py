"""rollbench's harness, one room per folder: ``core`` (the strategy contract and the rollout),
``metrics``, ``runs`` (configs, jobs, grids, sweeps, tracking), ``findings``, ``bench``,
``models``, and the ``worlds`` wing of plug-in worlds (``toolkit.plugins``).

Importing the package installs the finder of old module paths (``toolkit.compat``).
"""

from toolkit import compat

compat.install()
