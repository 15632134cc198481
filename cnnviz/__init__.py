"""cnnviz: configuration-driven CNN visualization experiments."""
from .attribution import Attribution
from .errors import ConfigError
from .registry import get_method, list_methods, register
from .explain import explain  # noqa: E402  (binds cnnviz.explain to the function, after the submodule loads)

__all__ = ["Attribution", "ConfigError", "explain", "get_method", "list_methods", "register"]
__version__ = "0.1.0"
