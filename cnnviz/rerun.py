"""``python -m cnnviz.rerun RUN_DIR [--out NEW_DIR] [key=value ...]``: see ``cnnviz.app.rerun``."""
from .app.rerun import command, main  # noqa: F401  (main: the same entry point for callers in Python)

if __name__ == "__main__":
    command()
