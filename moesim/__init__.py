"""moesim: a cluster simulator for communication-efficient Mixture-of-Experts (CDAC vs BigMac DCCA).

The simulator core (this package) never imports torch; the PyTorch backend lives in ``real_backend``.
"""
from moesim.errors import MoesimError, ConfigError, InputFileError

__version__ = "0.1.0"

__all__ = ["MoesimError", "ConfigError", "InputFileError", "__version__"]
