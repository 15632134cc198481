"""``python -m cnnviz.rerun RUN_DIR [--out NEW_DIR] [key=value ...]``: see ``cnnviz.app.rerun``."""
from .app.rerun import command

if __name__ == "__main__":
    command()
