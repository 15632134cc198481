"""Merge the job manifests of a sweep folder: `python scripts/merge_manifest.py SWEEP_DIR`.

Writes SWEEP_DIR/manifest.csv, index.html and contact_sheet.png (Hydra's end-of-multirun callback
does the same, but is not called when a job failed or the sweep was interrupted)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from cnnviz.app.sweep import merge  # noqa: E402

if __name__ == "__main__":
    if len(sys.argv) != 2 or not Path(sys.argv[1]).is_dir():
        sys.exit("usage: python scripts/merge_manifest.py SWEEP_DIR")
    frame = merge(Path(sys.argv[1]))
    print(f"{len(frame)} rows from {frame['job'].nunique() if len(frame) else 0} job(s) -> {Path(sys.argv[1]) / 'manifest.csv'}")
