"""Named public checkpoints: where to download them, how to check them, what they should score.

Hashes are recorded only where their publisher printed them: a full sha256,
the 8-hex sha256 prefix that torchvision and OpenMMLab put in file names, or
the md5 prefix of the MoCo README. Entries with none are 'unverified'.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmark.atomic import replacing
from benchmark.errors import SslBenchError, did_you_mean
from checkpoints.models import IMAGENET_MEAN, IMAGENET_STD


@dataclasses.dataclass(frozen=True)
class CheckpointCfg:
    """One public release: source, integrity, preprocessing, provenance and published numbers.

    `expected` maps "protocol/tap/metric" (or "dataset/metric" for numbers measured outside
    ssl-bench) to the published value; `sources` says where each number was printed.
    """

    name: str
    url: str
    arch: str
    format: str
    method: str
    recipe: str
    paper: str
    license: str
    sha256: str | None = None
    sha256_prefix: str | None = None
    md5_prefix: str | None = None
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    expected: dict[str, float] = dataclasses.field(default_factory=dict, hash=False)
    sources: str = ""
    notes: str = ""

    @property
    def verification(self) -> str:
        """How a download is checked: sha256, sha256-prefix, md5-prefix or unverified."""
        if self.sha256:
            return "sha256"
        if self.sha256_prefix:
            return "sha256-prefix"
        return "md5-prefix" if self.md5_prefix else "unverified"

    def meta(self) -> dict[str, Any]:
        """JSON-ready metadata carried into LoadedCheckpoint.meta and result records."""
        return {"zoo": self.name, "url": self.url, "method": self.method, "recipe": self.recipe,
                "paper": self.paper, "license": self.license, "verification": self.verification,
                "mean": list(self.mean), "std": list(self.std), "expected": dict(self.expected)}


_FB = "https://dl.fbaipublicfiles.com"

ZOO: dict[str, CheckpointCfg] = {c.name: c for c in (
    CheckpointCfg(
        "supervised_rn50", "https://download.pytorch.org/models/resnet50-0676ba61.pth", "resnet50", "torchvision",
        "supervised", "torchvision reference classification recipe, ResNet50_Weights.IMAGENET1K_V1",
        "He et al. 2016, Deep Residual Learning for Image Recognition (arXiv:1512.03385)", "BSD-3-Clause",
        sha256_prefix="0676ba61",
        expected={"imagenet/acc1": 76.13, "voc07_svm/res5/map": 87.17,
                  "places205_linear/conv1/top1": 21.27, "places205_linear/res2/top1": 36.10,
                  "places205_linear/res3/top1": 43.03, "places205_linear/res4/top1": 51.38,
                  "places205_linear/res5/top1": 53.05},
        sources="imagenet: torchvision weights meta; voc07_svm, places205_linear: OpenSelfSup/mmselfsup model zoo"),
    CheckpointCfg(
        "moco_v2_800ep", f"{_FB}/moco/moco_checkpoints/moco_v2_800ep/moco_v2_800ep_pretrain.pth.tar", "resnet50",
        "moco", "moco_v2", "MoCo v2, 800 epochs, MLP head, aug+, cosine schedule",
        "Chen et al. 2020, Improved Baselines with Momentum Contrastive Learning (arXiv:2003.04297)",
        "CC-BY-NC-4.0", md5_prefix="a04e12f8",
        expected={"imagenet_linear/res5avg/top1": 71.1, "voc07_svm/res5/map": 84.26},
        sources="imagenet_linear: facebookresearch/moco README; voc07_svm: mmselfsup model zoo (its own MoCo v2 run)"),
    CheckpointCfg(
        "simclr_800ep",
        f"{_FB}/vissl/model_zoo/simclr_rn50_800ep_simclr_8node_resnet_16_07_20.7e8feed1/"
        "model_final_checkpoint_phase799.torch",
        "resnet50", "vissl", "simclr", "VISSL SimCLR, 800 epochs, 8 nodes",
        "Chen et al. 2020, A Simple Framework for Contrastive Learning of Visual Representations (arXiv:2002.05709)",
        "MIT (VISSL)", notes="full VISSL checkpoint; whether it loads with weights_only=True is unverified"),
    CheckpointCfg(
        "byol_200ep",
        "https://download.openmmlab.com/mmselfsup/1.x/byol/byol_resnet50_16xb256-coslr-200e_in1k/"
        "byol_resnet50_16xb256-coslr-200e_in1k_20220825-de817331.pth",
        "resnet50", "prefixed", "byol", "mmselfsup 1.x BYOL, 16x256 batch, cosine lr, 200 epochs",
        "Grill et al. 2020, Bootstrap Your Own Latent (arXiv:2006.07733)", "Apache-2.0 (mmselfsup)",
        sha256_prefix="de817331",
        notes="the BYOL authors released JAX weights only; this is OpenMMLab's PyTorch reproduction"),
    CheckpointCfg(
        "dino_rn50", f"{_FB}/dino/dino_resnet50_pretrain/dino_resnet50_pretrain.pth", "resnet50", "torchvision",
        "dino", "DINO ResNet-50 teacher backbone (backbone-only release)",
        "Caron et al. 2021, Emerging Properties in Self-Supervised Vision Transformers (arXiv:2104.14294)",
        "Apache-2.0", expected={"imagenet_knn/res5avg/top1": 67.5, "imagenet_linear/res5avg/top1": 75.3},
        sources="facebookresearch/dino README"),
    CheckpointCfg(
        "swav_800ep", f"{_FB}/deepcluster/swav_800ep_pretrain.pth.tar", "resnet50", "torchvision", "swav",
        "SwAV, 800 epochs, batch 4096, multi-crop 2x224 + 6x96",
        "Caron et al. 2020, Unsupervised Learning of Visual Features by Contrasting Cluster Assignments "
        "(arXiv:2006.09882)", "CC-BY-NC-4.0", expected={"imagenet_linear/res5avg/top1": 75.3},
        sources="facebookresearch/swav README"),
    CheckpointCfg(
        "barlowtwins_rn50", f"{_FB}/barlowtwins/ep1000_bs2048_lrw0.2_lrb0.0048_lambd0.0051/resnet50.pth", "resnet50",
        "torchvision", "barlow_twins", "Barlow Twins, 1000 epochs, batch 2048, lambda 0.0051",
        "Zbontar et al. 2021, Barlow Twins: Self-Supervised Learning via Redundancy Reduction (arXiv:2103.03230)",
        "MIT", expected={"imagenet_linear/res5avg/top1": 73.5}, sources="facebookresearch/barlowtwins README"),
)}


def get(name: str) -> CheckpointCfg:
    """The zoo entry `name`; unknown names raise SslBenchError with a suggestion."""
    if name not in ZOO:
        raise SslBenchError(f"unknown zoo checkpoint '{name}'.{did_you_mean(name, ZOO)} "
                            f"Available: {', '.join(sorted(ZOO))} (see `ssl-bench list zoo`)")
    return ZOO[name]


def list_zoo() -> list[CheckpointCfg]:
    """Every zoo entry, sorted by name."""
    return [ZOO[name] for name in sorted(ZOO)]


def default_cache_dir() -> Path:
    """$SSL_BENCH_CACHE/zoo, else ~/.cache/ssl-bench/zoo."""
    root = os.environ.get("SSL_BENCH_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "ssl-bench") / "zoo"


def _digests(path: Path) -> tuple[str, str]:
    sha, md5 = hashlib.sha256(), hashlib.md5(usedforsecurity=False)
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            sha.update(chunk)
            md5.update(chunk)
    return sha.hexdigest(), md5.hexdigest()


def verify(entry: CheckpointCfg, path: Path) -> str | None:
    """None if `path` has the entry's published hash (or it has none), else what differs."""
    sha, md5 = _digests(path)
    for kind, want, have in (("sha256", entry.sha256, sha), ("sha256 prefix", entry.sha256_prefix, sha),
                             ("md5 prefix", entry.md5_prefix, md5)):
        if want and not have.startswith(want.lower()):
            return f"{kind} {have[:len(want)]} != published {want}"
    return None


