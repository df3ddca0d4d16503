"""kNN protocol: the faiss head against a float64 brute force, the protocol on a fake context."""

from __future__ import annotations

import re

import faiss
import numpy as np
import pytest
from fakes import fake_context
import torch

from benchmark.bootstrap import evidence_for
from benchmark.config import build_config
from benchmark.errors import SslBenchError
from benchmark.protocol import RunContext
from protocols.knn import KnnConfig, KnnProtocol, WeightedKnn, true_class_rank

KS = (1, 5, 10, 20, 100, 200)
T = 0.07


def brute_force_scores(X: np.ndarray, y: np.ndarray, Q: np.ndarray, k: int, temperature: float,
                       normalize: bool, n_classes: int) -> np.ndarray:
    """Reference: full float64 similarity matrix, sort, exp(sim / T) votes."""
    X, Q = X.astype(np.float64), Q.astype(np.float64)
    if normalize:
        X = X / np.linalg.norm(X, axis=1, keepdims=True)
        Q = Q / np.linalg.norm(Q, axis=1, keepdims=True)
    sims = Q @ X.T
    order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    scores = np.zeros((len(Q), n_classes))
    for i in range(len(Q)):
        for j in order[i]:
            scores[i, y[j]] += np.exp(sims[i, j] / temperature)
    return scores


def ranked(scores: np.ndarray) -> np.ndarray:
    return np.argsort(-scores, axis=1, kind="stable")


@pytest.fixture(scope="module")
def random_problem() -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(0)
    X = rng.standard_normal((600, 32)).astype(np.float32)
    y = rng.integers(0, 5, 600)
    Q = rng.standard_normal((150, 32)).astype(np.float32)
    q_labels = rng.integers(0, 5, 150)
    return X, y, Q, q_labels


@pytest.mark.parametrize("normalize", [True, False])
def test_weighted_knn_matches_brute_force(random_problem, normalize: bool) -> None:
    X, y, Q, q_labels = random_problem
    knn = WeightedKnn(k_max=max(KS), temperature=T, normalize=normalize, chunk_size=1024).fit(X, y)
    sims, idx = knn.kneighbors(Q)
    for k in KS:
        ours = knn.vote(sims, idx, k)
        ref = brute_force_scores(X, y, Q, k, T, normalize, 5)
        np.testing.assert_array_equal(ranked(ours)[:, 0], ranked(ref)[:, 0])
        np.testing.assert_array_equal(ranked(ours)[:, :5], ranked(ref)[:, :5])
        # same votes up to the per-query overflow guard factor
        np.testing.assert_allclose(ours / ours.sum(1, keepdims=True),
                                   ref / ref.sum(1, keepdims=True), rtol=1e-4, atol=1e-9)
        ref_top1 = np.mean(ref.argmax(1) == q_labels)
        ref_top5 = np.mean([q_labels[i] in ranked(ref)[i, :5] for i in range(len(Q))])
        rank = true_class_rank(ours, q_labels)
        assert np.mean(rank < 1) == ref_top1
        assert np.mean(rank < 5) == ref_top5 == 1.0  # 5 classes: top-5 holds every class
        np.testing.assert_array_equal(knn.predict(Q, k), ref.argmax(1))


def test_accuracy_is_not_trivial(random_problem) -> None:
    X, y, Q, q_labels = random_problem
    knn = WeightedKnn(k_max=20, temperature=T).fit(X, y)
    top1 = np.mean(knn.predict(Q, 20) == q_labels)
    assert 0.0 < top1 < 0.6  # random labels: near chance, so the comparison above is not vacuous


def test_neighbours_match_sorted_similarities(random_problem) -> None:
    X, y, Q, _ = random_problem
    knn = WeightedKnn(k_max=50, temperature=T).fit(X, y)
    sims, idx = knn.kneighbors(Q)
    Xn = X / np.linalg.norm(X, axis=1, keepdims=True)
    Qn = Q / np.linalg.norm(Q, axis=1, keepdims=True)
    full = Qn.astype(np.float64) @ Xn.T.astype(np.float64)
    np.testing.assert_allclose(sims, -np.sort(-full, axis=1)[:, :50], atol=1e-5)
    np.testing.assert_array_equal(idx, np.argsort(-full, axis=1, kind="stable")[:, :50])


