"""Importers: each code base's layout, exact uint8 recovery, provenance, refusals, the CLI."""

from __future__ import annotations

import hashlib
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from _helpers import leftovers
from PIL import Image

import ladd_format
from ladd_format.cli import main as cli_main
from ladd_format import InvalidInputError
from ladd_format.importers import (
    HARD_LABELS_PROVENANCE,
    NORMALIZATIONS,
    SOFT_LABELS_PROVENANCE,
    ClippingError,
    InputNotFoundError,
    WhitenedImagesError,
    import_distilled,
    read_distilled,
)

CIFAR10 = NORMALIZATIONS["cifar10"]


class _Custom:
    """A class only arbitrary unpickling can rebuild."""


def _uint8(m: int, c: int = 3, size: int = 8, seed: int = 0) -> np.ndarray:
    """uint8 NCHW: every channel a shuffled ramp, so it holds every value 0..255 when large enough."""
    rng = np.random.default_rng(seed)
    ramp = (np.arange(m * size * size) % 256).astype(np.uint8)
    return np.stack([rng.permutation(ramp).reshape(m, size, size) for _ in range(c)], axis=1)


def _normalise(u8: np.ndarray, stats) -> torch.Tensor:
    """What torchvision's ToTensor + Normalize give: float32 (x / 255 - mean) / std."""
    mean, std = (torch.tensor(v, dtype=torch.float32).view(1, -1, 1, 1) for v in stats)
    return (torch.from_numpy(u8).float() / 255 - mean) / std


def _nhwc(u8: np.ndarray) -> np.ndarray:
    return u8.transpose(0, 2, 3, 1)


def _mtt_folder(root: Path, images: torch.Tensor, labels: torch.Tensor, lr: float | None = None) -> Path:
    root.mkdir(parents=True)
    torch.save(images, root / "images_best.pt")
    torch.save(labels, root / "labels_best.pt")
    if lr is not None:
        torch.save(torch.tensor(lr), root / "lr_best.pt")
    return root


def _cli(argv: list[str]) -> int:
    return cli_main(argv)


@pytest.mark.parametrize("name", sorted(NORMALIZATIONS))
def test_every_normalisation_recovers_every_uint8_value(tmp_path, name):
    mean, _ = NORMALIZATIONS[name]
    u8 = _uint8(10, c=len(mean))
    labels = torch.arange(10)
    src = _mtt_folder(tmp_path / "mtt", _normalise(u8, NORMALIZATIONS[name]), labels)
    d = read_distilled("mtt", src, normalization=name)
    assert d.images.dtype == np.uint8 and np.array_equal(d.images, _nhwc(u8))
    assert d.clipped == 0 and d.distillation["details"]["normalization"]["name"] == name


def test_mtt_folder_gives_exact_container_with_provenance(tmp_path):
    u8 = _uint8(20)
    labels = torch.arange(10).repeat_interleave(2)
    src = _mtt_folder(tmp_path / "mtt", _normalise(u8, CIFAR10), labels)
    out = import_distilled("mtt", src, tmp_path / "c.ladd", normalization="cifar10")
    with ladd_format.open(out) as ds:
        m = ds.manifest
        assert np.array_equal(np.asarray(ds.images), _nhwc(u8))
        assert np.array_equal(ds.labels, labels.numpy())
        assert ds.class_names[:2] == ["airplane", "automobile"] and ds.num_classes == 10
        assert np.array_equal(np.asarray(ds.dense_labels), np.repeat(np.eye(10)[labels][:, None], 25, axis=1))
        assert m.image.mean == list(CIFAR10[0]) and m.image.std == list(CIFAR10[1])
        assert m.labeler.architecture == HARD_LABELS_PROVENANCE
        assert (m.distillation.method, m.distillation.source_dataset, m.distillation.ipc) == ("MTT", "cifar10", 2)
        details = m.distillation.details
        assert details["clipped_values"] == 0
        assert set(details["imported_from"]["files"]) == {"images_best.pt", "labels_best.pt"}


def test_explicit_files_and_cifar100_choice_is_explicit(tmp_path):
    u8 = _uint8(4)
    mtt_stats = NORMALIZATIONS["cifar100-mtt"]
    torch.save(_normalise(u8, mtt_stats), tmp_path / "images_5000.pt")
    torch.save(torch.tensor([0, 1, 2, 99]), tmp_path / "labels_5000.pt")
    d = read_distilled("glad", tmp_path / "images_5000.pt", normalization="cifar100-mtt")
    assert np.array_equal(d.images, _nhwc(u8)) and len(d.class_names) == 100
    assert d.distillation["source_dataset"] == "cifar100" and d.distillation["method"] == "GLaD"
    # The DC statistics give other pixels: the user has to say which ones the file used.
    # They are close, so the clipping rule cannot catch them: a quarter clipped, but by little.
    other = read_distilled("glad", tmp_path / "images_5000.pt", labels=tmp_path / "labels_5000.pt",
                           normalization="cifar100")
    assert not np.array_equal(other.images, d.images)
    details = other.distillation["details"]
    assert details["clipped_fraction"] > 0.2 and details["clipped_far_fraction"] < 0.1
    assert "clipping_allowed" not in details
    # MTT's un-whitened copy of ZCA runs pairs with the plain labels file.
    (tmp_path / "images_5000.pt").rename(tmp_path / "images_zca_5000.pt")
    zca_copy = read_distilled("mtt", tmp_path / "images_zca_5000.pt", normalization="cifar100-mtt")
    assert np.array_equal(zca_copy.images, d.images)


