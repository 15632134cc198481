"""cnnviz: configuration-driven CNN visualization experiments."""
from .attribution import Attribution
from .errors import ConfigError
from .registry import get_method, list_methods, register

__all__ = ["Attribution", "ConfigError", "get_method", "list_methods", "register"]
__version__ = "0.1.0"