def _file_name(entry: CheckpointCfg) -> str:
    return f"{entry.name}-{os.path.basename(urllib.request.urlparse(entry.url).path)}"


def fetch(name: str, cache_dir: Path | None = None, progress: bool | Callable[[int, int], None] = True) -> Path:
    """Download zoo entry `name` once (atomically, hash-checked) and return its cached path.

    `progress` is True for a tqdm bar on stderr, False for none, or a callable(done_bytes, total_bytes).
    """
    entry = get(name)
    folder = cache_dir if cache_dir is not None else default_cache_dir()
    target = folder / _file_name(entry)
    if target.is_file() and verify(entry, target) is None:
        return target
    with replacing(target, suffix=".part") as tmp:
        with tmp.open("wb") as out:
            _download(entry.url, out, progress)
        problem = verify(entry, tmp)
        if problem:
            raise SslBenchError(f"download of zoo checkpoint '{name}' from {entry.url} is corrupt ({problem}); "
                                f"nothing was kept, try again")
    return target


def _download(url: str, out: Any, progress: bool | Callable[[int, int], None]) -> None:
    try:
        response = urllib.request.urlopen(url, timeout=60)  # noqa: S310 - http(s) and file URLs from the zoo table
    except (urllib.error.URLError, OSError, ValueError) as error:
        raise SslBenchError(f"cannot download {url}: {getattr(error, 'reason', error)}; "
                            f"check the network or place the file in {default_cache_dir()}") from None
    with response:
        total = int(response.headers.get("Content-Length") or 0)
        report = _reporter(progress, total, url)
        done = 0
        try:
            for chunk in iter(lambda: response.read(1 << 20), b""):
                out.write(chunk)
                done += len(chunk)
                report(done, total)
        except OSError as error:
            raise SslBenchError(f"download of {url} broke off after {done} bytes ({error}); try again") from None
        finally:
            report(-1, total)


def _reporter(progress: bool | Callable[[int, int], None], total: int, url: str) -> Callable[[int, int], None]:
    """A callable(done, total); done == -1 closes it."""
    if callable(progress):
        def forward(done: int, size: int) -> None:
            if done >= 0:
                progress(done, size)
        return forward
    if not progress:
        return lambda done, size: None
    from tqdm import tqdm

    bar = tqdm(total=total or None, unit="B", unit_scale=True, desc=os.path.basename(url), leave=False)

    def report(done: int, size: int) -> None:
        if done < 0:
            bar.close()
        else:
            bar.update(done - bar.n)
    return report