def test_explicit_mean_std_and_clipping_are_recorded(tmp_path):
    u8 = _uint8(2, c=1, size=15)  # 2 clipped of 450 values: under the 1% rule
    x = _normalise(u8, ((0.5,), (0.25,)))
    x[0, 0, 0, :3] = torch.tensor([-9.0, 9.0, 2.0])  # below 0, above 255, and exactly 255
    src = _mtt_folder(tmp_path / "m", x, torch.tensor([0, 1]))
    d = read_distilled("mtt", src, normalization=([0.5], [0.25]))
    assert d.clipped == 2 and d.distillation["details"]["clipped_values"] == 2
    assert list(d.images[0, 0, :3, 0]) == [0, 255, 255]
    assert d.distillation["details"]["normalization"] == {"name": "explicit", "mean": [0.5], "std": [0.25]}
    assert d.class_names == ["0", "1"]


def test_tesla_probabilities_are_kept_as_repeated_dense_labels(tmp_path):
    u8 = _uint8(6)
    probs = torch.softmax(torch.randn(6, 10, generator=torch.Generator().manual_seed(0)) * 3, dim=1)
    src = _mtt_folder(tmp_path / "t", _normalise(u8, CIFAR10), probs)
    out = import_distilled("tesla", src, tmp_path / "c.ladd", normalization="cifar10", n=3)
    with ladd_format.open(out) as ds:
        m = ds.manifest
        assert np.array_equal(ds.labels, probs.argmax(1).numpy())
        # The default uint8 encoding keeps every probability within 1/255.
        assert np.allclose(np.asarray(ds.dense_labels), np.repeat(probs.numpy()[:, None], 9, axis=1), atol=1 / 255)
        assert m.labeler.architecture == SOFT_LABELS_PROVENANCE and m.sampler.n == 3
        soft = m.distillation.details["soft_labels"]
        assert soft["kind"] == "probabilities" and soft["shape"] == [6, 10] and len(soft["sha256"]) == 64


def test_datm_logits_and_learned_lr(tmp_path):
    u8 = _uint8(4)
    logits = torch.randn(4, 10, generator=torch.Generator().manual_seed(1)) * 4
    src = _mtt_folder(tmp_path / "d", _normalise(u8, CIFAR10), logits, lr=0.0123)
    out = import_distilled("datm", src, tmp_path / "c.ladd", normalization="cifar10")
    with ladd_format.open(out) as ds:
        m = ds.manifest
        assert m.dense_labels.values == "logits"
        assert np.array_equal(np.asarray(ds.dense_logits), np.repeat(logits.numpy()[:, None], 25, axis=1))
        assert np.allclose(np.asarray(ds.dense_labels)[:, 0], torch.softmax(logits, 1).numpy(), atol=1e-6)
        assert np.array_equal(ds.labels, logits.argmax(1).numpy())
        assert m.distillation.details["learned_lr"] == pytest.approx(0.0123)
        assert m.distillation.details["soft_labels"]["kind"] == "logits"
        assert set(m.distillation.details["imported_from"]["files"]) >= {"lr_best.pt"}


@pytest.mark.parametrize("kind", ["dc", "dsa", "dm"])
def test_dc_result_file_picks_an_experiment(tmp_path, kind):
    stats = NORMALIZATIONS["mnist"]
    runs = [_uint8(4, c=1, size=7, seed=s) for s in range(3)]
    labels = torch.tensor([0, 0, 1, 1])
    body = {"data": [[_normalise(u, stats), labels] for u in runs],
            "accs_all_exps": {"ConvNet": [0.91, 0.92, 0.93]}}
    path = tmp_path / f"res_{kind.upper()}_MNIST_ConvNet_2ipc.pt"
    torch.save(body, path)
    d = read_distilled(kind, path, normalization="mnist", experiment=2)
    assert np.array_equal(d.images, _nhwc(runs[2])) and d.class_names == [str(i) for i in range(10)]
    details = d.distillation["details"]
    assert (details["experiment"], details["experiments"]) == (2, 3)
    assert details["accs_all_exps"] == {"ConvNet": pytest.approx([0.91, 0.92, 0.93])}
    assert np.array_equal(read_distilled(kind, tmp_path, normalization="mnist").images, _nhwc(runs[0]))
    with pytest.raises(InvalidInputError, match="experiment 3 out of range"):
        read_distilled(kind, path, normalization="mnist", experiment=3)


