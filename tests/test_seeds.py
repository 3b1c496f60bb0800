"""Several seeds trained together (ladd_format.seeds) give what separate runs give.

The grouped network runs on CUDA only by default (``GROUPED_DEVICES``); the ``grouped``
fixture turns it on for the CPU, where these tests run. Tolerance: the grouped run
reassociates float sums (grouped convolutions, batched head), so per-seed losses must match
separate :func:`train` runs within rtol 1e-5 at every epoch (each epoch one step where stated,
so that is per step) and parameters within atol 1e-5; measured differences are about 2e-7
relative. Seeds run one after another (the CPU default, ``together=False``) must match exactly.
"""

from __future__ import annotations

import os
import shutil
import warnings

import numpy as np
import pytest
import torch

import ladd_format
from ladd_format import seeds as seeds_module
from ladd_format import train as train_module
from ladd_format.errors import InvalidInputError
from ladd_format.loader import DeviceLoader
from ladd_format.models import build_model
from ladd_format.testing import write_example
from ladd_format.train import train, train_seeds

TINY = dict(width=8, epochs=2, batch_size=8, crops_per_image=3, progress=False)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from a second thread, and lose much when another process holds a core."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def grouped(monkeypatch):
    monkeypatch.setattr(seeds_module, "GROUPED_DEVICES", ("cuda", "cpu"))


@pytest.fixture(scope="module")
def gray(tmp_path_factory):
    return write_example(tmp_path_factory.mktemp("seeds") / "g.ladd", size=28, channels=1, ipc=2)


def _assert_close(together, separate, rtol=1e-5, atol=1e-5):
    assert len(together) == len(separate)
    for a, b in zip(together, separate):
        assert a.settings["seed"] == b.settings["seed"]
        np.testing.assert_allclose(a.losses, b.losses, rtol=rtol)
        for (name, pa), (_, pb) in zip(a.model.named_parameters(), b.model.named_parameters()):
            torch.testing.assert_close(pa, pb, rtol=1e-4, atol=atol, msg=name)


def test_each_seed_starts_from_its_single_run_init(gray, monkeypatch, grouped):
    seen = {}

    def capture(models, loaders, plan, **kwargs):
        seen["params"] = seeds_module.stack(models)
        seen["seeds"] = [loader.seed for loader in loaders]
        return [[0.0] * plan.epochs for _ in models]

    monkeypatch.setattr(train_module, "run_seeds", capture)
    train_seeds(gray, seeds=[3, 0, 7], **TINY)
    assert seen["seeds"] == [3, 0, 7]
    for j, seed in enumerate([3, 0, 7]):
        torch.manual_seed(seed)
        single = build_model("convnet", 1, 10, (28, 28), width=8)
        for name, p in single.named_parameters():
            assert torch.equal(seen["params"][name][j], p), name


@pytest.mark.parametrize("mode", ["ladd", "hard", "soft", "crops-only"])
def test_together_equals_separate_runs(gray, mode, grouped):
    seeds = [0, 1, 2] if mode == "ladd" else [2, 0]
    together = train_seeds(gray, seeds=seeds, mode=mode, **TINY)
    assert all(r.settings["together"] for r in together)
    _assert_close(together, [train(gray, seed=s, mode=mode, **TINY) for s in seeds])
    assert together[0].losses != together[1].losses  # the seeds do differ


def test_per_step_losses_match(gray, grouped):
    """One step an epoch (the batch holds every image): each epoch's loss is one step's."""
    kwargs = {**TINY, "epochs": 4, "batch_size": 64}
    _assert_close(train_seeds(gray, seeds=2, **kwargs), [train(gray, seed=s, **kwargs) for s in (0, 1)])


def test_another_architecture(gray, grouped):
    kwargs = dict(model="alexnet", mode="hard", epochs=1, batch_size=10, progress=False)
    together = train_seeds(gray, seeds=2, **kwargs)
    assert together[0].settings["together"]
    _assert_close(together, [train(gray, seed=s, **kwargs) for s in (0, 1)])


