"""Memory of the surface-normal evaluation: peak RSS against the size of the predictions.

    python perf/bench_normals.py [--images 60] [--height 480] [--width 640]

Each measurement runs in a fresh child process (so ru_maxrss is its own):
`held` keeps every prediction in memory as float32 (H, W, 3), the way a user
scoring their own arrays would, then pools the errors with NormalErrors;
`streamed` reads the predictions one .npy at a time, as the protocol does with
batches. Ground truth is drawn per image from a seed in both. FAIR's evaluation
concatenates float64 copies of every pixel (~150 GB on NYUv2); NormalErrors
spills float64 errors to a temporary file and selects the exact median from it.
Prints one `name=value (target ...)` line per figure.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def fields(i: int, height: int, width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Image i's ground truth, a prediction ~10-40 degrees off it, and a mask of ~90% of the pixels."""
    rng = np.random.default_rng(i)
    gt = rng.normal(size=(height, width, 3)).astype(np.float32)
    gt /= np.linalg.norm(gt, axis=-1, keepdims=True)
    pred = gt + rng.normal(scale=0.3, size=gt.shape).astype(np.float32)
    pred /= np.linalg.norm(pred, axis=-1, keepdims=True)
    return pred, gt, rng.random((height, width)) < 0.9


def child(mode: str, images: int, height: int, width: int, folder: Path) -> None:
    from protocols.normals_metrics import NormalErrors
    started = time.perf_counter()
    held = [np.load(folder / f"{i:04d}.npy") for i in range(images)] if mode == "held" else None
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    with NormalErrors(folder=folder) as errors:
        for i in range(images):
            _, gt, mask = fields(i, height, width)
            pred = held[i] if held is not None else np.load(folder / f"{i:04d}.npy")
            errors.add(pred, gt, mask)
        metrics = errors.result()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"peak": peak, "before_eval": before, "metrics": metrics,
                      "seconds": time.perf_counter() - started}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=60)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--child", choices=("held", "streamed"), help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.images, args.height, args.width, args.folder)
        return
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for i in range(args.images):
            np.save(folder / f"{i:04d}.npy", fields(i, args.height, args.width)[0])
        size = args.images * args.height * args.width * 3 * 4
        print(f"predictions={size / 2**20:.0f} MiB ({args.images} x {args.height}x{args.width}x3 float32)")
        baseline = json.loads(subprocess.run(
            [sys.executable, "-c", "import json, resource, numpy, protocols.normals_metrics; "
             "print(json.dumps(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024))"],
            cwd=ROOT, capture_output=True, text=True, check=True).stdout)
        print(f"interpreter_rss={baseline / 2**20:.0f} MiB (python + numpy, before any data)")
        for mode in ("held", "streamed"):
            out = subprocess.run([sys.executable, __file__, "--child", mode, "--images", str(args.images),
                                  "--height", str(args.height), "--width", str(args.width), "--folder", str(folder)],
                                 cwd=ROOT, capture_output=True, text=True, check=True)
            result = json.loads(out.stdout)
            print(f"{mode}_peak_rss_over_predictions={result['peak'] / size:.2f}x "
                  f"(peak {result['peak'] / 2**20:.0f} MiB; target <= 1.5x for held)  "
                  f"eval_added={(result['peak'] - result['before_eval']) / size:.2f}x  "
                  f"seconds={result['seconds']:.1f}  median={result['metrics']['median']:.4f}")


if __name__ == "__main__":
    main()
