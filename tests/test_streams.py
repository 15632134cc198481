"""Parallel streams for the many-batch techniques (``cnnviz.speed.streams``): order, errors, thread counts,
which techniques use them, and that they change no result."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

from cnnviz.speed import fastpath
from cnnviz.speed import streams
from cnnviz.methods import integrated_gradients as ig_module
from cnnviz.methods import get_method

from conftest import TinyCNN, torch_threads


@pytest.fixture(autouse=True)
def _fast_copy():
    """Streams run only on the fast copy: asked for here, as the runner's ``fast_copy: true`` does."""
    with fastpath.using(True):
        yield


@pytest.fixture
def two_threads():
    """Two intra-op threads, and two streams asked for (as conf/model/vgg19.yaml does)."""
    with torch_threads(2), streams.using(2):
        yield


def test_results_come_back_in_order_and_items_are_read_at_most_streams_ahead():
    consumed = []

    def items():
        for i in range(7):
            consumed.append(i)
            yield i

    def slow_square(i):
        time.sleep(0.02 * (i % 3))  # later items often finish first
        return i * i

    seen = []
    for result in streams.in_order(slow_square, items(), 2):
        seen.append((result, len(consumed)))
    assert [r for r, _ in seen] == [i * i for i in range(7)]
    # result k is handed out before item k + 2 is read
    assert all(n <= k + 2 for k, (_, n) in enumerate(seen))


def test_one_stream_runs_in_the_calling_thread():
    names = list(streams.in_order(lambda _: threading.current_thread().name, range(3), 1))
    assert names == [threading.current_thread().name] * 3


def test_an_error_is_raised_in_the_caller_after_every_started_batch_has_finished():
    finished = []

    def work(i):
        if i == 1:
            raise ValueError("batch 1 failed")
        time.sleep(0.2)
        finished.append(i)
        return i

    with pytest.raises(ValueError, match="batch 1 failed"):
        list(streams.in_order(work, range(6), 2))
    done = list(finished)
    time.sleep(0.5)
    assert finished == done  # nothing still running, nothing started after the error was seen
    assert 0 in done and len(done) <= 3


def test_streams_split_the_threads_and_leave_the_callers_count_alone():
    # a count no other test starts streams with: this test starts their threads
    with torch_threads(6):
        inside = list(streams.in_order(lambda _: (threading.current_thread().name, torch.get_num_threads()), range(4), 2))
        assert {name.startswith("cnnviz-stream") for name, _ in inside} == {True}
        assert {n for _, n in inside} == {3}
        assert torch.get_num_threads() == 6
        later = []
        t = threading.Thread(target=lambda: later.append(torch.get_num_threads()))
        t.start()
        t.join()
        assert later == [6]  # a thread started afterwards begins with the caller's count, not the streams'


def test_stream_count_needs_cpu_threads_and_the_fast_copy(two_threads):
    model, x = TinyCNN().eval(), torch.rand(1, 3, 8, 8)
    assert streams.stream_count(model, x) == 2
    with fastpath.exact():
        assert streams.stream_count(model, x) == 1
    torch.set_num_threads(1)
    assert streams.stream_count(model, x) == 1
    torch.set_num_threads(2)
    # never from inside a stream: the pool's threads would wait on themselves
    assert list(streams.in_order(lambda _: streams.stream_count(model, x), range(2), 2)) == [1, 1]


def test_streams_run_only_where_asked_and_at_most_one_per_thread():
    model, x = TinyCNN().eval(), torch.rand(1, 3, 8, 8)
    with torch_threads(2):
        assert streams.stream_count(model, x) == 1  # the library's default: as PyTorch runs it
        with streams.using(3):
            assert streams.stream_count(model, x) == 2
        with streams.using(2):
            assert streams.stream_count(model, x) == 2
        assert streams.stream_count(model, x) == 1  # the block restored the setting
    from cnnviz.speed import Speed

    for bad in (0, -1, True, 1.5, "2"):
        with pytest.raises(ValueError, match="positive integer"):
            streams.check(bad)
        with pytest.raises(ValueError, match="positive integer"):
            Speed(streams=bad)
        with pytest.raises(ValueError, match="positive integer"), streams.using(bad):
            pass


def test_each_stream_sees_the_callers_settings(two_threads):
    """Threads do not inherit context variables: every batch a stream runs gets the caller's context."""
    seen = list(streams.in_order(lambda _: (threading.current_thread().name, fastpath.enabled()), range(4), 2))
    assert all(name.startswith("cnnviz-stream") and on for name, on in seen)
    with fastpath.using(False):
        assert not any(on for _, on in streams.in_order(lambda _: (None, fastpath.enabled()), range(4), 2))


