"""Any network as the labeler: from_module, TorchScript, weights files, torchvision/timm.

torchvision and timm cannot be installed next to this CPU torch build, so their paths run
against stand-in modules in ``sys.modules`` whose builders return the library's own zoo
networks: the weights loading, checks and provenance are the real code; only the
``get_model`` / ``create_model`` call is a stand-in.
"""

from __future__ import annotations

import hashlib
import io
import os
import sys
import types
import zipfile

import numpy as np
import pytest
import torch

from ladd_format._torch import normalise
from ladd_format.errors import InvalidInputError, LaddError
from ladd_format.labeler import Labeler, LabelerConfig, LabelerError
from ladd_format.models import MODEL_NAMES, build_model
from ladd_format.sampler import UniformSampler
from ladd_format.teachers import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    check_labeler,
    from_module,
    from_timm,
    from_torchscript,
    from_torchvision,
    load_teacher,
)

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.*` is deprecated:DeprecationWarning",
                                        "ignore::torch.jit.TracerWarning")

STATS = {"mean": (0.5, 0.4, 0.3), "std": (0.2, 0.25, 0.3)}


def _model(name="convnet", classes=10, side=32, seed=0):
    torch.manual_seed(seed)
    return build_model(name, 3, classes, side).eval()


def _images(count, side=32, seed=0):
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.integers(0, 256, (count, 3, side, side), dtype=np.uint8))


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _builder(calls, side=32):
    """Build a zoo network at ``side`` px, like a library's model constructor; unknown
    names fail the way torchvision's ``get_model`` does."""
    def build(name, num_classes):
        calls.append(name)
        if name not in MODEL_NAMES:
            raise ValueError(f"Unknown model {name}")
        return build_model(name, 3, num_classes, side)
    return build


@pytest.fixture
def torchvision(monkeypatch):
    """A stand-in ``torchvision`` exposing ``models.get_model(name, weights=None, num_classes=)``."""
    calls = []
    build = _builder(calls)

    def get_model(name, *, weights=None, num_classes=1000):
        assert weights is None  # the library never lets torchvision download
        return build(name, num_classes)

    models = types.ModuleType("torchvision.models")
    models.get_model = get_model
    module = types.ModuleType("torchvision")
    module.models = models
    monkeypatch.setitem(sys.modules, "torchvision", module)
    monkeypatch.setitem(sys.modules, "torchvision.models", models)
    return calls


@pytest.fixture
def timm(monkeypatch):
    """A stand-in ``timm`` exposing ``create_model(name, pretrained=False, num_classes=)``."""
    calls = []
    build = _builder(calls)

    def create_model(name, pretrained=False, num_classes=1000):
        assert pretrained is False
        if name not in MODEL_NAMES:
            raise RuntimeError(f"Unknown model ({name})")  # what timm raises
        return build(name, num_classes)

    module = types.ModuleType("timm")
    module.create_model = create_model
    monkeypatch.setitem(sys.modules, "timm", module)
    return calls


def _tv(weights_file=None, **kwargs):
    """from_torchvision for the stand-in's 32 px networks."""
    args = {"num_classes": 10, "input_size": (32, 32), **kwargs}
    return from_torchvision("resnet18", weights_file=weights_file, **args)


# -- from_module and a full labelling --------------------------------------------------------

def test_from_module_zoo_resnet():
    model = _model("resnet18")
    labeler = from_module(model, num_classes=10, input_size=(32, 32), **STATS, device="cpu")
    assert isinstance(labeler, Labeler) and labeler.model is model and not model.training
    assert labeler.input_size == (32, 32) and labeler.epochs is None
    assert labeler.checkpoint_sha256 is None
    prov = labeler.provenance()
    assert prov["architecture"] == "_ResNet18" and prov["weights"] == "unrecorded"
    assert prov["input_size"] == [32, 32] and prov["mean"] == list(STATS["mean"])
    assert prov["std"] == list(STATS["std"]) and prov["source_dataset"] == "unknown"
    assert prov["training"] == {} and prov["epochs"] is None
    x = _images(3)
    with torch.no_grad():
        expected = model(normalise(x, STATS["mean"], STATS["std"]))
    assert torch.equal(labeler.logits(x), expected)


def test_from_module_records_given_provenance():
    digest = "ab" * 32
    labeler = from_module(_model(), num_classes=10, input_size=[32, 32], **STATS, architecture="my-net",
                          weights="file:my-net.pt", weights_sha256=digest, source_dataset="cifar10")
    prov = labeler.provenance()
    assert (prov["architecture"], prov["weights"], prov["checkpoint_sha256"], prov["source_dataset"]) == (
        "my-net", "file:my-net.pt", digest, "cifar10")


def test_labelling_32px_images_with_a_64px_teacher():
    """The crops are resized straight to the teacher's input size, then labelled."""
    model = _model("resnet18", side=64)
    labeler = from_module(model, num_classes=10, input_size=(64, 64), **STATS)
    images = _images(2, side=32, seed=3)
    crops = UniformSampler().crops(images, size=labeler.input_size, flatten=True)
    assert crops.shape == (50, 3, 64, 64)
    logits = labeler.logits(crops)
    assert logits.shape == (50, 10)
    with torch.no_grad():
        direct = model(normalise(crops, STATS["mean"], STATS["std"]))
    assert torch.equal(logits, direct)
    check_labeler(labeler, 10, 3)


def test_from_module_refuses_a_non_module():
    with pytest.raises(LabelerError, match="torch.nn.Module"):
        from_module(lambda x: x, num_classes=10, input_size=(32, 32), **STATS)


# -- argument checks, before anything else ---------------------------------------------------

@pytest.mark.parametrize("kwargs, message", [
    ({"mean": (0.5, float("nan"), 0.5)}, "mean must be finite"),
    ({"mean": (0.5, 0.5)}, r"one value per channel \(3\), got 2"),
    ({"mean": "abc"}, "mean must be 3 numbers"),
    ({"std": (0.2, 0.0, 0.2)}, r"std must be finite and > 0"),
    ({"std": (0.2, -1.0, 0.2)}, r"std must be finite and > 0"),
    ({"std": (0.2, float("inf"), 0.2)}, r"std must be finite and > 0"),
    ({"std": None}, "std must be 3 numbers"),
    ({"input_size": (32,)}, r"input_size must be \(height, width\)"),
    ({"input_size": 224}, r"input_size must be \(height, width\)"),
    ({"input_size": (0, 32)}, "two integers >= 1"),
    ({"input_size": (32.0, 32)}, "two integers >= 1"),
    ({"input_size": (True, 32)}, "two integers >= 1"),
    ({"num_classes": 0}, "num_classes must be an integer >= 1"),
    ({"num_classes": 2.5}, "num_classes must be an integer >= 1"),
])
def test_bad_arguments_refused_first(monkeypatch, tmp_path, kwargs, message):
    """Before torchvision is imported and before the weights file is read."""
    monkeypatch.setitem(sys.modules, "torchvision", None)
    with pytest.raises(LabelerError, match=message):
        _tv(weights_file=tmp_path / "absent.pth", **kwargs)
    module_args = {"num_classes": 10, "input_size": (32, 32), **STATS, **kwargs}
    with pytest.raises(LabelerError, match=message):
        from_module(_model(), **module_args)
    with pytest.raises(LabelerError, match=message):
        from_torchscript(tmp_path / "absent.pt", **module_args)


def test_other_bad_arguments():
    with pytest.raises(LabelerError, match="in_channels"):
        from_module(_model(), num_classes=10, input_size=(32, 32), **STATS, in_channels=0)
    with pytest.raises(LabelerError, match="one value per channel"):
        from_module(_model(), num_classes=10, input_size=(32, 32), **STATS, in_channels=1)
    with pytest.raises(LabelerError, match="weights_sha256"):
        from_module(_model(), num_classes=10, input_size=(32, 32), **STATS, weights_sha256="abc")
    with pytest.raises(InvalidInputError, match="unknown device"):
        from_module(_model(), num_classes=10, input_size=(32, 32), **STATS, device="tpu:0")


# -- TorchScript -----------------------------------------------------------------------------

@pytest.mark.parametrize("compile_", ["script", "trace"])
def test_from_torchscript(tmp_path, compile_):
    model = _model("convnet")
    scripted = (torch.jit.script(model) if compile_ == "script"
                else torch.jit.trace(model, torch.zeros(1, 3, 32, 32)))
    path = tmp_path / "model.pt"
    torch.jit.save(scripted, str(path))
    labeler = from_torchscript(path, num_classes=10, input_size=(32, 32), **STATS)
    prov = labeler.provenance()
    assert labeler.checkpoint_sha256 == _sha(path) == prov["checkpoint_sha256"]
    assert prov["weights"] == "torchscript:model.pt" and prov["architecture"] == "_ConvNet"
    assert prov["epochs"] is None
    x = _images(4)
    with torch.no_grad():
        expected = model(normalise(x, STATS["mean"], STATS["std"]))
    torch.testing.assert_close(labeler.logits(x), expected, rtol=0, atol=1e-5)
    check_labeler(labeler, 10, 3)
    named = from_torchscript(str(path), num_classes=10, input_size=(32, 32), **STATS, architecture="convnet-d3")
    assert named.config.architecture == "convnet-d3"


def test_torchscript_bad_files(tmp_path):
    random = tmp_path / "random.pt"
    random.write_bytes(os.urandom(2000))
    state = tmp_path / "state.pt"
    torch.save(_model().state_dict(), state)
    args = {"num_classes": 10, "input_size": (32, 32), **STATS}
    for path in (random, state):
        with pytest.raises(LabelerError, match=rf"{path.name}: not a TorchScript archive that loads"):
            from_torchscript(path, **args)
    with pytest.raises(LabelerError, match="absent.pt: no such file"):
        from_torchscript(tmp_path / "absent.pt", **args)


# -- weights files (through the torchvision stand-in) ---------------------------------------

def test_weights_file_loads_with_provenance(torchvision, tmp_path):
    source = _model("resnet18", seed=7)
    path = tmp_path / "resnet18-f37072fd.pth"
    torch.save(source.state_dict(), path)
    labeler = _tv(path)
    assert torchvision == ["resnet18"]
    prov = labeler.provenance()
    assert prov["architecture"] == "torchvision:resnet18" and prov["weights"] == "file:resnet18-f37072fd.pth"
    assert prov["checkpoint_sha256"] == _sha(path) and prov["source_dataset"] == "imagenet"
    assert prov["mean"] == list(IMAGENET_MEAN) and prov["std"] == list(IMAGENET_STD)
    x = _images(2)
    with torch.no_grad():
        expected = source(normalise(x, IMAGENET_MEAN, IMAGENET_STD))
    assert torch.equal(labeler.logits(x), expected)  # the file's weights, not a fresh init


@pytest.mark.parametrize("wrap", ["state_dict", "model", "module.", "legacy"])
def test_wrapped_weights_load(torchvision, tmp_path, wrap):
    source = _model("convnet", seed=5)
    state = source.state_dict()
    path = tmp_path / "w.pth"
    if wrap == "module.":
        torch.save({f"module.{k}": v for k, v in state.items()}, path)
    elif wrap == "legacy":
        torch.save(state, path, _use_new_zipfile_serialization=False)
    else:
        torch.save({wrap: state, "epoch": 90}, path)
    labeler = from_torchvision("convnet", weights_file=path, num_classes=10, input_size=(32, 32),
                               source_dataset="cifar10")
    assert labeler.config.source_dataset == "cifar10"
    for key, value in state.items():
        assert torch.equal(labeler.model.state_dict()[key], value)


def test_random_init_says_so(torchvision):
    labeler = _tv()
    prov = labeler.provenance()
    assert prov["weights"] == "torchvision:resnet18 random-init"
    assert prov["checkpoint_sha256"] is None and prov["source_dataset"] == "unknown"
    assert from_torchvision.__doc__ and "MEAN NOTHING" in from_torchvision.__doc__


def test_pickled_object_refused_without_running_it(torchvision, tmp_path):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return os.mkdir, (str(marker),)

    path = tmp_path / "evil.pth"
    torch.save({"conv.weight": torch.zeros(1), "extra": Payload()}, path)
    with pytest.raises(LabelerError, match=r"evil.pth: refused, would need unpickling, which could run "
                                           r"code \(it refers to (posix|os|nt)\.mkdir\)"):
        _tv(path)
    torch.save({"conv.weight": torch.zeros(1), "extra": _Fixed(3)}, path)
    with pytest.raises(LabelerError, match=r"would need unpickling.*it refers to test_teachers._Fixed"):
        _tv(path)
    assert not marker.exists()
    assert torchvision == []  # refused before the network was built


def test_weights_that_do_not_fit(torchvision, tmp_path):
    state = _model("resnet18").state_dict()
    renamed = tmp_path / "renamed.pth"
    torch.save({("backbone." + k if k.startswith("layer4") else k): v for k, v in state.items()}, renamed)
    with pytest.raises(LabelerError, match=r"renamed.pth: the weights do not fit torchvision:resnet18 "
                                           r"\(missing: layer4\.0\..*and \d+ more; unexpected: backbone\.layer4"):
        _tv(renamed)
    other_classes = tmp_path / "k7.pth"
    torch.save(_model("resnet18", classes=7).state_dict(), other_classes)
    with pytest.raises(LabelerError, match=r"k7.pth: .*wrong shape \(file vs network\): "
                                           r"classifier.weight \[7, 512\] vs \[10, 512\], classifier.bias"):
        _tv(other_classes)
    partial = tmp_path / "partial.pth"
    torch.save({k: v for k, v in list(state.items())[:5]}, partial)
    with pytest.raises(LabelerError, match=r"partial.pth: .*missing: "):
        _tv(partial)


def test_files_that_are_not_weights(torchvision, tmp_path):
    cases = {"random.pth": os.urandom(4000), "empty.pth": b"", "text.pth": b"hello weights\n"}
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        z.writestr("readme.txt", "not torch")
    cases["other.zip"] = buffer.getvalue()
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        message = "not a readable torch file" if name == "other.zip" else "not a torch file"
        with pytest.raises(LabelerError, match=rf"{name}: {message}"):
            _tv(tmp_path / name)
    good = io.BytesIO()
    torch.save(_model().state_dict(), good)
    (tmp_path / "cut.pth").write_bytes(good.getvalue()[:len(good.getvalue()) // 2])
    with pytest.raises(LabelerError, match="cut.pth: not a readable torch file"):
        _tv(tmp_path / "cut.pth")
    for name, obj in (("tensor.pth", torch.zeros(3)), ("list.pth", [torch.zeros(1)]), ("empty-dict.pth", {}),
                      ("mixed.pth", {"a": torch.zeros(1), "b": 3})):
        torch.save(obj, tmp_path / name)
        with pytest.raises(LabelerError, match=rf"{name}: not a state dict"):
            _tv(tmp_path / name)
    with pytest.raises(LabelerError, match="absent.pth: no such file"):
        _tv(tmp_path / "absent.pth")
    assert torchvision == []  # every one refused before the network was built


def test_unknown_model_names(torchvision, timm):
    with pytest.raises(LabelerError, match=r"torchvision cannot build 'resnet1800' \(Unknown model resnet1800\)"):
        from_torchvision("resnet1800")
    with pytest.raises(LabelerError, match=r"timm cannot build 'vit_huge_typo' \(Unknown model \(vit_huge_typo\)\)"):
        from_timm("vit_huge_typo")
    with pytest.raises(LabelerError, match="non-empty string"):
        from_torchvision("")


def test_timm_loads_weights(timm, tmp_path):
    source = _model("vgg11", seed=2)
    path = tmp_path / "vgg.pth"
    torch.save({"state_dict": source.state_dict()}, path)
    labeler = from_timm("vgg11", weights_file=path, num_classes=10, input_size=(32, 32))
    assert timm == ["vgg11"]
    prov = labeler.provenance()
    assert prov["architecture"] == "timm:vgg11" and prov["weights"] == "file:vgg.pth"
    assert prov["checkpoint_sha256"] == _sha(path)
    x = _images(2)
    with torch.no_grad():
        expected = source(normalise(x, IMAGENET_MEAN, IMAGENET_STD))
    assert torch.equal(labeler.logits(x), expected)
    assert from_timm("convnet", num_classes=10, input_size=(32, 32)).provenance()["weights"] == (
        "timm:convnet random-init")


@pytest.mark.parametrize("library", ["torchvision", "timm"])
def test_missing_library(monkeypatch, library):
    monkeypatch.setitem(sys.modules, library, None)
    build = from_torchvision if library == "torchvision" else from_timm
    with pytest.raises(LabelerError,
                       match=rf"{library}, which is not installed: pip install 'ladd_format\[teachers\]'"):
        build("resnet18")


def test_broken_library(monkeypatch, tmp_path):
    """A torchvision wheel built for another torch fails on import with a RuntimeError."""
    package = tmp_path / "torchvision"
    package.mkdir()
    (package / "__init__.py").write_text("raise RuntimeError('operator torchvision::nms does not exist')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "torchvision", raising=False)
    with pytest.raises(LabelerError,
                       match=r"not usable here \(operator torchvision::nms does not exist\): pip install"):
        from_torchvision("resnet18")


# -- check_labeler ---------------------------------------------------------------------------

class _Fixed(torch.nn.Module):
    """Returns [B, k] whatever it is told."""

    def __init__(self, k):
        super().__init__()
        self.k = k
        self.scale = torch.nn.Parameter(torch.ones(1))

    def forward(self, x):
        return x.flatten(1)[:, :1].expand(-1, self.k) * self.scale


def test_check_labeler():
    labeler = from_module(_model(), num_classes=10, input_size=(32, 32), **STATS)
    check_labeler(labeler, 10, 3)
    with pytest.raises(LabelerError, match="has 10 classes; the dataset has 100"):
        check_labeler(labeler, 100, 3)
    with pytest.raises(LabelerError, match="takes 3-channel input; the images have 1"):
        check_labeler(labeler, 10, 1)
    liar = from_module(_Fixed(7), num_classes=10, input_size=(8, 8), **STATS)
    with pytest.raises(LabelerError, match=r"_Fixed returned \(1, 7\), expected \[1, 10\]"):
        check_labeler(liar, 10, 3)
    wrong_size = from_module(_model(side=32), num_classes=10, input_size=(64, 64), **STATS)
    with pytest.raises(LabelerError, match=r"_ConvNet fails on a zero input of shape \[1, 3, 64, 64\] \(RuntimeError"):
        check_labeler(wrong_size, 10, 3)


# -- load_teacher ----------------------------------------------------------------------------

def test_load_teacher_dispatch(torchvision, timm, tmp_path):
    weights = tmp_path / "r.pth"
    torch.save(_model("resnet18").state_dict(), weights)
    tv = load_teacher("torchvision:resnet18", weights=weights, num_classes=10, input_size=(32, 32))
    assert tv.provenance()["weights"] == "file:r.pth" and tv.config.mean == IMAGENET_MEAN
    tm = load_teacher("timm:resnet18", weights=weights, num_classes=10, input_size=(32, 32),
                      mean=STATS["mean"], std=STATS["std"], source_dataset="cifar10")
    assert tm.config.architecture == "timm:resnet18" and tm.config.mean == STATS["mean"]
    assert tm.config.source_dataset == "cifar10"

    script = tmp_path / "s.pt"
    torch.jit.save(torch.jit.script(_model()), str(script))
    ts = load_teacher(f"torchscript:{script}", num_classes=10, input_size=(32, 32), **STATS)
    assert ts.provenance()["weights"] == "torchscript:s.pt"
    with pytest.raises(LabelerError, match="does not record input_size, mean, std"):
        load_teacher(f"torchscript:{script}", num_classes=10)
    with pytest.raises(LabelerError, match="holds its own weights"):
        load_teacher(f"torchscript:{script}", weights=weights, num_classes=10, input_size=(32, 32), **STATS)
    with pytest.raises(LabelerError, match="name the model after 'torchvision:'"):
        load_teacher("torchvision:")


def test_load_teacher_checkpoint(tmp_path):
    config = LabelerConfig(architecture="convnet", in_channels=3, num_classes=10, image_size=(32, 32),
                           width=None, depth=None, mean=STATS["mean"], std=STATS["std"],
                           source_dataset="cifar10", training={})
    path = Labeler(_model(), config, 10).save(tmp_path / "epoch_10.pt")
    loaded = load_teacher(str(path))
    assert loaded.epochs == 10 and loaded.config == config
    with pytest.raises(LabelerError, match="records its own settings; num_classes, weights apply only"):
        load_teacher(path, num_classes=10, weights="x.pth")
    with pytest.raises(LabelerError, match=r"nothing.pt: no such labeler checkpoint \(a teacher is torchvision:NAME"):
        load_teacher(tmp_path / "nothing.pt")
    with pytest.raises(LabelerError, match="no such labeler checkpoint"):
        load_teacher("hub:resnet18")


def test_errors_are_typed():
    assert issubclass(LabelerError, LaddError) and issubclass(LabelerError, ValueError)
