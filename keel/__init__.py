"""Keel's shared kernel: settings, logging, the error tree, hybrid logical clocks and lifecycles.

Everything here is free of drivers and of the data path's packages, so every layer may import it.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
