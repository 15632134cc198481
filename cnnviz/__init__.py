"""cnnviz: configuration-driven CNN visualization experiments."""
from .attribution import Attribution
from .errors import ConfigError
from .registry import get_method, list_methods, register


def explain(*args, **kwargs):
    """See ``cnnviz.explain.explain``: one technique on any model and image, with .save() / .show()."""
    from .explain import explain as _explain

    return _explain(*args, **kwargs)


__all__ = ["Attribution", "ConfigError", "explain", "get_method", "list_methods", "register"]
__version__ = "0.1.0"
