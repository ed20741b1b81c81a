"""The built-in worlds: ``sprites`` (one prompted sprite) and ``memory`` (scenes that come back).

Importing the package registers each world's weight folder on the weights search path
(``toolkit.models.weights``).
"""

from toolkit.worlds import memory, sprites

__all__ = ["memory", "sprites"]
