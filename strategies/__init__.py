"""Built-in cache strategies, one module each; importing the package registers them."""

from strategies.deepsink import DeepSink
from strategies.fade import Fade
from strategies.full import Full
from strategies.packforcing import PackForcing  # noqa: F401  (registers "packforcing")
from strategies.rolling_anchor import RollingAnchor
from strategies.sink import Sink
from strategies.window import Window

__all__ = ["DeepSink", "Fade", "Full", "RollingAnchor", "Sink", "Window"]
