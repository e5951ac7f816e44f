"""The kill engine: resolve, cancel, verify, latch (implements ``EngineAPI``)."""

from killswitch.engine.engine import Engine
from killswitch.engine.sweep import Sweep

__all__ = ["Engine", "Sweep"]
