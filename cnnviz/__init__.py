"""cnnviz: configuration-driven CNN visualization experiments."""
from .core.attribution import Attribution
from .core.errors import ConfigError
from .core.registry import get_method, list_methods, register
from .api import explain  # noqa: E402  (binds cnnviz.api to the function, after the submodule loads)

__all__ = ["Attribution", "ConfigError", "explain", "get_method", "list_methods", "register"]
__version__ = "0.1.0"