def _save_images(folder: Path, name: str, image: np.ndarray) -> np.ndarray:
    """Save, then return what a decoder reads back (JPEG is lossy; the importer must match it)."""
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(folder / name)
    with Image.open(folder / name) as im:
        return np.asarray(im.convert("RGB"))


def test_sre2l_and_rded_folders_use_the_class_numbers(tmp_path):
    rng = np.random.default_rng(0)
    pics = rng.integers(0, 256, (4, 16, 16, 3), dtype=np.uint8)
    expected = [_save_images(tmp_path / "sre2l" / f"new{c:03d}", f"class{c:03d}_id{i:03d}.jpg", pics[2 * k + i])
                for k, c in enumerate((0, 2)) for i in range(2)]
    d = read_distilled("sre2l", tmp_path / "sre2l")
    assert np.array_equal(d.images, np.stack(expected)) and list(d.labels) == [0, 0, 2, 2]
    assert d.class_names == ["0", "1", "2"] and d.distillation["method"] == "SRe2L"
    _save_images(tmp_path / "rded" / "00001", "class00001_id00000.jpg", pics[0])
    out = import_distilled("rded", tmp_path / "rded", tmp_path / "c.ladd", dataset="cifar10")
    with ladd_format.open(out) as ds:
        assert list(ds.labels) == [1] and ds.class_names[1] == "automobile"
        assert ds.manifest.distillation.method == "RDED"


def test_any_class_folder_with_png_is_exact(tmp_path):
    rng = np.random.default_rng(1)
    grey = rng.integers(0, 256, (3, 10, 10), dtype=np.uint8)
    for i, cls in enumerate(["cat", "cat", "dog"]):
        _save_images(tmp_path / "src" / cls, f"{i}.png", grey[i])
    out = import_distilled("folder", tmp_path / "src", tmp_path / "c.ladd", normalization="fashion-mnist")
    with ladd_format.open(out) as ds:
        assert np.array_equal(np.asarray(ds.images), grey[..., None]) and list(ds.labels) == [0, 0, 1]
        assert ds.class_names == ["cat", "dog"]  # the folder's own names win over the dataset's
        assert ds.manifest.image.mean == [0.2861]
        assert ds.manifest.distillation.source_dataset == "fashion-mnist"
    d = read_distilled("folder", tmp_path / "src", class_names=["a", "b"])
    assert d.class_names == ["a", "b"] and d.mean is None


def _whiten(u8: np.ndarray, inverse: Path, seed: int = 0) -> torch.Tensor:
    """Normalise then ZCA-whiten like kornia's linear_transform; save the inverse kornia keeps."""
    m = len(u8)
    x = _normalise(u8, CIFAR10).double().reshape(m, -1)
    dim = x.shape[1]
    q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    transform = q * 3.0
    mean_vector = x.mean(0, keepdim=True)
    torch.save({"transform_inv": torch.linalg.inv(transform).float(), "mean_vector": mean_vector.float()}, inverse)
    return ((x - mean_vector) @ transform).float().reshape(u8.shape)


def test_zca_needs_an_inverse_and_undoes_kornia_whitening(tmp_path):
    u8 = _uint8(3, size=6)
    z = _whiten(u8, tmp_path / "zca.pt")
    src = _mtt_folder(tmp_path / "z", z, torch.tensor([0, 1, 2]))
    with pytest.raises(WhitenedImagesError, match=r"ZCA-whitened.*--zca-inverse.*images_zca_"):
        read_distilled("mtt", src, normalization="cifar10", zca=True)
    d = read_distilled("mtt", src, normalization="cifar10", zca=True, zca_inverse=tmp_path / "zca.pt")
    assert np.array_equal(d.images, _nhwc(u8))
    assert d.distillation["details"]["zca"]["unwhitened_with"] == "zca.pt"
    torch.save({"transform_inv": torch.eye(5), "mean_vector": torch.zeros(5)}, tmp_path / "bad.pt")
    with pytest.raises(InvalidInputError, match=r"need \[108, 108\]"):
        read_distilled("mtt", src, normalization="cifar10", zca=True, zca_inverse=tmp_path / "bad.pt")