@pytest.mark.parametrize("name", ["vgg11", "resnet18", "convnet", "alexnet"])
def test_grouped_step_equals_each_model(name):
    """Forward and gradients of S models run as one grouped network, against each model alone, in
    float64: the grouping must be exact maths (float32 only adds reassociation, tested above)."""
    models = []
    for seed in range(2):
        torch.manual_seed(seed)
        models.append(build_model(name, 3, 10, 32).double())
    assert seeds_module.groupable(models[0])
    params = seeds_module.stack(models)
    x = torch.randn(2, 2, 3, 32, 32, dtype=torch.float64)
    logits = seeds_module.grouped_forward(models[0])(params, x)
    logits.square().sum().backward()
    for j, model in enumerate(models):
        own = model(x[:, j])
        torch.testing.assert_close(logits[j], own, rtol=1e-10, atol=1e-12)
        own.square().sum().backward()
        for pname, p in model.named_parameters():
            torch.testing.assert_close(params[pname].grad[j], p.grad, rtol=1e-9, atol=1e-12, msg=pname)


def test_models_with_dropout_train_one_by_one(gray, monkeypatch, grouped):
    vit = build_model("vit", 1, 10, 28)
    assert not seeds_module.groupable(vit) and not seeds_module.groupable(build_model("convnet", 1, 10, 28,
                                                                                      norm="batchnorm"))
    groups = []
    monkeypatch.setattr(train_module, "run_seeds",
                        lambda models, loaders, plan, **kw: groups.append(len(models)) or [[0.0]] * len(models))
    results = train_seeds(gray, seeds=3, model="vit", mode="hard", epochs=1, progress=False)
    assert groups == [1, 1, 1] and not any(r.settings["together"] for r in results)


def test_dropout_draws_of_each_seed_are_its_single_runs(gray):
    """The ViT's dropout masks come from the global generator: each seed trains from the state
    its own build left, as train() does, whichever seeds were built after it."""
    kwargs = dict(model="vit", mode="hard", epochs=1, batch_size=20, progress=False)
    second = train_seeds(gray, seeds=[0, 1], **kwargs)[1]
    single = train(gray, seed=1, **kwargs)
    assert second.losses == single.losses
    assert all(torch.equal(a, b) for a, b in zip(second.model.parameters(), single.model.parameters()))


def test_a_cpu_runs_the_seeds_one_after_another(gray):
    """By default the CPU shares one upload but runs each seed's passes alone: train()'s results exactly."""
    kwargs = {**TINY, "epochs": 1}
    for result, seed in zip(train_seeds(gray, seeds=[3, 1], **kwargs), (3, 1)):
        single = train(gray, seed=seed, **kwargs)
        assert result.losses == single.losses and not result.settings["together"]
        assert all(torch.equal(a, b) for a, b in zip(result.model.parameters(), single.model.parameters()))
    assert not seeds_module.groupable(build_model("convnet", 1, 10, 28), torch.device("cpu"))


def test_one_by_one_is_exactly_separate_runs(gray):
    kwargs = {**TINY, "epochs": 1}
    one_by_one = train_seeds(gray, seeds=[4, 5], together=False, **kwargs)
    for result, seed in zip(one_by_one, (4, 5)):
        single = train(gray, seed=seed, **kwargs)
        assert result.losses == single.losses and not result.settings["together"]
        for a, b in zip(result.model.parameters(), single.model.parameters()):
            assert torch.equal(a, b)


def test_micro_batches_split_seeds_the_same(gray, grouped):
    kwargs = {**TINY, "epochs": 1}
    whole = train_seeds(gray, seeds=2, max_pass_inputs=10_000, **kwargs)
    split = train_seeds(gray, seeds=2, max_pass_inputs=5, **kwargs)  # 2 rows of each seed per pass
    assert split[0].settings["max_pass_inputs"] == 5
    _assert_close(split, whole)


