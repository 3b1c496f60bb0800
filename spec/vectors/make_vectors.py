"""Generates the frozen v1.0 container vectors. Run once; never regenerate silently.

    python spec/vectors/make_vectors.py

It refuses to touch a vector that already exists: a change to a committed vector is a
format change and needs a new file under a new name (and a SPEC.md change log entry).
Each vector ``NAME`` comes with ``NAME.expected.npz`` (images, labels, dense_labels as
float32 probabilities, plus dense_values for logits vectors) and ``NAME.expected.json``
(the manifest fields a reader must report).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

import ladd_format

HERE = Path(__file__).parent / "v1.0"


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


def main() -> int:
    HERE.mkdir(parents=True, exist_ok=True)
    for name, v in _vectors().items():
        target = HERE / name
        if target.exists():
            print(f"{target} exists; left untouched (vectors are frozen)")
            continue
        ladd_format.write(target, v["images"], v["labels"], v["dense_labels"], **v["kwargs"])
        ds = ladd_format.open(target)
        arrays = dict(images=v["images"], labels=v["labels"].astype(np.int64),
                      dense_labels=np.asarray(ds.dense_labels))
        if ds.manifest.dense_labels.values == "logits":
            arrays["dense_values"] = v["dense_labels"]
        np.savez(HERE / f"{name}.expected.npz", **arrays)
        expected = ds.manifest.model_dump(mode="json", exclude={"created_by"})
        (HERE / f"{name}.expected.json").write_text(json.dumps(expected, indent=1, ensure_ascii=False) + "\n")
        ds.close()
        print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
