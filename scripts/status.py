"""Count done / failed / pending items of a run or sweep folder, running or interrupted:
`python scripts/status.py SWEEP_DIR`."""
import json
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cnnviz.app.sweep import planned_jobs  # noqa: E402


def main(folder: Path) -> None:
    jobs = sorted({p.parent for p in folder.rglob("progress.json")} | {p.parent for p in folder.rglob("job_error.json")})
    totals = {"done": 0, "failed": 0, "pending": 0}
    print(f"{'job':<70}{'done':>6}{'failed':>8}{'pending':>9}")
    for job in jobs:
        if not (job / "progress.json").is_file():  # stopped before computing (a configuration error)
            totals["failed"] += 1
            error = json.loads((job / "job_error.json").read_text())["error"]
            print(f"{str(job.relative_to(folder)) or '.':<70}{0:>6}{1:>8}{0:>9}  {error}")
            continue
        planned = json.loads((job / "progress.json").read_text())["planned_rows"]
        rows = pd.read_csv(job / "manifest.csv") if (job / "manifest.csv").is_file() else pd.DataFrame({"status": []})
        done, failed = int((rows.status == "ok").sum()), int((rows.status == "error").sum())
        pending = max(planned - done - failed, 0)
        for k, v in zip(totals, (done, failed, pending)):
            totals[k] += v
        print(f"{str(job.relative_to(folder)) or '.':<70}{done:>6}{failed:>8}{pending:>9}")
    expected = planned_jobs(folder)
    not_started = max((expected or len(jobs)) - len(jobs), 0)
    print(f"total: {totals['done']} done, {totals['failed']} failed, {totals['pending']} pending"
          f"; {len(jobs)} job(s) started" + (f", {not_started} not started" if not_started else ""))


if __name__ == "__main__":
    if len(sys.argv) != 2 or not Path(sys.argv[1]).is_dir():
        sys.exit("usage: python scripts/status.py RUN_OR_SWEEP_DIR")
    main(Path(sys.argv[1]))