@pytest.mark.parametrize("overrides, wanted", [
    ([], 1),
    (["model=vgg19", "model.weights=null"], 2),
    (["model.streams=2"], 2),
])
def test_model_streams_config_key_sets_the_streams(overrides, wanted):
    from test_config import compose_cfg

    from cnnviz.app.plan import build_plan

    model, x = TinyCNN().eval(), torch.rand(1, 3, 8, 8)
    from cnnviz.speed import applied

    with torch_threads(2), streams.using(1):
        plan = build_plan(compose_cfg([*overrides, "method=integrated_gradients"]))
        assert plan.speed.streams == wanted
        assert streams.stream_count(model, x) == 1  # building the plan sets nothing
        with applied(plan.speed):
            assert streams.stream_count(model, x) == wanted


def test_a_bad_model_streams_value_is_a_config_error_naming_the_key():
    from test_config import compose_cfg

    from cnnviz.core.errors import ConfigError
    from cnnviz.app.plan import build_plan

    with streams.using(1), pytest.raises(ConfigError, match=r"model\.streams must be a positive integer, got 0"):
        build_plan(compose_cfg(["model.streams=0", "method=integrated_gradients"]))


@pytest.mark.parametrize("name, params, concurrent", [
    ("vanilla_backprop", {}, True),
    ("integrated_gradients", {}, True),
    ("grad_times_image", {}, True),
    ("grad_times_image", {"base": "integrated"}, True),
    ("grad_times_image", {"base": "guided"}, False),
    ("guided_backprop", {}, False),
    ("deconvnet", {}, False),
    ("layer_activation_guided", {}, False),
    ("occlusion", {}, False),
])
def test_only_techniques_that_leave_the_model_alone_run_concurrently(name, params, concurrent):
    m = get_method(name)(**params)
    assert m.concurrent() is concurrent


def threads_seen(monkeypatch, module, name: str) -> set[str]:
    seen: set[str] = set()
    real = getattr(module, name)

    def recording(*args, **kwargs):
        seen.add(threading.current_thread().name)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, recording)
    return seen


def run_twice(monkeypatch, call, module, name):
    """The call with one intra-op thread (one stream) and with two (two streams), and the threads
    whose passes ran in each."""
    runs = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        seen = threads_seen(monkeypatch, module, name)
        runs.append((call(), seen))
        monkeypatch.undo()
    return runs


def test_integrated_gradients_in_two_streams_equal_one_stream(monkeypatch, two_threads):
    model, x = TinyCNN().eval(), torch.rand(2, 3, 12, 12, generator=torch.Generator().manual_seed(0))
    ig = get_method("integrated_gradients")(n_steps=9, internal_batch_size=4, baseline="zero")
    (one, one_threads), (two, two_threads_seen) = run_twice(monkeypatch, lambda: ig(model, x, [1, 3]), ig_module, "gradient_pass")
    assert one_threads == {threading.current_thread().name}
    assert two_threads_seen and all(n.startswith("cnnviz-stream") for n in two_threads_seen)
    np.testing.assert_allclose(two.values, one.values, rtol=1e-6, atol=1e-7 * np.abs(one.values).max())
    assert two.metrics["completeness_gap"] == pytest.approx(one.metrics["completeness_gap"], rel=1e-4, abs=1e-7)


@pytest.mark.parametrize("inner, streamed", [("vanilla_backprop", True), ("guided_backprop", False)])
def test_smoothgrad_in_two_streams_equals_one_stream_and_guided_inners_stay_in_one(monkeypatch, two_threads, inner, streamed):
    model, x = TinyCNN().eval(), torch.rand(1, 3, 12, 12, generator=torch.Generator().manual_seed(1))
    sg = get_method("smoothgrad")(inner=inner, n_samples=7, batch_size=4, seed=3, variant="var")
    inner_cls = type(get_method(inner)())
    (one, one_threads), (two, two_threads_seen) = run_twice(monkeypatch, lambda: sg(model, x, 2), inner_cls, "__call__")
    assert one_threads == {threading.current_thread().name}
    if streamed:
        assert two_threads_seen and all(n.startswith("cnnviz-stream") for n in two_threads_seen)
    else:
        assert two_threads_seen == {threading.current_thread().name}
    np.testing.assert_allclose(two.values, one.values, rtol=1e-5, atol=1e-7 * np.abs(one.values).max())