def _zca_run(root: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    """An MTT run with --zca: whitened images_<it>.pt / images_best.pt (= iteration 2000) beside
    the un-whitened images_zca_<it>.pt, as MTT's distill.py saves them. Returns the folder and the
    uint8 pixels of iterations 1000 and 2000."""
    root.mkdir()
    labels = torch.tensor([0, 1, 2])
    pixels = []
    for seed, it in enumerate((1000, 2000)):
        u8 = _uint8(3, size=6, seed=seed)
        torch.save(_whiten(u8, root.parent / "zca_inverse.pt"), root / f"images_{it}.pt")
        torch.save(_normalise(u8, CIFAR10), root / f"images_zca_{it}.pt")
        torch.save(labels, root / f"labels_{it}.pt")
        pixels.append(u8)
    torch.save(torch.load(root / "images_2000.pt"), root / "images_best.pt")
    torch.save(labels, root / "labels_best.pt")
    return root, pixels[0], pixels[1]


def test_zca_run_folder_refuses_whitened_tensors_until_the_user_chooses(tmp_path):
    run, u8_1000, u8_2000 = _zca_run(tmp_path / "run")
    inverse = tmp_path / "zca_inverse.pt"
    both_ways = (r"un-whiten them with zca_inverse= \(--zca-inverse FILE.pt on the command line.*"
                 r"or import MTT's un-whitened copy ")
    # The run folder's images_best.pt: its copy is found by matching images_2000.pt.
    for zca in (False, True):
        with pytest.raises(WhitenedImagesError, match=r"holds images_zca_1000.pt, images_zca_2000.pt, which "
                           r"MTT-family code writes only when it ran with ZCA whitening, so images_best.pt holds "
                           r"ZCA-whitened tensors. Choose: " + both_ways + r"images_zca_2000.pt as the source"):
            import_distilled("mtt", run, tmp_path / "out.ladd", normalization="cifar10", zca=zca)
    with pytest.raises(WhitenedImagesError, match=both_ways + r"images_zca_1000.pt as the source"):
        read_distilled("tesla", run / "images_1000.pt", normalization="cifar10")
    assert not (tmp_path / "out.ladd").exists()
    # Way out 1: un-whiten with the inverse.
    d = read_distilled("mtt", run, normalization="cifar10", zca_inverse=inverse)
    assert np.array_equal(d.images, _nhwc(u8_2000)) and d.distillation["details"]["zca"]["unwhitened_with"] == \
        "zca_inverse.pt"
    # Way out 2: the un-whitened copy itself, which pairs with labels_<it>.pt and must not be un-whitened again.
    out = import_distilled("mtt", run / "images_zca_1000.pt", tmp_path / "out.ladd", normalization="cifar10")
    with ladd_format.open(out) as ds:
        assert np.array_equal(np.asarray(ds.images), _nhwc(u8_1000))
        assert set(ds.manifest.distillation.details["imported_from"]["files"]) == {"images_zca_1000.pt",
                                                                                   "labels_1000.pt"}
    for kwargs in ({"zca": True}, {"zca_inverse": inverse}):
        with pytest.raises(InvalidInputError, match="images_zca_1000.pt is MTT's un-whitened copy"):
            read_distilled("mtt", run / "images_zca_1000.pt", normalization="cifar10", **kwargs)


def test_zca_copy_unknown_when_no_iteration_matches(tmp_path):
    run, _, _ = _zca_run(tmp_path / "run")
    (run / "images_2000.pt").unlink()
    with pytest.raises(WhitenedImagesError, match=r"import MTT's un-whitened copy images_zca_<it>.pt as the source"):
        read_distilled("mtt", run, normalization="cifar10")


def test_wrong_statistics_are_refused_by_the_clipping_rule(tmp_path):
    u8 = _uint8(4, size=16)
    src = _mtt_folder(tmp_path / "m", _normalise(u8, NORMALIZATIONS["imagenet"]), torch.tensor([0, 1, 2, 3]))
    assert read_distilled("mtt", src, normalization="imagenet").clipped == 0
    # MNIST-like statistics on a 3-channel run: every channel shifted and stretched, a quarter far out.
    wrong = ([0.1307] * 3, [0.3081] * 3)
    with pytest.raises(ClippingError, match=r"explicit statistics \(mean \[0.1307, 0.1307, 0.1307\], std "
                       r"\[0.3081, 0.3081, 0.3081\]\) clips \d+\.\d% of the values \(\d+ of 3072\) to 0..255, "
                       r"2\d\.\d% by more than 32 levels; more than 10% .*allow_clipping=True \(--allow-clipping\)"):
        import_distilled("mtt", src, tmp_path / "c.ladd", normalization=wrong)
    assert not (tmp_path / "c.ladd").exists()
    out = import_distilled("mtt", src, tmp_path / "c.ladd", normalization=wrong, allow_clipping=True)
    with ladd_format.open(out) as ds:
        details = ds.manifest.distillation.details
        assert details["clipping_allowed"] is True and details["clipped_far_fraction"] > 0.2
        assert details["clipped_fraction"] == pytest.approx(details["clipped_values"] / 3072)


@pytest.mark.parametrize("levels, share, refused", [(-32, 0.5, False), (287, 0.5, False), (-33, 0.09, False),
                                                     (-33, 0.11, True), (300, 0.11, True)])
def test_clipping_rule_counts_values_far_outside(tmp_path, levels, share, refused):
    """Distilled pixels overshoot: many a little is fine, more than 10% beyond 32 levels is not."""
    u8 = _uint8(1, c=1, size=10)
    x = _normalise(u8, ((0.5,), (0.25,)))
    x.view(-1)[:round(share * 100)] = (levels / 255 - 0.5) / 0.25
    src = _mtt_folder(tmp_path / "m", x, torch.tensor([0]))
    if refused:
        with pytest.raises(ClippingError, match=rf"clips {100 * share:.1f}% .* {100 * share:.1f}% by more than 32"):
            read_distilled("mtt", src, normalization=([0.5], [0.25]))
    else:
        d = read_distilled("mtt", src, normalization=([0.5], [0.25]))
        assert d.clipped == round(share * 100) and d.distillation["details"]["clipped_fraction"] == share


def test_missing_source_says_so(tmp_path):
    for kind in ("mtt", "dm", "folder"):
        with pytest.raises(InputNotFoundError, match=r"nonexistent: no such file or folder"):
            read_distilled(kind, tmp_path / "nonexistent", normalization="cifar10")
    with pytest.raises(FileNotFoundError):  # InputNotFoundError is a FileNotFoundError too
        read_distilled("mtt", tmp_path / "nonexistent", normalization="cifar10")
    (tmp_path / "run").mkdir()
    torch.save(torch.zeros(1), tmp_path / "run" / "images_7.pt")
    with pytest.raises(InputNotFoundError, match=r"no images_best.pt in this folder; give the images file as the "
                       r"source \(it holds images_7.pt\)"):
        read_distilled("mtt", tmp_path / "run", normalization="cifar10")
    torch.save(torch.zeros(1), tmp_path / "run" / "syn.pt")
    with pytest.raises(InvalidInputError, match=r"cannot tell the labels file.*pass labels= \(--labels on the "
                       r"command line\)"):
        read_distilled("mtt", tmp_path / "run" / "syn.pt", normalization="cifar10")


def _custom_pickle(path: Path) -> None:
    torch.save({"images": torch.zeros(1), "extra": _Custom()}, path)


def _plain_pickle(path: Path) -> None:
    path.write_bytes(pickle.dumps({"x": 1}))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("case, match", [
    ("images_3d", r"float \[M, C, H, W\]"),
    ("count_mismatch", "M = 4 images"),
    ("nan", "non-finite value at"),
    ("unknown_normalization", "unknown normalisation 'cifar11'"),
    ("no_normalization", r"pass normalization= with a name .*--normalization NAME or --mean/--std"),
    ("channel_mismatch", "'mnist' has 1 channels, the images have 3"),
    ("custom_class", "needs arbitrary unpickling.*_Custom.*not executed"),
    ("plain_pickle", "not a zip-format torch.save file.*plain pickles are refused"),
    ("not_probabilities", "must be probabilities"),
    ("float_hard_labels", r"must be \[M\] or \[M, K\]"),
    ("label_out_of_range", "label 10 is out of range for 10 classes"),
    ("missing_labels", "no such file"),
])
def test_malformed_inputs_are_refused_and_leave_nothing(tmp_path, case, match):
    u8 = _uint8(4)
    images, labels, norm = _normalise(u8, CIFAR10), torch.tensor([0, 1, 2, 3]), "cifar10"
    if case == "images_3d":
        images = images[:, 0]
    elif case == "count_mismatch":
        labels = labels[:3]
    elif case == "nan":
        images[1, 2, 3, 4] = float("nan")
    elif case == "unknown_normalization":
        norm = "cifar11"
    elif case == "no_normalization":
        norm = None
    elif case == "channel_mismatch":
        norm = "mnist"
    elif case == "not_probabilities":
        labels = torch.rand(4, 10)
    elif case == "float_hard_labels":
        labels = torch.rand(4, 10, 2)
    elif case == "label_out_of_range":
        labels = torch.tensor([0, 1, 2, 10])
    src = _mtt_folder(tmp_path / "src", images, labels)
    if case == "custom_class":
        _custom_pickle(src / "images_best.pt")
    elif case == "plain_pickle":
        _plain_pickle(src / "labels_best.pt")
    elif case == "missing_labels":
        (src / "labels_best.pt").unlink()
    (tmp_path / "out").mkdir()
    with pytest.raises(InvalidInputError, match=match):
        import_distilled("tesla", src, tmp_path / "out" / "c.ladd", normalization=norm)
    assert leftovers(tmp_path / "out") == []


def test_malformed_result_file_and_folder(tmp_path):
    torch.save({"data": []}, tmp_path / "res_DC.pt")
    with pytest.raises(InvalidInputError, match="non-empty 'data' list"):
        read_distilled("dc", tmp_path / "res_DC.pt", normalization="cifar10")
    torch.save([1, 2], tmp_path / "res_DM.pt")
    with pytest.raises(InvalidInputError, match="non-empty 'data' list"):
        read_distilled("dm", tmp_path / "res_DM.pt", normalization="cifar10")
    with pytest.raises(InvalidInputError, match="expected one res_\\*.pt file, found 2"):
        read_distilled("dc", tmp_path, normalization="cifar10")
    (tmp_path / "imgs" / "notanumber").mkdir(parents=True)
    with pytest.raises(InvalidInputError, match="does not end in a class number"):
        read_distilled("sre2l", tmp_path / "imgs")
    with pytest.raises(InvalidInputError, match="no images found"):
        read_distilled("folder", tmp_path / "imgs")
    with pytest.raises(InvalidInputError, match="unknown import kind"):
        read_distilled("mtt2", tmp_path)
    with pytest.raises(InvalidInputError, match=r"experiment= \(--experiment on the command line\) does not "
                       "apply to mtt; it is for dc, dsa, dm"):
        read_distilled("mtt", tmp_path, normalization="cifar10", experiment=1)
    (tmp_path / "outside.png").write_bytes(b"")
    for row, match in [("0,../outside.png,0,a", "is not a file inside"), ("0,x.png,cat,a", "not an integer >= 0")]:
        (tmp_path / "imgs" / "labels.csv").write_text(f"index,file,label,class_name\n{row}\n")
        with pytest.raises(InvalidInputError, match=match):
            read_distilled("folder", tmp_path / "imgs")


def _tiny_labeler(path: Path) -> Path:
    from ladd_format.labeler import Labeler, LabelerConfig
    from ladd_format.models import build_model

    torch.manual_seed(0)
    config = LabelerConfig(architecture="convnet", in_channels=1, num_classes=10, image_size=(28, 28), width=8,
                           depth=None, mean=(0.2861,), std=(0.3530,), source_dataset="fashion-mnist", training={})
    model = build_model("convnet", 1, 10, (28, 28), width=8)
    return Labeler(model, config, 1).save(path)


def test_cli_import_chains_into_a_labeler(tmp_path, capsys):
    from ladd_format.labeler import label_crops, load_labeler

    u8 = _uint8(3, c=1, size=28)
    probs = torch.softmax(torch.randn(3, 10, generator=torch.Generator().manual_seed(2)), 1)
    src = _mtt_folder(tmp_path / "t", _normalise(u8, NORMALIZATIONS["fashion-mnist"]), probs)
    checkpoint = _tiny_labeler(tmp_path / "labeler" / "epoch_01.pt")
    out = tmp_path / "c.ladd"
    assert _cli(["import", "tesla", str(src), str(out), "--normalization", "fashion-mnist",
                 "--labeler", str(checkpoint), "--n", "2"]) == 0
    printed = capsys.readouterr().out
    assert "0 values clipped" in printed and f"wrote {out}" in printed
    with ladd_format.open(out) as ds:
        m = ds.manifest
        want = label_crops(_nhwc(u8), load_labeler(checkpoint), sampler=ladd_format.UniformSampler(2),
                           progress=False)
        assert np.allclose(np.asarray(ds.dense_labels), want, atol=1 / 255)  # uint8 by default
        assert m.labeler.architecture == "convnet" and m.labeler.checkpoint_sha256 is not None
        assert m.distillation.details["soft_labels"]["stored_as"].startswith("not stored")
        assert ds.class_names[0] == "T-shirt/top"


def test_cli_import_explicit_stats_and_errors(tmp_path, capsys):
    u8 = _uint8(2, c=1, size=6)
    src = _mtt_folder(tmp_path / "m", _normalise(u8, ((0.5,), (0.5,))), torch.tensor([0, 1]))
    assert _cli(["import", "mtt", str(src), str(tmp_path / "c.ladd"), "--mean", "0.5", "--std", "0.5"]) == 0
    assert "explicit statistics; 0 values clipped" in capsys.readouterr().out
    with ladd_format.open(tmp_path / "c.ladd") as ds:
        assert np.array_equal(np.asarray(ds.images), _nhwc(u8))
    assert _cli(["import", "mtt", str(src), str(tmp_path / "d.ladd"), "--mean", "0.5"]) == 1
    err = capsys.readouterr().err
    assert "InvalidInputError" in err and "go together" in err
    assert _cli(["import", "mtt", str(src), str(tmp_path / "c.ladd"), "--mean", "0.5", "--std", "0.5"]) == 1
    err = capsys.readouterr().err
    assert "ContainerExistsError" in err


def test_cli_limits_take_sizes_with_units(tmp_path, capsys):
    src = _mtt_folder(tmp_path / "m", _normalise(_uint8(2), CIFAR10), torch.tensor([0, 1]))
    size = (src / "images_best.pt").stat().st_size
    assert _cli(["import", "mtt", str(src), str(tmp_path / "a.ladd"), "--normalization", "cifar10",
                 "--max-bytes", "0.5M", "--max-images", "1"]) == 0
    assert "wrote" in capsys.readouterr().out
    assert _cli(["import", "mtt", str(src), str(tmp_path / "b.ladd"), "--normalization", "cifar10",
                 "--max-bytes", str(size - 1)]) == 1
    assert f"is {size} bytes, over the limit max_bytes={size - 1}" in capsys.readouterr().err
    for text in ("64m", "2G", "1t"):
        assert _cli(["import", "mtt", str(src), str(tmp_path / f"{text}.ladd"), "--normalization", "cifar10",
                     "--max-bytes", text]) == 0


# -- bad command lines ----------------------------------------------------------------------


def _cli_fixtures(root: Path) -> None:
    """What the bad command lines below point at: an MTT run, a ZCA run, a DM file, a container,
    a class folder linking out of itself and labeler checkpoints that are not."""
    _mtt_folder(root / "mtt", _normalise(_uint8(4), CIFAR10), torch.tensor([0, 1, 2, 3]))
    _zca_run(root / "zca")
    torch.save({"data": [[_normalise(_uint8(2), CIFAR10), torch.tensor([0, 1])]]}, root / "res_DM.pt")
    ladd_format.testing.write_example(root / "c.ladd", num_classes=3, ipc=2, size=8)
    (root / "taken").mkdir()
    (root / "taken" / "mine.txt").write_text("keep")
    (root / "syn.pt").write_bytes(b"")
    for folder, name in (("linked/cls", "0.png"), ("secret", "s.png"), ("pics/cls", "0.png"), ("pics/cls", "1.png")):
        _save_images(root / folder, name, np.zeros((4, 4, 3), np.uint8))
    (root / "linked" / "cls" / "1.png").symlink_to(root / "secret" / "s.png")
    _bad_labelers(root / "labeler")


def _bad_labelers(folder: Path) -> None:
    """Checkpoints whose sidecar JSON vouches for them, holding a pickled object or random bytes,
    and a good checkpoint whose JSON lacks fields."""
    good = _tiny_labeler(folder / "good.pt")
    sidecar = json.loads(good.with_suffix(".pt.json").read_text())
    torch.save({"model": _Custom()}, folder / "pickled.pt")
    (folder / "noise.pt").write_bytes(np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    for name in ("pickled.pt", "noise.pt"):
        path = folder / name
        path.with_suffix(".pt.json").write_text(json.dumps(
            {**sidecar, "weights_sha256": hashlib.sha256(path.read_bytes()).hexdigest()}))
    (folder / "partial.pt").write_bytes(good.read_bytes())
    del sidecar["config"]["architecture"], sidecar["config"]["num_classes"]
    (folder / "partial.pt.json").write_text(json.dumps(sidecar))


_MTT = ["import", "mtt", "{t}/mtt", "{out}"]
BAD_COMMAND_LINES = [
    # (id, argv, exit code, a word the one stderr line must hold)
    ("src-missing", ["import", "mtt", "{t}/nonexistent", "{out}", "--normalization", "cifar10"], 1,
     "nonexistent: no such file or folder"),
    ("kind-unknown", ["import", "mtt2", "{t}/mtt", "{out}"], 2, "invalid choice: 'mtt2'"),
    ("no-statistics", _MTT, 1, "--normalization NAME or --mean/--std"),
    ("normalization-unknown", [*_MTT, "--normalization", "cifar11"], 1, "unknown normalisation 'cifar11'"),
    ("mean-without-std", [*_MTT, "--mean", "0.5,0.5,0.5"], 1, "--mean and --std go together"),
    ("mean-and-normalization", [*_MTT, "--mean", "0.5", "--std", "0.5", "--normalization", "cifar10"], 1,
     "not both"),
    ("mean-not-numbers", [*_MTT, "--mean", "a,b", "--std", "1,1"], 2, "expected a finite number, got 'a'"),
    ("mean-nan", [*_MTT, "--mean", "nan,0.5,0.5", "--std", "1,1,1"], 2, "expected a finite number, got 'nan'"),
    ("std-negative", [*_MTT, "--mean", "0.5,0.5,0.5", "--std=-0.2,0.2,0.2"], 2, "expected a number > 0"),
    ("std-zero", [*_MTT, "--mean", "0.5,0.5,0.5", "--std", "0.2,0,0.2"], 2, "expected a number > 0, got 0"),
    ("channels-wrong", [*_MTT, "--mean", "0.5", "--std", "0.5"], 1, "has 1 channels, the images have 3"),
    ("experiment-negative", ["import", "dm", "{t}/res_DM.pt", "{out}", "--normalization", "cifar10",
                             "--experiment", "-1"], 2, "expected an integer >= 0, got -1"),
    ("experiment-out-of-range", ["import", "dm", "{t}/res_DM.pt", "{out}", "--normalization", "cifar10",
                                 "--experiment", "1"], 1, "experiment 1 out of range"),
    ("experiment-for-mtt", [*_MTT, "--normalization", "cifar10", "--experiment", "1"], 1, "does not apply to mtt"),
    ("labels-for-dm", ["import", "dm", "{t}/res_DM.pt", "{out}", "--normalization", "cifar10", "--labels",
                       "{t}/mtt/labels_best.pt"], 1, "labels= (--labels on the command line) does not apply"),
    ("labels-unguessable", ["import", "mtt", "{t}/syn.pt", "{out}", "--normalization", "cifar10"], 1,
     "pass labels= (--labels on the command line)"),
    ("out-exists", ["import", "mtt", "{t}/mtt", "{t}/taken", "--normalization", "cifar10"], 1,
     "ContainerExistsError"),
    ("zca-folder-no-choice", ["import", "mtt", "{t}/zca", "{out}", "--normalization", "cifar10"], 1,
     "WhitenedImagesError"),
    ("zca-flag-no-inverse", ["import", "mtt", "{t}/zca", "{out}", "--normalization", "cifar10", "--zca"], 1,
     "--zca-inverse FILE.pt"),
    ("zca-inverse-missing", ["import", "mtt", "{t}/zca", "{out}", "--normalization", "cifar10", "--zca-inverse",
                             "{t}/nope.pt"], 1, "nope.pt: no such file"),
    ("zca-copy-with-inverse", ["import", "mtt", "{t}/zca/images_zca_1000.pt", "{out}", "--normalization", "cifar10",
                               "--zca-inverse", "{t}/zca_inverse.pt"], 1, "un-whitened copy"),
    ("clipping", [*_MTT, "--mean", "0.9,0.9,0.9", "--std", "0.5,0.5,0.5"], 1, "--allow-clipping"),
    ("zca-for-folders", ["import", "folder", "{t}/taken", "{out}", "--zca"], 1, "does not apply to folder"),
    ("folder-is-a-file", ["import", "sre2l", "{t}/syn.pt", "{out}"], 1, "not a folder"),
    ("n-zero", [*_MTT, "--normalization", "cifar10", "--n", "0"], 2, "expected an integer >= 1, got 0"),
    ("export-format-unknown", ["export", "{t}/c.ladd", "{out}", "--format", "tar"], 2, "invalid choice: 'tar'"),
    ("export-format-missing", ["export", "{t}/c.ladd", "{out}"], 2, "--format"),
    ("export-container-missing", ["export", "{t}/missing.ladd", "{out}", "--format", "npz"], 1, "missing.ladd"),
    ("export-out-exists", ["export", "{t}/c.ladd", "{t}/taken", "--format", "folder"], 1, "--overwrite"),
    ("export-normalized-folder", ["export", "{t}/c.ladd", "{out}", "--format", "folder", "--normalized"], 1,
     "--normalized on the command line"),
    ("labeler-pickled", [*_MTT, "--normalization", "cifar10", "--labeler", "{t}/labeler/pickled.pt"], 1,
     "needs unpickling, which could run code; refused"),
    ("labeler-noise", [*_MTT, "--normalization", "cifar10", "--labeler", "{t}/labeler/noise.pt"], 1,
     "LabelerError"),
    ("labeler-json-fields", [*_MTT, "--normalization", "cifar10", "--labeler", "{t}/labeler/partial.pt"], 1,
     "not a labeler description"),
    ("labeler-missing", [*_MTT, "--normalization", "cifar10", "--labeler", "{t}/labeler/none.pt"], 1,
     "no such labeler checkpoint"),
    ("folder-links-out", ["import", "folder", "{t}/linked", "{out}"], 1, "UnsafePathError"),
    ("max-bytes-exceeded", [*_MTT, "--normalization", "cifar10", "--max-bytes", "1K"], 1,
     "raise it with max_bytes= (--max-bytes on the command line)"),
    ("max-images-exceeded", ["import", "folder", "{t}/pics", "{out}", "--max-images", "1"], 1,
     "raise it with max_images= (--max-images on the command line)"),
    ("max-bytes-zero", [*_MTT, "--normalization", "cifar10", "--max-bytes", "0"], 2,
     "expected a size in bytes >= 1 such as 8G or 512M, got '0'"),
    ("max-bytes-words", [*_MTT, "--normalization", "cifar10", "--max-bytes", "lots"], 2, "got 'lots'"),
    ("max-images-zero", [*_MTT, "--normalization", "cifar10", "--max-images", "0"], 2,
     "expected an integer >= 1, got 0"),
]


@pytest.mark.parametrize("argv, code, says", [case[1:] for case in BAD_COMMAND_LINES],
                         ids=[case[0] for case in BAD_COMMAND_LINES])
def test_bad_command_lines_fail_in_one_line_and_write_nothing(tmp_path, capsys, argv, code, says):
    _cli_fixtures(tmp_path)
    before = leftovers(tmp_path)
    out = tmp_path / "out"
    try:
        got = _cli([a.format(t=tmp_path, out=out) for a in argv])
    except SystemExit as exc:  # argparse's usage errors
        got = exc.code
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert got == code and len(lines) == 1 and lines[0].strip(), captured.err
    assert says in lines[0] and "Traceback" not in captured.err and captured.out == ""
    assert lines[0].startswith(f"ladd {argv[0]}: ")
    assert not out.exists() and leftovers(tmp_path) == before
    assert leftovers(tmp_path / "taken") == ["mine.txt"]
