"""killswitch: an event-driven risk kill switch for the Ajaib Coin Exchange."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("killswitch")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
