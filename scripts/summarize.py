"""Rank methods × layers by their per-map metrics: `python scripts/summarize.py SWEEP_OR_RUN_DIR`.

Reads DIR/manifest.csv (for a sweep whose root manifest is missing, merges the job manifests first,
as scripts/merge_manifest.py does), writes DIR/summary.csv and DIR/summary.png and prints the table.
The multirun callback and every run with metrics do the same."""
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from cnnviz.output.summary import printable, write_summary  # noqa: E402
from cnnviz.app.sweep import job_manifests, merge  # noqa: E402

if __name__ == "__main__":
    if len(sys.argv) != 2 or not Path(sys.argv[1]).is_dir():
        sys.exit("usage: python scripts/summarize.py SWEEP_OR_RUN_DIR")
    folder = Path(sys.argv[1])
    if (folder / "manifest.csv").is_file():
        frame = pd.read_csv(folder / "manifest.csv")
    elif job_manifests(folder):
        frame = merge(folder)
    else:
        sys.exit(f"{folder} holds no manifest.csv")
    table = write_summary(folder, frame)
    pd.set_option("display.width", 250)
    print(printable(table))
    if not table.empty:
        print(f"-> {folder / 'summary.csv'}, {folder / 'summary.png'}")
    else:
        sys.exit(1)
