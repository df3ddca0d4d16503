"""Training states on disk: every RNG, atomically written, loaded with weights_only=True, checked against the run."""

from __future__ import annotations

import io
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmark.errors import SslBenchError
from benchmark.results import atomic_write_bytes

STATE_VERSION = 1
STATE_NAME = "train_state.pt"


def capture_rng() -> dict[str, Any]:
    """The state of Python's, numpy's, torch's CPU and every CUDA generator, in weights_only-loadable types."""
    kind, keys, position, has_gauss, cached = np.random.get_state()
    python_version, python_internal, python_gauss = random.getstate()
    state: dict[str, Any] = {
        "python": [python_version, list(python_internal), python_gauss],
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(position),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Put back what `capture_rng` saved."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    numpy_state = state["numpy"]
    np.random.set_state((numpy_state["kind"], numpy_state["keys"].numpy().astype(np.uint32), numpy_state["pos"],
                         numpy_state["has_gauss"], numpy_state["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_state(path: Path, state: dict[str, Any]) -> None:
    """torch.save into memory, then an atomic replace of `path`: a kill leaves the previous state whole."""
    buffer = io.BytesIO()
    torch.save({"version": STATE_VERSION, **state}, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_state(path: Path, identity: dict[str, Any]) -> dict[str, Any]:
    """A saved state, refused (SslBenchError naming the difference) when it was written by another run."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unreadable file is the same user-facing problem
        raise SslBenchError(f"training state {path} cannot be read ({type(error).__name__}); "
                            "delete it to start over, or run without --resume") from None
    if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
        raise SslBenchError(f"training state {path} is of another version; delete it or run without --resume")
    differences = describe_differences(state.get("identity", {}), identity)
    if differences:
        raise SslBenchError(f"--resume refused: training state {path} was written by another run "
                            f"({differences}); run without --resume to start over")
    return state


def refuse_foreign_states(folder: Path, protocol: str, own: Path, identity: dict[str, Any]) -> None:
    """On --resume without a state of this run: SslBenchError when a state of another run of the protocol exists.

    Each run keeps its state in a folder named by its settings, so a changed
    setting would otherwise start over silently instead of resuming.
    """
    if (own / STATE_NAME).is_file():
        return
    for other in sorted(folder.glob(f"{protocol}-*.artifacts/{STATE_NAME}")):
        try:
            saved = torch.load(other, map_location="cpu", weights_only=True).get("identity", {})
        except Exception:  # noqa: BLE001 - an unreadable foreign state says nothing about this run
            continue
        raise SslBenchError(f"--resume refused: the saved training state {other} was written by another run "
                            f"({describe_differences(saved, identity)}); repeat that run's settings to resume it, "
                            "or run without --resume to start this one")


def describe_differences(saved: dict[str, Any], current: dict[str, Any]) -> str:
    """'key: saved -> current' for every top-level key that differs, '' when none."""
    keys = sorted(set(saved) | set(current))
    return "; ".join(f"{key}: {_short(saved.get(key))} -> {_short(current.get(key))}"
                     for key in keys if saved.get(key) != current.get(key))


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
