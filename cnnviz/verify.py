"""``python -m cnnviz.verify RUN_OR_SWEEP_DIR [--atol 0]``: see ``cnnviz.app.verify``."""
import sys

from .app.verify import main

if __name__ == "__main__":
    sys.exit(main())
