"""Built-in cache strategies, one module each; importing the package registers them."""

from strategies.full import Full
from strategies.sink import Sink
from strategies.window import Window

__all__ = ["Full", "Sink", "Window"]