def test_each_seed_draws_its_own_batches(gray):
    with ladd_format.open(gray) as ds:
        base = DeviceLoader(ds, batch_size=8, device="cpu", crops_per_image=3, seed=0)
        a, b = base.with_seed(0), base.with_seed(1)
        assert a._images is b._images and a._stored is base._stored  # one upload
        for (ba, pa), (bb, pb), (bs, ps) in zip(a.plain_batches(), b.plain_batches(),
                                                DeviceLoader(ds, batch_size=8, device="cpu", crops_per_image=3,
                                                             seed=1).plain_batches()):
            assert torch.equal(bb.index, bs.index) and torch.equal(bb.crop_id, bs.crop_id)  # = its own single run
            assert pb.family == ps.family and all(torch.equal(pb.values[k], ps.values[k]) for k in pb.values)
        orders = [torch.cat([batch.index for batch, _ in loader.plain_batches()]) for loader in (a, b)]
        assert not torch.equal(*orders)
        draws = [[p for _, p in loader.plain_batches()] for loader in (a, b)]
        assert any(p.family != q.family or any(not torch.equal(p.values[k], q.values[k]) for k in p.values)
                   for p, q in zip(*draws))


def test_compile_failure_falls_back_to_eager(gray, monkeypatch, grouped):
    def broken(fn, **kwargs):
        def call(*args):
            raise RuntimeError("no compiler here")
        return call

    monkeypatch.setattr(torch, "compile", broken)
    monkeypatch.setattr(seeds_module._Compiled, "warned", False)
    kwargs = {**TINY, "epochs": 1}
    with pytest.warns(RuntimeWarning, match="torch.compile failed"):
        compiled = train_seeds(gray, seeds=2, compile=True, **kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        train(gray, compile=True, **kwargs)  # warned once per process
    eager = train_seeds(gray, seeds=2, **kwargs)
    assert [r.losses for r in compiled] == [r.losses for r in eager] and compiled[0].settings["compile"]


@pytest.mark.skipif(not any(shutil.which(c) for c in (os.environ.get("CXX", "g++"), "c++", "clang++")),
                    reason="torch.compile on a CPU needs a C++ compiler")
def test_compiled_grouped_runs_equal_eager_and_compile_once_each(gray, grouped, tmp_path):
    """The GPU fast path's torch.compile, run for real here by inductor's CPU backend: the grouped
    forward compiles into one graph a run (no graph breaks, no recompiling step after step) and
    trains as eager does; a second run at another geometry in the same process compiles its own
    static graph (it used to recompile the shared code with symbolic sizes, which inductor
    failed to lower, and fell back to eager)."""
    from torch._dynamo.utils import counters

    rgb = write_example(tmp_path / "rgb.ladd", size=32, channels=3, ipc=2)
    kwargs = {**TINY, "epochs": 3, "batch_size": 20}  # 20 images: one step an epoch, one shape
    for path in (gray, rgb):
        eager = train_seeds(path, seeds=2, **kwargs)
        counters.clear()
        with warnings.catch_warnings():
            warnings.filterwarnings("error", message="torch.compile failed")
            compiled = train_seeds(path, seeds=2, compile=True, **kwargs)
        assert compiled[0].settings["together"]
        assert counters["stats"]["unique_graphs"] == 1 and counters["frames"]["ok"] == 1
        assert not counters["recompiles"]
        _assert_close(compiled, eager, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("compile_, mode", [(True, None), ("reduce-overhead", "reduce-overhead"),
                                            ("max-autotune", "max-autotune")])
def test_compile_mode_reaches_torch_compile(gray, monkeypatch, grouped, compile_, mode):
    seen = []

    def recording(fn, **kwargs):
        seen.append(kwargs.get("mode"))
        return fn

    monkeypatch.setattr(torch, "compile", recording)
    runs = train_seeds(gray, seeds=2, compile=compile_, **{**TINY, "epochs": 1})
    assert seen == [mode] and runs[0].settings["compile"] == compile_


@pytest.mark.parametrize("bad", ["fast", "", 1, None, ["default"]])
def test_unknown_compile_mode_is_refused(gray, bad):
    with pytest.raises(InvalidInputError, match="compile must be"):
        train(gray, compile=bad, **TINY)


def test_channels_last_gives_the_same_training(gray, grouped):
    kwargs = {**TINY, "epochs": 1}
    _assert_close(train_seeds(gray, seeds=2, channels_last=True, **kwargs), train_seeds(gray, seeds=2, **kwargs))


@pytest.mark.parametrize("seeds", [0, -1, [], [1, 1], True, [True], [0.5], "3", None])
def test_bad_seeds(gray, seeds):
    with pytest.raises(InvalidInputError, match="seeds"):
        train_seeds(gray, seeds=seeds, **TINY)


@pytest.mark.parametrize("kwargs, match", [({"seed": 1}, "seeds="), ({"bogus": 1}, "bogus"),
                                           ({"together": 1}, "together"), ({"max_pass_inputs": 2.5}, "max_pass")])
def test_bad_arguments(gray, kwargs, match):
    with pytest.raises(InvalidInputError, match=match):
        train_seeds(gray, seeds=2, **{**TINY, **kwargs})


def test_cpu_amp_is_opt_in(gray):
    kwargs = {**TINY, "epochs": 1}
    plain, amp = train(gray, **kwargs), train(gray, cpu_amp=True, **kwargs)
    assert not plain.settings["amp"] and amp.settings["amp"] and train(gray, amp=False, cpu_amp=True,
                                                                      **kwargs).settings["amp"] is False
    assert np.isfinite(amp.losses).all() and amp.losses != plain.losses  # bfloat16 autocast did run


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture
def exact_cuda():
    """float32 convolutions and products without TF32, so that grouped and single runs differ
    by reassociation only."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@CUDA
@pytest.mark.parametrize("mode", ["ladd", "hard"])
def test_cuda_groups_seeds_and_equals_separate_runs(gray, mode, exact_cuda):
    together = train_seeds(gray, seeds=[0, 1, 2], mode=mode, device="cuda", amp=False, **TINY)
    separate = [train(gray, seed=s, mode=mode, device="cuda", amp=False, **TINY) for s in [0, 1, 2]]
    assert together[0].settings["together"] and not separate[0].settings.get("together")
    _assert_close(together, separate, rtol=1e-4, atol=1e-4)


@CUDA
@pytest.mark.parametrize("fast", [{}, {"channels_last": True}, {"compile": True}])
def test_cuda_fast_path_trains_like_the_cpu(gray, fast):
    """bf16 autocast (the CUDA default) with each fast-path switch: every seed learns what the
    float32 CPU run learns, to bfloat16's precision."""
    kwargs = {**TINY, "epochs": 3}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fast_runs = train_seeds(gray, seeds=2, mode="ladd", device="cuda", **fast, **kwargs)
    assert not [w for w in caught if "torch.compile failed" in str(w.message)]  # no eager fallback on CUDA
    cpu_runs = train_seeds(gray, seeds=2, mode="ladd", device="cpu", **kwargs)
    for a, b in zip(fast_runs, cpu_runs):
        assert a.settings["amp"] and np.isfinite(a.losses).all()
        np.testing.assert_allclose(a.losses, b.losses, rtol=0.05)


@CUDA
@pytest.mark.parametrize("mode, progress", [("ladd", False), ("hard", False), ("ladd", True)])
def test_cuda_run_never_waits_for_the_device_inside_it(gray, mode, progress):
    """No host synchronisation a step or an epoch (a per-step ``loss.item()`` is one, and so is
    a blocking copy to the device): the host queues step after step, and the progress bar shows
    losses that have landed. PyTorch's sync debug mode warns at each synchronising call; a run
    of 3 times the epochs makes no more of them."""
    def syncs(epochs):
        torch.cuda.synchronize()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                train_seeds(gray, seeds=2, mode=mode, device="cuda", **{**TINY, "epochs": epochs, "progress": progress})
            finally:
                torch.cuda.set_sync_debug_mode("default")
        return sum("synchroniz" in str(w.message) for w in caught)

    assert syncs(6) == syncs(2)
