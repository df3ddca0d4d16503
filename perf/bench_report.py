"""Time `ssl-bench report` (every format) over 500 generated, schema-complete result records.

    python perf/bench_report.py [--checkpoints 50] [--knn-images 10000] [--voc-images 4952] [--profile]

50 checkpoints x 10 protocol variants (knn x 4 configs, voc07_svm x 3, lowshot
x 3), 6 taps each; knn keeps 0/1 correctness per test image for every tap,
voc07_svm keeps scores and labels (test images x 20 classes) for its best tap,
and every record its bootstrap statistics, written as the runner writes them
(JSON plus an .npz side file). Prints the time to only read the same records
and all their arrays as a reference measured in the same run, then
`report_seconds=... budget_seconds=10 ratio=... (target < 1.0)`.
"""

from __future__ import annotations

import argparse
import cProfile
import hashlib
import json
import pstats
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmark.bootstrap import precompute
from benchmark.results import SCHEMA_VERSION, ResultStore
from reports.report import FORMATS, build_report

BUDGET_SECONDS = 10.0
TAPS = ("conv1", "res2", "res3", "res4", "res5", "res5avg")
DEPTH = np.array([0.35, 0.55, 0.7, 0.85, 1.0, 0.97])  # how good each tap is, relative to the best
VOC_CLASSES = 20
LOWSHOT_KS = (1, 2, 4, 8, 16, 32, 64, 96)
PRIMARY = {"knn": "top1_k20", "voc07_svm": "mAP", "lowshot": "mAP_k96_mean"}
VARIANTS = ([("knn", {"ks": [10, 20, 100, 200], "temperature": t, "normalize": n})
             for t, n in ((0.07, True), (0.1, True), (0.07, False), (0.1, False))]
            + [("voc07_svm", {"costs": c, "folds": 3, "train_difficult": d})
               for c, d in (("vissl", "negative"), ("fair", "negative"), ("vissl", "exclude"))]
            + [("lowshot", {"ks": list(LOWSHOT_KS), "samples": 5, "select": s, "costs": c})
               for s, c in (("test", "vissl"), ("heldout", "vissl"), ("test", "fair"))])


def base_record(name: str, protocol: str, config: dict[str, Any], variant: int, dataset: str,
                n_test: int) -> dict[str, Any]:
    """Everything a runner record has, with made-up provenance."""
    return {
        "schema_version": SCHEMA_VERSION,
        "checkpoint": {"name": name, "spec": f"/ckpts/{name}.pth", "path": f"/ckpts/{name}.pth",
                       "sha256": hashlib.sha256(name.encode()).hexdigest(), "format": "torchvision", "arch": "resnet50"},
        "protocol": {"name": protocol, "version": "1", "primary_metric": PRIMARY[protocol],
                     "metrics": declared_metrics(protocol, config)},
        "config": config, "config_digest": f"{variant:012x}",
        "dataset": {"name": dataset, "digest": f"{dataset}-digest", "splits": {"test": n_test}, "limit": None,
                    "root": f"/data/{dataset}"},
        "taps": list(TAPS),
        "preprocessing": {"size": 224, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
                          "transform": "Resize(256) CenterCrop(224)", "pooling": {t: "avg" for t in TAPS}},
        "seed": 0, "versions": {"ssl_bench": "bench", "torch": "bench"},
        "device": {"type": "cuda", "name": "bench", "distributed": False, "torch_threads": 8},
        "timings": {"load_s": 1.0, "extract_s": 100.0, "protocol_s": 10.0, "total_s": 111.0},
        "created": "2026-01-01T00:00:00+00:00", "resumed_pieces": 0,
    }


def declared_metrics(protocol: str, config: dict[str, Any]) -> list[dict[str, Any]]:
    """protocol.metrics as the runner writes it: every metric the made-up protocol reports, spreads undirected."""
    names = {"knn": [f"top{n}_k{k}" for k in config.get("ks", ()) for n in (1, 5)],
             "voc07_svm": ["mAP", "mAP_11pt"],
             "lowshot": [f"mAP_k{k}_{stat}" for k in config.get("ks", ()) for stat in ("mean", "std", "min", "max")]}
    return [{"name": name, "higher_is_better": None if name.endswith("_std") else True,
             "primary": name == PRIMARY[protocol]} for name in names[protocol]]


def knn_record(rng: np.random.Generator, record: dict[str, Any], quality: float, labels: np.ndarray
               ) -> dict[str, Any]:
    n = len(labels)
    per_image, metrics = {}, {}
    for tap, depth in zip(TAPS, DEPTH):
        correct = (rng.random(n) < quality * depth).astype(int)
        accuracy = 100.0 * correct.mean()
        metrics[tap] = {f"top1_k{k}": accuracy - abs(k - 20) / 100 for k in (10, 20, 100, 200)}
        metrics[tap].update({f"top5_k{k}": min(100.0, accuracy + 15) for k in (10, 20, 100, 200)})
        per_image[tap] = {"k": 20, "correct_top1": correct.astype(np.int8)}
    return {**record, "metrics": metrics, "details": {"per_image": per_image}}