def test_chunked_search_equals_one_chunk(random_problem) -> None:
    X, y, Q, _ = random_problem
    one = WeightedKnn(k_max=100, temperature=T, chunk_size=10_000).fit(X, y)
    many = WeightedKnn(k_max=100, temperature=T, chunk_size=7).fit(X, y)
    calls = []
    original = faiss.IndexFlatIP.search

    def counting_search(index, x, k, *args, **kwargs):
        calls.append(len(x))
        return original(index, x, k, *args, **kwargs)

    faiss.IndexFlatIP.search = counting_search
    try:
        for a, b in zip(one.kneighbors(Q), many.kneighbors(Q)):
            np.testing.assert_array_equal(a, b)
    finally:
        faiss.IndexFlatIP.search = original
    assert calls == [150] + [7] * 21 + [3]
    np.testing.assert_array_equal(one.predict_scores(Q, 100), many.predict_scores(Q, 100))


def test_search_runs_in_a_faiss_index(random_problem, monkeypatch) -> None:
    X, y, _, _ = random_problem
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # CUDA without GPU faiss: CPU index
    knn = WeightedKnn(k_max=10, temperature=T, use_gpu=True).fit(X, y)
    assert isinstance(knn.bank_, faiss.IndexFlatIP)
    assert knn.bank_.ntotal == 600 and knn.bank_.d == 32
    assert knn.device_ == ("gpu" if faiss.get_num_gpus() > 0 else "cpu")
    assert knn.n_classes_ == 5 and knn.k_ == 10


def test_params_stored_unchanged_and_k_clipped() -> None:
    rng = np.random.default_rng(1)
    knn = WeightedKnn(k_max=200, temperature=0.1, normalize=False, chunk_size=3, use_gpu=False)
    assert (knn.k_max, knn.temperature, knn.normalize, knn.chunk_size, knn.use_gpu) == (
        200, 0.1, False, 3, False)
    knn.fit(rng.standard_normal((40, 4)), rng.integers(0, 3, 40))
    sims, idx = knn.kneighbors(rng.standard_normal((9, 4)))
    assert knn.k_ == 40 and sims.shape == idx.shape == (9, 40) and (idx >= 0).all()
    with pytest.raises(ValueError, match="k: expected 1..200"):
        knn.vote(sims, idx, 201)


def test_true_class_rank_ties_and_unknown_labels() -> None:
    scores = np.array([[0.0, 2.0, 0.0, 1.0], [3.0, 3.0, 0.0, 0.0]])
    np.testing.assert_array_equal(true_class_rank(scores, np.array([3, 1])), [1, 1])
    np.testing.assert_array_equal(true_class_rank(scores, np.array([2, 7])), [3, 4])


# --- the protocol on a fake run context -------------------------------------------------------

