"""Generates the frozen container vectors (v1.0/, v1.1/, v1.2/, v1.3/, v1.4/). Run once; never regenerate silently.

    python spec/vectors/make_vectors.py

It refuses to touch a vector that already exists: a change to a committed vector is a
format change and needs a new file under a new name (and a SPEC.md change log entry).
Each vector ``NAME`` comes with ``NAME.expected.npz`` (images, labels, dense_labels as
float32 probabilities, plus dense_values for logits vectors) and ``NAME.expected.json``
(the manifest fields a reader must report). v1.1 vectors also hold ``stored_NAME`` for every
stored dense array (the bytes a reader must decode) and a folder's ``SHA256SUMS`` is written
with its first vectors.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np

import ladd_format

ROOT = Path(__file__).parent


def _probs(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    z = rng.normal(0, 2, shape)
    e = np.exp(z - z.max(-1, keepdims=True))
    return (e / e.sum(-1, keepdims=True)).astype(np.float32)


def _vectors() -> dict[str, dict]:
    rng = np.random.default_rng(20261126)
    basic_images = rng.integers(0, 256, (6, 8, 8, 3), dtype=np.uint8)
    gray_images = rng.integers(0, 256, (4, 10, 12, 1), dtype=np.uint8)
    logits_images = rng.integers(0, 256, (3, 9, 9, 3), dtype=np.uint8)
    return {
        "basic_float32.ladd": dict(
            images=basic_images, labels=np.array([0, 0, 1, 1, 2, 2]), dense_labels=_probs(rng, (6, 25, 3)),
            kwargs=dict(encoding="float32", compression="zstd")),
        "gray_float16.ladd.zip": dict(
            images=gray_images, labels=np.array([3, 0, 2, 1]), dense_labels=_probs(rng, (4, 25, 4)),
            kwargs=dict(encoding="float16", compression="gzip", class_names=["T-shirt", "Trouser", "Été", "Ω"],
                        mean=[0.2861], std=[0.353],
                        labeler={"architecture": "ConvNetD3", "epochs": 10, "source_dataset": "fashion-mnist",
                                 "training": {"optimizer": "sgd", "lr": 0.01, "batch_size": 256},
                                 "checkpoint_sha256": "ab" * 32},
                        distillation={"method": "random-real", "source_dataset": "fashion-mnist", "ipc": 1},
                        extra={"note": "frozen vector", "numbers": [1, 2.5, -3e-7, 1e21]})),
        "logits_raw.ladd": dict(
            images=logits_images, labels=np.array([1, 0, 1]),
            dense_labels=rng.normal(0, 3, (3, 9, 2)).astype(np.float32),
            kwargs=dict(encoding="float32", compression=None, values="logits", temperature=2.0,
                        sampler={"n": 3, "ratio": 0.5})),
    }


def _vectors_v11() -> dict[str, dict]:
    """One container per encoding added in format 1.1, with ties, zeros and uint16 indices."""
    rng = np.random.default_rng(20261127)
    ties = _probs(rng, (5, 9, 5))
    ties[0, 0] = [0.25, 0.25, 0.25, 0.25, 0.0]  # exact ties and an empty class
    ties[0, 1] = [1.0, 0.0, 0.0, 0.0, 0.0]
    ties[1, 0] = [0.0, 0.5, 0.5, 0.0, 0.0]  # 127.5 each: the left-over unit goes to the lower class
    many = _probs(rng, (3, 4, 300))
    many[0, 0] = 1 / 300  # flat: top-k by the lowest class indices
    return {
        "uint8_probs.ladd": dict(
            images=rng.integers(0, 256, (5, 8, 8, 3), dtype=np.uint8), labels=np.array([0, 1, 2, 3, 4]),
            dense_labels=ties, kwargs=dict(encoding="uint8", compression="zstd", sampler={"n": 3})),
        "uint16_probs.ladd.zip": dict(
            images=rng.integers(0, 256, (4, 10, 12, 1), dtype=np.uint8), labels=np.array([3, 0, 2, 1]),
            dense_labels=_probs(rng, (4, 4, 4)),
            kwargs=dict(encoding="uint16", compression="gzip", sampler={"n": 2, "ratio": 0.5})),
        "topk_smoothing.ladd": dict(
            images=rng.integers(0, 256, (3, 6, 6, 1), dtype=np.uint8), labels=np.array([299, 0, 150]),
            dense_labels=many,
            kwargs=dict(encoding="topk", encoding_params={"k": 4, "rule": "smoothing"}, compression="zstd",
                        sampler={"n": 2})),
        "topk_renorm.ladd.zip": dict(
            images=rng.integers(0, 256, (5, 8, 8, 3), dtype=np.uint8), labels=np.array([0, 1, 2, 3, 4]),
            dense_labels=ties, kwargs=dict(encoding="topk", encoding_params={"k": 2, "rule": "renorm"},
                                           compression=None, sampler={"n": 3})),
    }


def _vectors_v12() -> dict[str, dict]:
    """A container whose labeler uses the members added in format 1.2."""
    rng = np.random.default_rng(20261128)
    return {
        "teacher_uint8.ladd": dict(
            images=rng.integers(0, 256, (4, 8, 8, 3), dtype=np.uint8), labels=np.array([0, 1, 2, 0]),
            dense_labels=_probs(rng, (4, 9, 3)),
            kwargs=dict(encoding="uint8", compression="zstd", sampler={"n": 3}, mean=[0.5, 0.5, 0.5],
                        std=[0.25, 0.25, 0.25],
                        labeler={"architecture": "torchvision:resnet18", "epochs": None,
                                 "source_dataset": "imagenet", "checkpoint_sha256": "cd" * 32,
                                 "input_size": [24, 16], "mean": [0.485, 0.456, 0.406],
                                 "std": [0.229, 0.224, 0.225], "weights": "file:resnet18-f37072fd.pth"})),
    }


def _vectors_v13() -> dict[str, dict]:
    """A container whose manifest has the ``publication`` member added in format 1.3."""
    rng = np.random.default_rng(20261129)
    return {
        "published_uint8.ladd.zip": dict(
            images=rng.integers(0, 256, (4, 8, 8, 3), dtype=np.uint8), labels=np.array([0, 1, 2, 1]),
            dense_labels=_probs(rng, (4, 9, 3)),
            kwargs=dict(encoding="uint8", compression="zstd", sampler={"n": 3}, class_names=["cat", "dog", "owl"],
                        distillation={"method": "random-real", "source_dataset": "synthetic"},
                        publication={"license": "CC-BY-4.0", "authors": ["Ada Lovelace", "Émile Noël"],
                                     "citation": "@misc{ladd_vector,\n  title = {A frozen LADD vector},\n"
                                                 "  author = {Lovelace, Ada and No\\\"{e}l, \u00c9mile},\n"
                                                 "  year = {2026}\n}",
                                     "homepage": "https://example.org/ladd/vector?v=1.3",
                                     "description": "Four random images; the format's 1.3 vector."})),
    }


def _vectors_v14() -> dict[str, dict]:
    """The ``coarse`` encoding added in format 1.4: ties, an empty class, one-hot rows, S = 1."""
    rng = np.random.default_rng(20261130)
    ties = _probs(rng, (5, 9, 5))
    ties[0, 0] = [0.25, 0.25, 0.25, 0.25, 0.0]  # 3.75 each at S = 15: the three left-over units to classes 0-2
    ties[0, 1] = [1.0, 0.0, 0.0, 0.0, 0.0]
    ties[1, 0] = [0.0, 0.5, 0.5, 0.0, 0.0]  # 7.5 each: the left-over unit goes to the lower class
    tied_top = _probs(rng, (4, 4, 4))
    tied_top[2, 3] = [0.1, 0.45, 0.45, 0.0]  # S = 1: the one unit goes to the lower of the tied classes
    return {
        "coarse_s15.ladd": dict(
            images=rng.integers(0, 256, (5, 8, 8, 3), dtype=np.uint8), labels=np.array([0, 1, 2, 3, 4]),
            dense_labels=ties, kwargs=dict(encoding="coarse", encoding_params={"scale": 15}, compression="zstd",
                                           sampler={"n": 3})),
        "coarse_s1.ladd.zip": dict(
            images=rng.integers(0, 256, (4, 10, 12, 1), dtype=np.uint8), labels=np.array([3, 0, 2, 1]),
            dense_labels=tied_top, kwargs=dict(encoding="coarse", encoding_params={"scale": 1}, compression="gzip",
                                               sampler={"n": 2, "ratio": 0.5})),
    }


def _write_vector(folder: Path, name: str, v: dict) -> None:
    target = folder / name
    kwargs = dict(v["kwargs"])
    publication = kwargs.pop("publication", None)
    if publication is None:
        ladd_format.write(target, v["images"], v["labels"], v["dense_labels"], **kwargs)
    else:  # the writer sets publication through a copy that keeps every stored array
        import tempfile

        from ladd_format.publish import copy_container

        with tempfile.TemporaryDirectory() as tmp:
            plain = ladd_format.write(Path(tmp) / "plain.ladd", v["images"], v["labels"], v["dense_labels"],
                                      **kwargs)
            copy_container(plain, target, publication=publication, compression=kwargs.get("compression", "zstd"))
    with ladd_format.open(target) as ds:
        arrays = dict(images=v["images"], labels=v["labels"].astype(np.int64),
                      dense_labels=np.asarray(ds.dense_labels))
        if ds.manifest.dense_labels.values == "logits":
            arrays["dense_values"] = v["dense_labels"]
        if folder.name != "v1.0":
            arrays.update({f"stored_{a}": np.asarray(ds._arrays[a][:]) for a in ds.manifest.arrays
                           if a not in ("images", "labels")})
        np.savez(folder / f"{name}.expected.npz", **arrays)
        expected = ds.manifest.model_dump(mode="json", exclude={"created_by"})
    (folder / f"{name}.expected.json").write_text(json.dumps(expected, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {target}")


def _write_sums(folder: Path) -> None:
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != "SHA256SUMS")
    lines = [f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.relative_to(folder).as_posix()}" for p in files]
    (folder / "SHA256SUMS").write_text("\n".join(lines) + "\n")


def main() -> int:
    for version, vectors in (("v1.0", _vectors()), ("v1.1", _vectors_v11()), ("v1.2", _vectors_v12()),
                             ("v1.3", _vectors_v13()), ("v1.4", _vectors_v14())):
        folder = ROOT / version
        folder.mkdir(parents=True, exist_ok=True)
        for name, v in vectors.items():
            if (folder / name).exists():
                print(f"{folder / name} exists; left untouched (vectors are frozen)")
            else:
                _write_vector(folder, name, v)
        if not (folder / "SHA256SUMS").exists():
            _write_sums(folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
