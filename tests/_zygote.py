"""A process that has imported run.py's dependencies once and forks a copy of itself per ``run_cli`` call.

Why: every end-to-end test starts ``python run.py``, and most of such a start is importing torch,
torchvision, timm, Hydra, pandas and matplotlib (seconds each time), the same for every test. A forked
copy of a process that imported them, and did nothing else, starts at once and is otherwise the process
a user starts: its own pid and process group, the test's environment, working directory, arguments and
stdin from /dev/null; run.py executed as ``__main__``; exit status, stdout and stderr returned as before.
Not imported by cnnviz. ``CNNVIZ_TEST_FORK=0`` makes ``run_cli`` start real interpreters instead.

Protocol (one JSON line each way, over the zygote's stdin / stdout): request ``{"argv"`` (the command
line, interpreter first), ``"cwd", "env",
"out", "err"}``; replies ``{"pid": n}`` when the copy runs, then ``{"rc": n}`` when it ended (negative: a
signal, as ``subprocess`` reports it).
"""
from __future__ import annotations

import json
import os
import sys


def warm() -> None:
    """Import what run.py imports, computing nothing: no torch operation runs here, so no thread pool
    exists to be copied half-alive into a fork."""
    import matplotlib  # noqa: F401
    import numpy  # noqa: F401
    import pandas  # noqa: F401
    import PIL.Image  # noqa: F401
    import scipy.stats  # noqa: F401
    import skimage  # noqa: F401
    import timm  # noqa: F401
    import torch  # noqa: F401
    import torchvision  # noqa: F401
    import hydra  # noqa: F401
    import cnnviz.app.cli  # noqa: F401
    import cnnviz.app.plan  # noqa: F401
    import cnnviz.app.runner  # noqa: F401
    import cnnviz.app.sweep  # noqa: F401
    import cnnviz.models.loaders  # noqa: F401


def child(request: dict, channel: tuple[int, int]) -> None:
    """In the fork: become the run.py process of ``request`` and never return."""
    code = 1
    try:
        for fd in channel:
            os.close(fd)
        os.setpgrp()  # a timeout kills the run and whatever it started
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        null = os.open(os.devnull, os.O_RDONLY)
        out = os.open(request["out"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        err = os.open(request["err"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        for src, dst in ((null, 0), (out, 1), (err, 2)):
            os.dup2(src, dst)
            os.close(src)
        sys.stdout = open(1, "w", buffering=1, closefd=False)
        sys.stderr = open(2, "w", buffering=1, closefd=False)
        sys.stdin = open(0, "r", closefd=False)
        threads = os.environ.get("OMP_NUM_THREADS")
        if threads:  # OpenMP read the variable when torch was imported here; a fresh process would honour it
            import torch

            torch.set_num_threads(int(threads))
        import runpy

        sys.argv = list(request["argv"][1:])  # [python, run.py, overrides...] -> what run.py sees
        sys.path[0] = os.path.dirname(os.path.abspath(sys.argv[0]))  # as `python run.py` sets it
        try:
            runpy.run_path(sys.argv[0], run_name="__main__")
            code = 0
        except SystemExit as e:
            if e.code is None or isinstance(e.code, int):
                code = int(e.code or 0)
            else:
                print(e.code, file=sys.stderr)
                code = 1
        except BaseException:  # noqa: BLE001 - printed as the interpreter would, then exit 1
            import traceback

            traceback.print_exc()
            code = 1
        import atexit

        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code)


def main() -> None:
    warm()
    requests = os.fdopen(os.dup(0), "r")
    replies = os.fdopen(os.dup(1), "w", buffering=1)
    channel = (requests.fileno(), replies.fileno())
    for line in requests:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            child(request, channel)
        replies.write(json.dumps({"pid": pid}) + "\n")
        _, status = os.waitpid(pid, 0)
        replies.write(json.dumps({"rc": os.waitstatus_to_exitcode(status)}) + "\n")


if __name__ == "__main__":
    main()