def voc_record(rng: np.random.Generator, record: dict[str, Any], quality: float, labels: np.ndarray,
               ids: list[str]) -> dict[str, Any]:
    from protocols.metrics import mean_average_precision

    metrics, scores_of = {}, {}
    for tap, depth in zip(TAPS, DEPTH):
        scores = scores_of[tap] = ((labels == 1) * quality * depth * 2
                                   + rng.standard_normal(labels.shape)).astype(np.float32)
        value = 100.0 * mean_average_precision(scores, labels)[0]
        metrics[tap] = {"mAP": value, "mAP_11pt": value - 1.0}
    best = max(TAPS, key=lambda t: metrics[t]["mAP"])
    scores = scores_of[best]
    classes = [f"class{c}" for c in range(VOC_CLASSES)]
    return {**record, "metrics": metrics, "details": {"per_image": {
        "tap": best, "ids": ids,
        "scores": {c: scores[:, i].astype(np.float32) for i, c in enumerate(classes)},
        "labels": {c: labels[:, i].astype(np.int8) for i, c in enumerate(classes)}}}}


def lowshot_record(rng: np.random.Generator, record: dict[str, Any], quality: float) -> dict[str, Any]:
    metrics = {}
    for tap, depth in zip(TAPS, DEPTH):
        metrics[tap] = {}
        for k in LOWSHOT_KS:
            samples = 100 * quality * depth * (1 - 0.5 / np.sqrt(k)) + rng.normal(0, 2 / np.sqrt(k), 5)
            metrics[tap].update({f"mAP_k{k}_{stat}": float(getattr(np, stat)(samples))
                                 for stat in ("mean", "std", "min", "max")})
    return {**record, "metrics": metrics, "details": {"per_k": {}}}


def write_records(root: Path, checkpoints: int, knn_images: int, voc_images: int, seed: int = 0) -> int:
    rng = np.random.default_rng(seed)
    store = ResultStore(root)
    knn_labels = rng.integers(0, 100, knn_images)
    voc_labels = (rng.random((voc_images, VOC_CLASSES)) < 0.08).astype(int)
    voc_labels[rng.random(voc_labels.shape) < 0.02] = -1
    voc_labels[0] = 1  # every class has a positive
    voc_ids = np.array([f"{i:06d}" for i in range(voc_images)])
    count = 0
    for c in range(checkpoints):
        name = f"ckpt-{c:03d}"
        quality = 0.5 + 0.4 * rng.random()
        for v, (protocol, config) in enumerate(VARIANTS):
            dataset = {"knn": "imagenet_val", "voc07_svm": "voc2007", "lowshot": "voc2007"}[protocol]
            n_test = {"knn": knn_images}.get(protocol, voc_images)
            record = base_record(name, protocol, config, v, dataset, n_test)
            if protocol == "knn":
                record = knn_record(rng, record, quality, knn_labels)
            elif protocol == "voc07_svm":
                record = voc_record(rng, record, quality, voc_labels, voc_ids)
            else:
                record = lowshot_record(rng, record, quality)
            bootstrap = precompute(record)  # as the runner does
            if bootstrap is not None:
                record["bootstrap"] = bootstrap
            store.write(record)
            count += 1
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoints", type=int, default=50)
    parser.add_argument("--knn-images", type=int, default=10000)
    parser.add_argument("--voc-images", type=int, default=4952)
    parser.add_argument("--profile", action="store_true", help="print the 25 costliest calls of build_report")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        results, out = Path(tmp) / "results", Path(tmp) / "report"
        tick = time.perf_counter()
        count = write_records(results, args.checkpoints, args.knn_images, args.voc_images)
        json_mib = sum(p.stat().st_size for p in results.rglob("*.json")) / 2**20
        npz_mib = sum(p.stat().st_size for p in results.rglob("*.npz")) / 2**20
        print(f"records={count} json_mib={json_mib:.1f} side_files_mib={npz_mib:.0f} "
              f"(written in {time.perf_counter() - tick:.1f} s)")

        tick = time.perf_counter()
        for path in results.rglob("*.json"):
            json.loads(path.read_text())
        for path in results.rglob("*.npz"):
            with np.load(path) as arrays:
                for name in arrays.files:
                    arrays[name]
        read_seconds = time.perf_counter() - tick
        print(f"read_seconds={read_seconds:.2f} (reference: reading the same records and all their arrays, "
              "no report)")

        profiler = cProfile.Profile() if args.profile else None
        tick = time.perf_counter()
        if profiler:
            profiler.enable()
        written = build_report([results], out, formats=FORMATS, references=True)
        if profiler:
            profiler.disable()
        seconds = time.perf_counter() - tick
        print(f"files_written={len(written)}")
        print(f"report_seconds={seconds:.2f} budget_seconds={BUDGET_SECONDS:.0f} "
              f"ratio={seconds / BUDGET_SECONDS:.2f} (target < 1.0)")
        if profiler:
            pstats.Stats(profiler).sort_stats("cumulative").print_stats(25)


if __name__ == "__main__":
    main()
