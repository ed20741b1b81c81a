"""rollbench's harness: the core (strategy contract, rollout), runs, benches, models, worlds.

Importing the package installs the finder of old module paths (``toolkit.compat``).
"""

from toolkit import compat

compat.install()
