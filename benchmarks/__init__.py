"""cnnviz next to captum, pytorch-grad-cam and torchcam, timed side by side in one run.

``python -m benchmarks [--quick]`` (extra ``[bench]``). ``settings`` says what runs, ``harness`` times it,
``peers`` adapts each peer library, ``suites`` chooses the comparisons per model, ``report`` prints the
table, the agreement lines and the targets, whose limits are data in ``thresholds``. The measured
results are in docs/performance.md. The agreement checks also run as tests (tests/test_peers.py).
This package is not part of the installed library: it imports cnnviz, never the other way."""
