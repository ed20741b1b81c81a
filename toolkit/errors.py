"""Errors every room may raise, defined on the ground floor so that none imports another for them.

A ``ConfigError`` is the user's to fix: the command line prints its one line (naming the value
and what is allowed) and exits with status 2, before any work where it can.
"""


class ConfigError(ValueError):
    """A config value that cannot work, named with what is allowed."""