def clusters(n_classes: int, per_class: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(123).standard_normal((n_classes, dim)) * 10
    y = np.repeat(np.arange(n_classes), per_class)
    X = centres[y] + rng.standard_normal((len(y), dim))
    return X.astype(np.float32), y


def make_ctx(tmp_path, taps, splits, calls=None, chunks=None) -> RunContext:
    """A fake context that also records the progress descriptions in `chunks`."""
    def progress(iterable, **kwargs):
        for item in iterable:
            if chunks is not None:
                chunks.append(kwargs["desc"])
            yield item

    return fake_context(tmp_path, taps, splits, calls=calls, progress=progress)


def test_protocol_on_separated_clusters(tmp_path) -> None:
    splits = {"train": clusters(10, 30, 16, 1), "test": clusters(10, 10, 16, 2)}
    chunks: list[str] = []
    ctx = make_ctx(tmp_path, ["res5avg"], splits, chunks=chunks)
    result = KnnProtocol().run(ctx, KnnConfig(chunk_size=32))
    metrics = result.metrics["res5avg"]
    assert set(metrics) == {f"top{t}_k{k}" for t in (1, 5) for k in (10, 20, 100, 200)}
    assert all(v == pytest.approx(100.0) for v in metrics.values())
    assert chunks == ["knn res5avg"] * 4  # 100 queries in chunks of 32
    assert result.details["normalize"] is True and result.details["temperature"] == 0.07
    assert result.details["ks_clipped"] == {}
    assert result.details["search"]["res5avg"]["index"] == "IndexFlatIP"
    per_image = result.details["per_image"]["res5avg"]
    assert per_image["n_images"] == 100 and list(per_image["correct_bits"]) == list(metrics)
    assert all(bits.tolist() == [255] * 12 + [0b11110000] for bits in per_image["correct_bits"].values())  # 100 ones


def test_protocol_numbers_match_brute_force(tmp_path) -> None:
    rng = np.random.default_rng(5)
    X = rng.standard_normal((250, 8)).astype(np.float32)
    Q = rng.standard_normal((60, 8)).astype(np.float32)
    y, q_labels = rng.integers(0, 7, 250), rng.integers(0, 7, 60)
    cfg = KnnConfig(ks=(3, 30), temperature=0.1, normalize=False, chunk_size=16)
    ctx = make_ctx(tmp_path, ["res4"], {"train": (X, y), "test": (Q, q_labels)})
    result = KnnProtocol().run(ctx, cfg)
    for k in cfg.ks:
        ref = ranked(brute_force_scores(X, y, Q, k, 0.1, False, 7))
        top1 = 100 * np.mean(ref[:, 0] == q_labels)
        top5 = 100 * np.mean([q_labels[i] in ref[i, :5] for i in range(60)])
        assert result.metrics["res4"][f"top1_k{k}"] == pytest.approx(top1)
        assert result.metrics["res4"][f"top5_k{k}"] == pytest.approx(top5)
        record = {"dataset": {"digest": "d"}, "details": result.details}
        np.testing.assert_array_equal(evidence_for(record, "res4", f"top1_k{k}").correct, ref[:, 0] == q_labels)
        np.testing.assert_array_equal(evidence_for(record, "res4", f"top5_k{k}").correct,
                                      (ref[:, :5] == q_labels[:, None]).any(1))


def test_per_image_correctness_is_kept_packed_above_20000_test_images(tmp_path) -> None:
    """Places205 / ImageNet-val sizes keep per-image results (1 bit per image and metric), so they get intervals."""
    rng = np.random.default_rng(6)
    X, y = rng.standard_normal((40, 4)).astype(np.float32), np.arange(40) % 8
    Q, q_labels = rng.standard_normal((20_003, 4)).astype(np.float32), rng.integers(0, 8, 20_003)
    ctx = make_ctx(tmp_path, ["res5avg"], {"train": (X, y), "test": (Q, q_labels)})
    result = KnnProtocol().run(ctx, KnnConfig(ks=(3,), chunk_size=4096))
    bits = result.details["per_image"]["res5avg"]["correct_bits"]
    assert {name: (b.dtype, b.shape) for name, b in bits.items()} == {
        "top1_k3": (np.uint8, (2501,)), "top5_k3": (np.uint8, (2501,))}
    record = {"dataset": {"digest": "d"}, "details": result.details}
    for name, value in result.metrics["res5avg"].items():
        assert evidence_for(record, "res5avg", name).point() == pytest.approx(value)


def test_protocol_few_classes_and_small_bank(tmp_path) -> None:
    splits = {"train": clusters(3, 20, 4, 1), "test": clusters(3, 5, 4, 2)}
    result = KnnProtocol().run(make_ctx(tmp_path, ["res5avg"], splits), KnnConfig())
    assert result.metrics["res5avg"]["top5_k200"] == 100.0
    assert result.details["ks_clipped"] == {"res5avg": {"100": 60, "200": 60}}


def test_resume_skips_finished_taps(tmp_path) -> None:
    splits = {"train": clusters(4, 25, 8, 1), "test": clusters(4, 5, 8, 2)}
    first = KnnProtocol().run(make_ctx(tmp_path, ["res4"], splits), KnnConfig(ks=(5, 10)))
    calls: list = []
    ctx = make_ctx(tmp_path, ["res4", "res5avg"], splits, calls=calls)
    second = KnnProtocol().run(ctx, KnnConfig(ks=(5, 10)))
    assert calls == [("train", ("res5avg",)), ("test", ("res5avg",))]
    assert second.metrics["res4"] == first.metrics["res4"]
    for name, bits in first.details["per_image"]["res4"]["correct_bits"].items():
        np.testing.assert_array_equal(second.details["per_image"]["res4"]["correct_bits"][name], bits)
    assert set(second.metrics) == {"res4", "res5avg"}


def test_every_tap_comes_from_one_extraction_per_split(tmp_path) -> None:
    """One trunk forward serves all taps (the extractor computes every asked tap in one pass)."""
    splits = {"train": clusters(4, 25, 8, 1), "test": clusters(4, 5, 8, 2)}
    calls: list = []
    result = KnnProtocol().run(make_ctx(tmp_path, ["res3", "res4", "res5avg"], splits, calls=calls),
                               KnnConfig(ks=(5,)))
    assert calls == [("train", ("res3", "res4", "res5avg")), ("test", ("res3", "res4", "res5avg"))]
    assert set(result.metrics) == {"res3", "res4", "res5avg"}


@pytest.mark.parametrize("bad, split, message", [
    ("nan", "test", "tap 'res5avg' on split 'test' are NaN/Inf"),
    ("empty", "train", "split 'train' has no images"),
])
def test_unusable_features_raise_user_errors(tmp_path, bad: str, split: str, message: str) -> None:
    splits = {"train": clusters(3, 10, 4, 1), "test": clusters(3, 5, 4, 2)}
    X, y = splits[split]
    if bad == "nan":
        X = X.copy()
        X[2, 1] = np.nan
    else:
        X, y = X[:0], y[:0]
    splits[split] = (X, y)
    with pytest.raises(SslBenchError, match=message):
        KnnProtocol().run(make_ctx(tmp_path, ["res5avg"], splits), KnnConfig(ks=(5,)))


def test_protocol_metadata() -> None:
    assert KnnProtocol.name == "knn" and KnnProtocol.version == "1"
    assert KnnProtocol.Config is KnnConfig
    assert KnnProtocol.default_dataset == "fashion_mnist"
    assert KnnProtocol.default_taps == "last"
    assert KnnProtocol.needs == ("class_labels",)
    specs = KnnProtocol().metrics(KnnConfig(ks=(10, 20)), None)
    assert [spec.name for spec in specs] == ["top1_k10", "top5_k10", "top1_k20", "top5_k20"]
    assert [spec.name for spec in specs if spec.primary] == ["top1_k20"]
    assert KnnProtocol().primary_metric(KnnConfig(ks=(5, 50)), None) == "top1_k5"


@pytest.mark.parametrize("field, value", [
    ("ks", (0,)), ("ks", (20, 10)), ("ks", (10, 10)), ("ks", ()),
    ("temperature", 0), ("temperature", -0.1), ("chunk_size", 0), ("normalize", "yes"),
])
def test_config_validation_names_the_field(field: str, value) -> None:
    with pytest.raises(ValueError, match=rf"^{field}: expected .* got {re.escape(repr(value))}$"):
        KnnConfig(**{field: value})


def test_config_from_overrides() -> None:
    cfg = build_config(KnnConfig, {"ks": "5,50", "temperature": "0.1", "normalize": "false"}, "knn")
    assert (cfg.ks, cfg.temperature, cfg.normalize) == ((5, 50), 0.1, False)
    with pytest.raises(SslBenchError, match="temperature: expected a finite number > 0, got 0.0"):
        build_config(KnnConfig, {"temperature": "0"}, "knn")
