"""Datasets on their on-disk formats: generator -> reader round trips, independent readers, bad inputs."""

from __future__ import annotations

import gzip
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from benchmark.data.fashion_mnist import MEAN, STD, FashionMnist, debian_dir
from benchmark.data.folder import ImageFolder
from benchmark.data.nyuv2 import NyuV2, read_normals
from benchmark.data.places205 import Places205
from benchmark.data.synthetic import (encode_normals, make_data, render_room, write_folder, write_nyuv2,
                                      write_places205, write_voc)
from benchmark.data.voc import VOC_CLASSES, Voc0712, Voc2007
from benchmark.errors import SslBenchError
from benchmark.registry import DATASETS


@pytest.fixture(scope="module")
def voc_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_voc(tmp_path_factory.mktemp("voc"), seed=0, n_trainval=40, n_test=30, size=64)


def copy_tree(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def expected_voc_labels(annotations: Path, ids: list[str]) -> np.ndarray:
    """Image labels from the XML objects: 1 if a non-difficult instance, -1 if only difficult ones, else 0."""
    labels = np.zeros((len(ids), len(VOC_CLASSES)), dtype=np.int8)
    for row, image_id in enumerate(ids):
        difficult_flags: dict[int, list[bool]] = {}
        for obj in ET.parse(annotations / f"{image_id}.xml").getroot().iter("object"):
            c = VOC_CLASSES.index(obj.findtext("name"))
            difficult_flags.setdefault(c, []).append(obj.findtext("difficult") == "1")
        for c, flags in difficult_flags.items():
            labels[row, c] = -1 if all(flags) else 1
    return labels


def test_registry_lists_every_dataset() -> None:
    assert {"voc2007", "voc0712", "places205", "folder", "fashion_mnist", "nyuv2"} <= set(DATASETS.names())
    assert DATASETS.get("voc2007") is Voc2007


# ---------------------------------------------------------------- VOC

def test_voc_round_trip_ids_labels_and_difficult_rule(voc_root: Path) -> None:
    voc = Voc2007(voc_root)
    folder = voc_root / "VOCdevkit" / "VOC2007"
    listed = {s: (folder / "ImageSets" / "Main" / f"{s}.txt").read_text().split() for s in voc.splits}
    assert len(voc.ids("trainval")) == 40 and len(voc.ids("test")) == 30
    assert voc.ids("trainval") == sorted(listed["trainval"])
    assert sorted(voc.ids("train") + voc.ids("val")) == voc.ids("trainval")
    assert not set(voc.ids("trainval")) & set(voc.ids("test"))
    for split in ("trainval", "test"):
        labels = voc.labels(split)
        assert labels.dtype == np.int8 and labels.shape == (len(voc.ids(split)), 20)
        np.testing.assert_array_equal(labels, expected_voc_labels(folder / "Annotations", voc.ids(split)))
        assert (labels == 1).sum(axis=0).min() >= 1  # every class present in every split
    assert (voc.labels("trainval") == -1).any()  # the generator made some difficult-only images
    assert voc.task == "multilabel" and voc.train_split == "trainval" and voc.test_split == "test"


def test_voc_class_file_values_map_to_labels(voc_root: Path) -> None:
    voc = Voc2007(voc_root)
    rows = (voc_root / "VOCdevkit/VOC2007/ImageSets/Main/dog_test.txt").read_text().splitlines()
    raw = {line.split()[0]: int(line.split()[1]) for line in rows}
    dog = VOC_CLASSES.index("dog")
    for image_id, label in zip(voc.ids("test"), voc.labels("test")[:, dog]):
        assert label == {1: 1, -1: 0, 0: -1}[raw[image_id]]


def test_voc_objects_match_torchvision_reader(voc_root: Path) -> None:
    from torchvision.datasets import VOCDetection
    reference = VOCDetection(str(voc_root), year="2007", image_set="trainval")
    voc = Voc2007(voc_root)
    assert len(reference) == len(voc.ids("trainval"))
    for i in (0, 7, len(reference) - 1):
        image, target = reference[i]
        annotation = target["annotation"]
        assert annotation["filename"] == f"{voc.ids('trainval')[i]}.jpg"
        assert image.size == (int(annotation["size"]["width"]), int(annotation["size"]["height"]))
        objects = voc.objects("trainval", i)
        expected = annotation["object"]
        assert objects["boxes"].dtype == np.float32 and objects["boxes"].shape == (len(expected), 4)
        for k, obj in enumerate(expected):
            box = [float(obj["bndbox"][key]) for key in ("xmin", "ymin", "xmax", "ymax")]
            np.testing.assert_array_equal(objects["boxes"][k], box)
            assert VOC_CLASSES[objects["labels"][k]] == obj["name"]
            assert objects["difficult"][k] == (obj["difficult"] == "1")
        assert voc.open_split("trainval", None)[i][0].size == image.size


def test_voc_images_carry_class_signal(voc_root: Path) -> None:
    voc = Voc2007(voc_root)
    objects = voc.objects("test", 0)
    image = np.asarray(voc.open_split("test", None)[0][0], dtype=float)
    xmin, ymin, xmax, ymax = objects["boxes"][-1].astype(int)
    patch = image[ymin - 1:ymax, xmin - 1:xmax].reshape(-1, 3)
    assert patch.std(axis=0).max() > 10  # textured, not flat
    assert np.abs(patch.mean(axis=0) - image.reshape(-1, 3).mean(axis=0)).max() > 5


def test_voc_open_split_batches_with_eval_transform(voc_root: Path) -> None:
    voc = Voc2007(voc_root)
    loader = torch.utils.data.DataLoader(voc.open_split("test", voc.eval_transform(size=32)), batch_size=4)
    images, index = next(iter(loader))
    assert images.shape == (4, 3, 32, 32) and index.tolist() == [0, 1, 2, 3]


def test_voc0712_joins_years_with_prefixed_ids(tmp_path: Path) -> None:
    write_voc(tmp_path, seed=1, n_trainval=20, n_test=10, size=48)
    write_voc(tmp_path, seed=2, n_trainval=20, n_test=0, size=48, year="2012")
    voc07, voc0712 = Voc2007(tmp_path), Voc0712(tmp_path)
    ids = voc0712.ids("trainval")
    assert len(ids) == 40 and ids == sorted(ids) and len(set(ids)) == 40
    assert ids[:20] == [f"VOC2007/{i}" for i in voc07.ids("trainval")]
    assert all(i.startswith("VOC2012/2012_") for i in ids[20:])
    np.testing.assert_array_equal(voc0712.labels("trainval")[:20], voc07.labels("trainval"))
    np.testing.assert_array_equal(voc0712.labels("test"), voc07.labels("test"))
    assert voc0712.objects("trainval", 25)["boxes"].shape[1] == 4
    with pytest.raises(SslBenchError, match="VOC2012"):
        Voc0712(write_voc(tmp_path / "only07", seed=1, n_trainval=4, n_test=2, size=32))


def test_voc_limit_keeps_a_subset_in_id_order_and_changes_digest(voc_root: Path) -> None:
    full, limited = Voc2007(voc_root), Voc2007(voc_root, limit=5)
    kept = [full.ids("test").index(i) for i in limited.ids("test")]
    assert kept == sorted(kept) and len(kept) == 5
    np.testing.assert_array_equal(limited.labels("test"), full.labels("test")[kept])
    assert len(limited.open_split("test", None)) == 5
    assert limited.describe()["limit"] == 5 and limited.describe()["splits"]["trainval"] == 5
    assert limited.digest() != full.digest()


def test_voc_digest_is_stable_and_sees_a_label_change(tmp_path: Path) -> None:
    first = write_voc(tmp_path / "a", seed=3, n_trainval=20, n_test=20, size=48)
    second = write_voc(tmp_path / "b", seed=3, n_trainval=20, n_test=20, size=48)
    assert Voc2007(first).digest() == Voc2007(second).digest()
    assert Voc2007(first).digest() != Voc2007(write_voc(tmp_path / "c", seed=4, n_trainval=20, n_test=20,
                                                        size=48)).digest()
    class_file = second / "VOCdevkit/VOC2007/ImageSets/Main/cat_test.txt"
    lines = class_file.read_text().splitlines()
    image_id, value = lines[0].split()
    lines[0] = f"{image_id} {'-1' if value != '-1' else ' 1'}"
    class_file.write_text("\n".join(lines) + "\n")
    assert Voc2007(first).digest() != Voc2007(second).digest()


def test_voc_bad_inputs_name_the_path(voc_root: Path, tmp_path: Path) -> None:
    with pytest.raises(SslBenchError, match="needs --data-root"):
        Voc2007(None)
    with pytest.raises(SslBenchError, match="nowhere"):
        Voc2007(tmp_path / "nowhere")
    with pytest.raises(SslBenchError, match="VOC2007"):
        Voc2007(tmp_path)
    with pytest.raises(SslBenchError, match="no split 'tset'. Did you mean 'test'"):
        Voc2007(voc_root).ids("tset")
    root = copy_tree(voc_root, tmp_path / "copy")
    main = root / "VOCdevkit/VOC2007/ImageSets/Main"
    (main / "test.txt").unlink()
    with pytest.raises(SslBenchError, match="test.txt"):
        Voc2007(root).labels("test")
    (main / "bird_trainval.txt").unlink()
    with pytest.raises(SslBenchError, match="bird_trainval.txt"):
        Voc2007(root).labels("trainval")
    root = copy_tree(voc_root, tmp_path / "copy2")
    voc = Voc2007(root)
    image_id = voc.ids("val")[0]
    (root / f"VOCdevkit/VOC2007/Annotations/{image_id}.xml").write_text("<annotation><object>")
    with pytest.raises(SslBenchError, match=f"{image_id}.xml"):
        voc.objects("val", 0)
    (root / f"VOCdevkit/VOC2007/JPEGImages/{image_id}.jpg").unlink()
    with pytest.raises(SslBenchError, match=f"{image_id}.jpg"):
        voc.digest()


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_jpeg_names_the_file_in_one_line(voc_root: Path, tmp_path: Path, damage: str) -> None:
    root = copy_tree(voc_root, tmp_path / "copy")
    voc = Voc2007(root)
    path = root / f"VOCdevkit/VOC2007/JPEGImages/{voc.ids('test')[2]}.jpg"
    data = path.read_bytes()
    path.write_bytes(b"not a jpeg at all" if damage == "garbage" else data[:len(data) // 2])
    dataset = voc.open_split("test", voc.eval_transform(size=32))
    assert dataset[1][0].shape == (3, 32, 32)
    with pytest.raises(SslBenchError) as error:
        dataset[2]
    assert str(path) in str(error.value) and "\n" not in str(error.value)


# ---------------------------------------------------------------- NYUv2

def test_nyuv2_round_trip(tmp_path: Path) -> None:
    root = write_nyuv2(tmp_path, seed=0, n_train=6, n_test=4, size=32)
    nyu = NyuV2(root)
    assert nyu.task == "dense" and len(nyu.ids("train")) == 6 and len(nyu.ids("test")) == 4
    assert nyu.ids("test") == sorted((root / "splits/test.txt").read_text().split())
    assert nyu.labels("train").shape == (6, 0)
    for split in nyu.splits:
        for i in range(len(nyu.ids(split))):
            normals, mask = nyu.targets(split, i)
            image = nyu.open_split(split, None)[i][0]
            assert normals.dtype == np.float32 and normals.shape == (24, 32, 3) and image.size == (32, 24)
            assert mask.dtype == bool and 0.5 < mask.mean() < 1
            np.testing.assert_allclose(np.linalg.norm(normals, axis=-1), 1, atol=1e-5)
            # a box room: every normal is one of at most five plane normals, pairwise orthogonal or opposite
            planes = np.unique(normals.reshape(-1, 3).round(1), axis=0)
            assert 1 <= len(planes) <= 5
            planes = planes / np.linalg.norm(planes, axis=1, keepdims=True)
            cosines = np.abs(planes @ planes.T)
            assert np.all((cosines < 0.1) | (cosines > 0.99))


def test_nyuv2_normal_decoding_within_quantisation() -> None:
    _, normals, _ = render_room(24, 32, np.random.default_rng(5))
    assert np.allclose(np.linalg.norm(normals, axis=-1), 1)
    decoded = encode_normals(normals).astype(np.float64) / 127.5 - 1
    decoded /= np.linalg.norm(decoded, axis=-1, keepdims=True)
    angles = np.degrees(np.arccos(np.clip((decoded * normals).sum(-1), -1, 1)))
    assert angles.max() < 0.7


def test_nyuv2_read_normals_formula(tmp_path: Path) -> None:
    values = np.array([[[255, 128, 0], [10, 200, 90]]], dtype=np.uint8)
    Image.fromarray(values).save(tmp_path / "n.png")
    raw = values.astype(np.float64) / 127.5 - 1
    np.testing.assert_allclose(read_normals(tmp_path / "n.png"),
                               raw / np.linalg.norm(raw, axis=-1, keepdims=True), atol=1e-6)


def test_nyuv2_bad_inputs(tmp_path: Path) -> None:
    root = write_nyuv2(tmp_path / "n", seed=0, n_train=2, n_test=2, size=16)
    (root / "splits/test.txt").unlink()
    with pytest.raises(SslBenchError, match="test.txt"):
        NyuV2(root).ids("test")
    shutil.rmtree(root / "masks")
    with pytest.raises(SslBenchError, match="masks"):
        NyuV2(root)


# ---------------------------------------------------------------- folders and Places205

def test_folder_round_trip_and_limit(tmp_path: Path) -> None:
    root = write_folder(tmp_path, seed=0, n_classes=3, per_class=4, size=24)
    data = ImageFolder(root)
    assert data.classes == ["class_00", "class_01", "class_02"]
    assert len(data.ids("train")) == 12 and len(data.ids("val")) == 6
    for split in data.splits:
        expected = [int(name.split("/")[0].split("_")[1]) for name in data.ids(split)]
        np.testing.assert_array_equal(data.labels(split), expected)
        assert all((root / split / name).is_file() for name in data.ids(split))
    assert data.open_split("val", None)[5][0].size == (24, 24)
    limited = ImageFolder(root, limit=2)
    assert len(set(limited.labels("train"))) == 2 and limited.digest() != data.digest()
    assert ImageFolder(write_folder(tmp_path / "again", seed=0, n_classes=3, per_class=4, size=24)).digest() \
        == data.digest()


def test_folder_bad_inputs(tmp_path: Path) -> None:
    root = write_folder(tmp_path / "f", seed=0, n_classes=2, per_class=2, size=16)
    (root / "val" / "stray").mkdir()
    with pytest.raises(SslBenchError, match="stray"):
        ImageFolder(root).ids("val")
    shutil.rmtree(root / "val")
    with pytest.raises(SslBenchError, match="val"):
        ImageFolder(root)


def test_places205_fair_layout_round_trip(tmp_path: Path) -> None:
    root = write_places205(tmp_path, seed=0, n_classes=3, train_per_class=4, val_per_class=2, size=24)
    places = Places205(root)
    assert places.classes == ["scene000", "scene001", "scene002"]
    listed = [line.split() for line in (root / "trainvalsplit_places205/val_places205.csv").read_text().splitlines()]
    assert places.ids("val") == sorted(path for path, _ in listed)
    np.testing.assert_array_equal(places.labels("val"), [int(label) for _, label in sorted(listed)])
    image, index = places.open_split("train", None)[7]
    assert image.size == (24, 24) and index == 7
    assert sorted(Places205(root, limit=3).labels("train").tolist()) == [0, 1, 2]


def test_places205_flat_layout_and_default_class_names(tmp_path: Path) -> None:
    source = write_places205(tmp_path / "fair", seed=1, n_classes=2, train_per_class=2, val_per_class=1, size=16)
    flat = tmp_path / "flat"
    shutil.copytree(source / "data/vision/torralba/deeplearning/images256", flat)
    for split in ("train", "val"):
        shutil.copy(source / f"trainvalsplit_places205/{split}_places205.csv", flat)
    places = Places205(flat)
    assert len(places.classes) == 205 and places.classes[:2] == ["0", "1"]
    assert places.image_dir == flat.resolve()
    assert places.digest() == Places205(flat).digest()
    assert places.open_split("val", None)[1][0].size == (16, 16)


def test_places205_bad_inputs(tmp_path: Path) -> None:
    root = write_places205(tmp_path / "p", seed=0, n_classes=2, train_per_class=2, val_per_class=1, size=16)
    shutil.rmtree(root / "data")
    with pytest.raises(SslBenchError, match="not found under any of .*images256"):
        Places205(root).open_split("train", None)
    (root / "trainvalsplit_places205/val_places205.csv").write_text("s/scene000/x.jpg 7\n")
    with pytest.raises(SslBenchError, match="label 7 is out of range"):
        Places205(root).labels("val")
    (root / "trainvalsplit_places205/val_places205.csv").unlink()
    with pytest.raises(SslBenchError, match="val_places205.csv"):
        Places205(root)


# ---------------------------------------------------------------- make-data

def test_make_data_kinds_and_errors(tmp_path: Path) -> None:
    assert isinstance(DATASETS.get("voc2007")(make_data("voc", tmp_path / "voc")), Voc2007)
    assert len(DATASETS.get("nyuv2")(make_data("nyuv2", tmp_path / "nyu", seed=1)).ids("test")) == 8
    assert len(DATASETS.get("folder")(make_data("folder", tmp_path / "folder")).classes) == 4
    assert len(DATASETS.get("places205")(make_data("places205", tmp_path / "places")).classes) == 5
    with pytest.raises(SslBenchError, match="Did you mean 'voc'"):
        make_data("vco", tmp_path / "x")
    with pytest.raises(SslBenchError, match="Did you mean 'small'"):
        make_data("voc", tmp_path / "x", size="smal")


# ---------------------------------------------------------------- Fashion-MNIST

@pytest.fixture(scope="module")
def fashion() -> FashionMnist:
    if not (debian_dir() / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip("Debian package dataset-fashion-mnist is not installed")
    return FashionMnist(None)


def test_fashion_mnist_from_debian_files(fashion: FashionMnist) -> None:
    images, labels = fashion.arrays("train")
    assert images.shape == (60000, 28, 28) and images.dtype == np.uint8 and labels.dtype == np.int64
    np.testing.assert_array_equal(np.bincount(labels, minlength=10), [6000] * 10)
    np.testing.assert_array_equal(np.bincount(fashion.labels("test"), minlength=10), [1000] * 10)
    assert len(fashion.ids("test")) == 10000 and fashion.ids("test")[:2] == ["test/00000", "test/00001"]
    pixels = images.astype(np.float64) / 255
    assert abs(pixels.mean() - MEAN) < 5e-4 and abs(pixels.std() - STD) < 5e-4


def test_fashion_mnist_matches_torchvision_on_raw_layout(fashion: FashionMnist, tmp_path: Path) -> None:
    from torchvision.datasets import FashionMNIST
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for path in (*fashion.paths["train"], *fashion.paths["test"]):
        (raw / path.name.removesuffix(".gz")).write_bytes(gzip.decompress(path.read_bytes()))
    ours = FashionMnist(tmp_path)
    assert ours.paths["test"][0] == raw / "t10k-images-idx3-ubyte"
    for split, train in (("train", True), ("test", False)):
        reference = FashionMNIST(str(tmp_path), train=train, download=False)
        np.testing.assert_array_equal(ours.labels(split), reference.targets.numpy())
        np.testing.assert_array_equal(ours.arrays(split)[0], reference.data.numpy())
    assert ours.digest() == fashion.digest()


def test_fashion_mnist_transform_and_limit(fashion: FashionMnist) -> None:
    limited = FashionMnist(None, limit=100)
    assert len(limited.ids("train")) == 100 and limited.describe()["splits"] == {"train": 100, "test": 100}
    kept = [fashion.ids("train").index(i) for i in limited.ids("train")]
    assert kept == sorted(kept)
    np.testing.assert_array_equal(limited.labels("train"), fashion.labels("train")[kept])
    np.testing.assert_array_equal(limited.arrays("train")[0], fashion.arrays("train")[0][kept])
    assert limited.digest() != fashion.digest()
    dataset = limited.open_split("train", limited.eval_transform())
    tensor, index = dataset[3]
    assert tensor.shape == (3, 32, 32) and index == 3
    expected = (limited.arrays("train")[0][3].astype(np.float64) / 255 - MEAN) / STD
    for channel in range(3):
        np.testing.assert_allclose(tensor[channel, 2:30, 2:30].numpy(), expected, atol=1e-5)
        np.testing.assert_allclose(tensor[channel, 0].numpy(), -MEAN / STD, atol=1e-6)
    assert limited.eval_transform(size=64)(limited.open_split("test", None)[0][0]).shape == (3, 64, 64)


def write_idx(path: Path, magic: int, array: np.ndarray) -> None:
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


def test_fashion_mnist_bad_files(tmp_path: Path) -> None:
    images, labels = np.zeros((5, 28, 28)), np.arange(5)
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", 0x803, images)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", 0x801, labels)
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", 0x803, images)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", 0x803, labels.reshape(5, 1, 1))
    data = FashionMnist(tmp_path)
    np.testing.assert_array_equal(data.labels("train"), labels)
    with pytest.raises(SslBenchError, match=r"t10k-labels-idx1-ubyte.gz .*magic number 0x803, expected 0x801"):
        data.labels("test")
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(
        gzip.decompress((tmp_path / "t10k-images-idx3-ubyte.gz").read_bytes())[:-10])
    with pytest.raises(SslBenchError, match="truncated"):
        FashionMnist(tmp_path).labels("train")
    (tmp_path / "t10k-images-idx3-ubyte.gz").unlink()
    with pytest.raises(SslBenchError, match="t10k-images-idx3-ubyte not found"):
        FashionMnist(tmp_path)
    with pytest.raises(SslBenchError, match="needs --data-root"):
        FashionMnist(None, download=True)
