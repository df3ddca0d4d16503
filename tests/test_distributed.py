"""torchrun helpers in one process, and a 2-process gloo extraction equal to a single-process one."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from benchmark import distributed
from benchmark.features import FeatureExtractor
from benchmark.meters import MetricLogger, SmoothedValue
from test_features import ORDER, TinyImages, identity, tiny_net


def test_single_process_defaults(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert distributed.init_distributed() is False
    assert (distributed.get_rank(), distributed.get_world_size()) == (0, 1)
    assert distributed.is_main_process() and not distributed.is_distributed()
    distributed.barrier()
    distributed.save_on_main({"a": torch.ones(2)}, tmp_path / "x.pt")
    assert torch.equal(torch.load(tmp_path / "x.pt")["a"], torch.ones(2))
    assert distributed.all_gather_objects(["res2"]) == [["res2"]]


def test_gather_rows_places_rows_by_index_and_tolerates_repeats() -> None:
    order = np.array([3, 0, 4, 1, 2, 3])  # image 3 seen twice, as DistributedSampler pads
    rows = np.stack([[10.0 * i, i + 0.5] for i in order]).astype(np.float32)
    out = distributed.gather_rows(rows, order, total=5)
    np.testing.assert_array_equal(out, [[10.0 * i, i + 0.5] for i in range(5)])
    assert out.dtype == np.float32
    with pytest.raises(RuntimeError, match="1 of 6 positions received no row"):
        distributed.gather_rows(rows, order, total=6)


def _extract_on_rank(rank: int, world_size: int, tmp: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    assert distributed.init_distributed(init_method=f"file://{tmp}/rendezvous")
    try:
        assert distributed.get_rank() == rank and distributed.get_world_size() == world_size
        net = tiny_net()
        extractor = FeatureExtractor(net, "ckpt", torch.device("cpu"), Path(tmp) / "cache", batch_size=2)
        fs = extractor.extract(TinyImages(n=7), "train", ORDER, identity, "id")
        meter = SmoothedValue()
        meter.update(rank + 1.0, n=rank + 1)
        meter.synchronize()
        np.savez(Path(tmp) / f"rank{rank}.npz", forwards=len(net.requested), synced=[meter.count, meter.total],
                 **fs.features)
        distributed.barrier()
    finally:
        dist.destroy_process_group()


def test_two_gloo_processes_match_one(tmp_path) -> None:
    mp.spawn(_extract_on_rank, args=(2, str(tmp_path)), nprocs=2, join=True)
    single = FeatureExtractor(tiny_net(), "ckpt", torch.device("cpu"), None, batch_size=2).extract(
        TinyImages(n=7), "train", ORDER, identity, "id")
    for rank in range(2):
        with np.load(tmp_path / f"rank{rank}.npz") as got:
            assert got["forwards"] == 2  # its shard: 4 of the 7 images padded to 8, in batches of 2
            np.testing.assert_array_equal(got["synced"], [1 + 2, 1 * 1 + 2 * 2])
            for tap in ORDER:
                assert got[tap].shape == single.features[tap].shape
                np.testing.assert_allclose(got[tap], single.features[tap], rtol=1e-6, atol=1e-7)
    cache = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert len(cache) == len(ORDER) and all(name.endswith(".npy") for name in cache)
    net = tiny_net()
    cached = FeatureExtractor(net, "ckpt", torch.device("cpu"), tmp_path / "cache", batch_size=2).extract(
        TinyImages(n=7), "train", ORDER, identity, "id")
    assert net.requested == []
    np.testing.assert_allclose(cached.features["res3"], single.features["res3"], rtol=1e-6, atol=1e-7)


def test_smoothed_value_matches_statistics() -> None:
    values = [3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0]
    meter = SmoothedValue(window=4)
    for v in values:
        meter.update(v, n=2)
    assert meter.median == float(np.median(values[-4:])) and meter.avg == float(np.mean(values[-4:]))
    assert meter.global_avg == pytest.approx(np.mean(values)) and meter.count == 14
    assert meter.value == 2.0
    meter.synchronize()  # a single process: unchanged
    assert meter.count == 14 and meter.total == pytest.approx(2 * sum(values))


def test_metric_logger_logs_every_n_steps_and_at_the_end() -> None:
    lines: list[str] = []
    logger = MetricLogger(lines.append)
    for step in logger.log_every(range(5), every=2, header="epoch 0"):
        logger.update(loss=torch.tensor(float(step)), lr=0.1)
    assert [line.split()[2] for line in lines[:-1]] == ["[2/5]", "[4/5]", "[5/5]"]
    assert "loss: 2.0000 (2.0000)" in lines[-2] and "lr: 0.1000 (0.1000)" in lines[-2]
    assert lines[-1].startswith("epoch 0 done: 5 steps in")
    assert logger["loss"].global_avg == 2.0
