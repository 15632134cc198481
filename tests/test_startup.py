"""Fast start: composing and checking a configuration needs no torch. ``python run.py --cfg job``,
``--help`` and a mistyped method name answer without importing torch, torchvision, timm, pandas or
any technique (the heavy imports happen when work starts). Checked on ``sys.modules`` in a
subprocess, never on a clock (the measured times are in docs/performance.md)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "torchvision", "timm", "pandas", "cnnviz.methods.base", "cnnviz.engine", "cnnviz.api")

# run.py as the command line runs it, reporting at exit which heavy modules were imported
WRAPPER = r"""
import atexit, json, runpy, sys
heavy = {heavy!r}
def report():
    print("IMPORTED " + json.dumps(sorted(m for m in sys.modules if m in heavy or m.startswith("cnnviz.methods."))))
atexit.register(report)
sys.argv = ["run.py", *{args!r}]
runpy.run_path("run.py", run_name="__main__")
"""


def imported(*args: str, tmp_path: Path) -> tuple[list[str], subprocess.CompletedProcess]:
    code = WRAPPER.format(heavy=HEAVY, args=[f"hydra.run.dir={tmp_path}", *args])
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "HYDRA_FULL_ERROR": "0"})
    line = [s for s in out.stdout.splitlines() if s.startswith("IMPORTED ")]
    assert line, out.stdout[-2000:] + out.stderr[-2000:]
    return json.loads(line[-1][len("IMPORTED "):]), out


@pytest.mark.parametrize("args", [["--cfg", "job"], ["--help"], ["method=gradcam", "model=vgg19", "--cfg", "job"]])
def test_showing_the_configuration_imports_no_torch(args, tmp_path):
    heavy, out = imported(*args, tmp_path=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert heavy == [], f"{' '.join(args)} imported {heavy}"


def test_a_mistyped_method_is_answered_without_torch(tmp_path):
    heavy, out = imported("method=gradcm", tmp_path=tmp_path)
    assert out.returncode == 2
    assert "close matches: gradcam" in out.stderr
    assert heavy == [], f"the configuration error imported {heavy}"


def test_the_package_and_its_method_list_import_no_technique():
    code = ("import sys, cnnviz; names = cnnviz.list_methods(); "
            "print(len(names), sorted(m for m in sys.modules if m.startswith(('torch', 'cnnviz.methods.'))))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    count, rest = out.stdout.strip().split(" ", 1)
    assert int(count) > 20 and rest == "[]"


def test_get_method_imports_one_technique():
    code = ("import sys, cnnviz; cls = cnnviz.get_method('gradcam'); "
            "print(cls.__name__, sorted(m for m in sys.modules if m.startswith('cnnviz.methods.') "
            "and not m.rpartition('.')[2].startswith('_') and m.rpartition('.')[2] not in ('base', 'optimization')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "GradCAM ['cnnviz.methods.gradcam']"
