"""Small deterministic datasets written in the real on-disk formats (VOC, NYUv2, image folders, Places205).

Image content depends on the labels (class-specific colour and stripe texture
inside object boxes; shading by surface orientation for NYUv2), so features
computed on them carry signal.
"""

from __future__ import annotations

import colorsys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
from PIL import Image

from benchmark.data.voc import VOC_CLASSES
from benchmark.errors import SslBenchError, did_you_mean

SIZES = ("tiny", "small")


def class_texture(c: int, n_classes: int, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """float (H, W, 3) in [0, 1]: class c's hue with stripes at a class-specific angle and frequency."""
    red, green, blue = colorsys.hsv_to_rgb(c / n_classes, 0.8, 0.9)
    angle = np.pi * ((c * 7) % n_classes) / n_classes
    frequency = 0.12 + 0.08 * (c % 3)
    y, x = np.mgrid[0:height, 0:width]
    phase = rng.uniform(0, 2 * np.pi)
    stripes = 0.5 + 0.5 * np.sin(frequency * (x * np.cos(angle) + y * np.sin(angle)) + phase)
    return np.array([red, green, blue]) * (0.55 + 0.45 * stripes[..., None])


def background(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """float (H, W, 3): a dull random gradient with noise."""
    y, x = np.mgrid[0:height, 0:width] / max(height, width)
    corners = rng.uniform(0.2, 0.6, size=(2, 3))
    image = corners[0] * (1 - (x + y)[..., None] / 2) + corners[1] * ((x + y)[..., None] / 2)
    return image + rng.normal(0, 0.03, size=(height, width, 3))


def to_uint8(image: np.ndarray) -> np.ndarray:
    return np.clip(np.round(image * 255), 0, 255).astype(np.uint8)


def write_jpeg(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(to_uint8(image)).save(path, quality=90)


def textured_image(c: int, n_classes: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """A size x size image: background plus one class-c patch covering 40-80% of each side."""
    image = background(size, size, rng)
    h, w = (rng.uniform(0.4, 0.8, size=2) * size).astype(int)
    top, left = rng.integers(0, size - h + 1), rng.integers(0, size - w + 1)
    image[top:top + h, left:left + w] = class_texture(c, n_classes, h, w, rng)
    return image


# ---------------------------------------------------------------- VOC

def _voc_annotation(year: str, image_id: str, width: int, height: int,
                    objects: list[tuple[int, list[int], bool, bool]]) -> ET.ElementTree:
    annotation = ET.Element("annotation")
    ET.SubElement(annotation, "folder").text = f"VOC{year}"
    ET.SubElement(annotation, "filename").text = f"{image_id}.jpg"
    source = ET.SubElement(annotation, "source")
    ET.SubElement(source, "database").text = "ssl-bench synthetic VOC"
    size = ET.SubElement(annotation, "size")
    for key, value in (("width", width), ("height", height), ("depth", 3)):
        ET.SubElement(size, key).text = str(value)
    ET.SubElement(annotation, "segmented").text = "0"
    for c, box, truncated, difficult in objects:
        obj = ET.SubElement(annotation, "object")
        ET.SubElement(obj, "name").text = VOC_CLASSES[c]
        ET.SubElement(obj, "pose").text = "Unspecified"
        ET.SubElement(obj, "truncated").text = str(int(truncated))
        ET.SubElement(obj, "difficult").text = str(int(difficult))
        bndbox = ET.SubElement(obj, "bndbox")
        for key, value in zip(("xmin", "ymin", "xmax", "ymax"), box):
            ET.SubElement(bndbox, key).text = str(value)
    tree = ET.ElementTree(annotation)
    ET.indent(tree)
    return tree


def _voc_objects(first_class: int, width: int, height: int,
                 rng: np.random.Generator) -> list[tuple[int, list[int], bool, bool]]:
    """1-3 objects; the first has `first_class` and is never difficult, the others are difficult 25% of the time."""
    objects = []
    n_objects = int(rng.integers(1, 4))
    for k in range(n_objects):
        c = first_class if k == 0 else int(rng.integers(len(VOC_CLASSES)))
        w = int(rng.uniform(0.3, 0.6) * width)
        h = int(rng.uniform(0.3, 0.6) * height)
        xmin = int(rng.integers(1, width - w + 2))
        ymin = int(rng.integers(1, height - h + 2))
        box = [xmin, ymin, xmin + w - 1, ymin + h - 1]
        truncated = xmin == 1 or ymin == 1 or box[2] == width or box[3] == height
        objects.append((c, box, truncated, k > 0 and bool(rng.random() < 0.25)))
    return objects


def _voc_image(width: int, height: int, objects: list[tuple[int, list[int], bool, bool]],
               rng: np.random.Generator) -> np.ndarray:
    image = background(height, width, rng)
    for c, (xmin, ymin, xmax, ymax), _, _ in objects:
        image[ymin - 1:ymax, xmin - 1:xmax] = class_texture(c, len(VOC_CLASSES), ymax - ymin + 1,
                                                            xmax - xmin + 1, rng)
    return image


def write_voc(out: Path, seed: int = 0, n_trainval: int = 60, n_test: int = 60, size: int = 96,
              year: str = "2007") -> Path:
    """Write out/VOCdevkit/VOC<year> (JPEGs, XML annotations, ImageSets/Main lists); returns out.

    Every split holds every class as a non-difficult object once it has at least 20 images;
    trainval is cut into train (even positions) and val (odd positions).
    """
    rng = np.random.default_rng(seed)
    folder = Path(out) / "VOCdevkit" / f"VOC{year}"
    main = folder / "ImageSets" / "Main"
    for sub in ("Annotations", "JPEGImages"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    main.mkdir(parents=True, exist_ok=True)
    n = n_trainval + n_test
    prefix = "" if year == "2007" else f"{year}_"
    ids = [f"{prefix}{k:06d}" for k in range(1, n + 1)]
    is_test = np.zeros(n, dtype=bool)
    is_test[rng.choice(n, size=n_test, replace=False)] = True
    trainval = [i for i, t in zip(ids, is_test) if not t]
    test = [i for i, t in zip(ids, is_test) if t]
    first_class = {}
    for members in (trainval, test):
        cycle = np.concatenate([rng.permutation(len(VOC_CLASSES)) for _ in range(len(members) // 20 + 1)])
        first_class.update({image_id: int(c) for image_id, c in zip(members, cycle)})
    image_labels = {}
    for image_id in ids:
        width = size + int(rng.integers(0, size // 2 + 1))
        height = size + int(rng.integers(0, size // 3 + 1))
        objects = _voc_objects(first_class[image_id], width, height, rng)
        write_jpeg(folder / "JPEGImages" / f"{image_id}.jpg", _voc_image(width, height, objects, rng))
        _voc_annotation(year, image_id, width, height, objects).write(
            folder / "Annotations" / f"{image_id}.xml", encoding="utf-8")
        labels = np.full(len(VOC_CLASSES), -1)
        for c, _, _, difficult in objects:
            labels[c] = max(labels[c], 0 if difficult else 1)
        image_labels[image_id] = labels
    splits = {"trainval": trainval, "train": trainval[0::2], "val": trainval[1::2]}
    if n_test:
        splits["test"] = test
    for split, members in splits.items():
        (main / f"{split}.txt").write_text("".join(f"{i}\n" for i in members))
        for c, name in enumerate(VOC_CLASSES):
            (main / f"{name}_{split}.txt").write_text(
                "".join(f"{i} {image_labels[i][c]:2d}\n" for i in members))
    return Path(out)


# ---------------------------------------------------------------- NYUv2

def _rotation(yaw: float, pitch: float) -> np.ndarray:
    """Camera-to-world rotation: yaw about the vertical axis, then pitch about the horizontal one."""
    cy, sy, cp, sp = np.cos(yaw), np.sin(yaw), np.cos(pitch), np.sin(pitch)
    r_yaw = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    r_pitch = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])
    return r_yaw @ r_pitch


def render_room(height: int, width: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A box room seen by a pinhole camera: (RGB float (H, W, 3), unit normals (H, W, 3) in camera
    coordinates x right, y down, z forward, pointing towards the camera, valid mask (H, W))."""
    focal = 0.9 * width
    v, u = np.mgrid[0:height, 0:width] + 0.5
    rays = np.stack([(u - width / 2) / focal, (v - height / 2) / focal, np.ones_like(u)], axis=-1)
    to_world = _rotation(rng.uniform(-0.4, 0.4), rng.uniform(-0.25, 0.25))
    rays = rays @ to_world.T
    half_width, floor, ceiling, depth = rng.uniform(1, 2), rng.uniform(1, 1.6), rng.uniform(1, 1.6), rng.uniform(3, 6)
    # planes n.x = d with n pointing into the room (towards the camera at the origin)
    planes = [((0, -1, 0), -floor), ((0, 1, 0), -ceiling), ((1, 0, 0), -half_width),
              ((-1, 0, 0), -half_width), ((0, 0, -1), -depth)]
    distance = np.full((height, width), np.inf)
    normals_world = np.zeros((height, width, 3))
    albedo = np.zeros((height, width, 3))
    for normal, offset in planes:
        normal = np.asarray(normal, dtype=float)
        along = rays @ normal
        with np.errstate(divide="ignore", invalid="ignore"):
            t = offset / along
        hit = (along < 0) & (t > 0) & (t < distance)
        distance[hit] = t[hit]
        normals_world[hit] = normal
        points = rays[hit] * t[hit, None]
        checker = (np.floor(points * 2).sum(axis=1) % 2)[:, None]
        colour = rng.uniform(0.3, 0.9, size=3)
        albedo[hit] = colour * (0.8 + 0.2 * checker)
    light = np.array([0.3, -0.8, -0.5]) / np.linalg.norm([0.3, -0.8, -0.5])
    shading = 0.35 + 0.65 * np.clip(normals_world @ light, 0, 1)
    image = albedo * shading[..., None] + rng.normal(0, 0.02, size=albedo.shape)
    normals = normals_world @ to_world  # world -> camera: R^T n, row-vector form
    mask = np.ones((height, width), dtype=bool)
    hole_h, hole_w = int(rng.integers(1, height // 4 + 2)), int(rng.integers(1, width // 4 + 2))
    top, left = int(rng.integers(0, height - hole_h + 1)), int(rng.integers(0, width - hole_w + 1))
    mask[top:top + hole_h, left:left + hole_w] = False
    return image, normals, mask


def encode_normals(normals: np.ndarray) -> np.ndarray:
    """Unit normals (H, W, 3) -> uint8 PNG values v with n = v / 127.5 - 1."""
    return np.clip(np.round((normals + 1) * 127.5), 0, 255).astype(np.uint8)


def write_nyuv2(out: Path, seed: int = 0, n_train: int = 16, n_test: int = 8, size: int = 64) -> Path:
    """Write out/{images,normals,masks}/ID.png and out/splits/{train,test}.txt; returns out."""
    rng = np.random.default_rng(seed)
    out = Path(out)
    for sub in ("images", "normals", "masks", "splits"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    height, width = round(size * 3 / 4), size
    ids = [f"{k:04d}" for k in range(1, n_train + n_test + 1)]
    test = set(rng.choice(ids, size=n_test, replace=False).tolist()) if n_test else set()
    for image_id in ids:
        image, normals, mask = render_room(height, width, rng)
        Image.fromarray(to_uint8(image)).save(out / "images" / f"{image_id}.png")
        Image.fromarray(encode_normals(normals)).save(out / "normals" / f"{image_id}.png")
        Image.fromarray(mask.astype(np.uint8) * 255).save(out / "masks" / f"{image_id}.png")
    (out / "splits" / "train.txt").write_text("".join(f"{i}\n" for i in ids if i not in test))
    (out / "splits" / "test.txt").write_text("".join(f"{i}\n" for i in ids if i in test))
    return out


# ---------------------------------------------------------------- folders and Places205

def write_folder(out: Path, seed: int = 0, n_classes: int = 4, per_class: int = 10, size: int = 48) -> Path:
    """Write out/{train,val}/class_XX/NNNN.jpg, per_class images per class in train and half as many in val."""
    rng = np.random.default_rng(seed)
    out = Path(out)
    for split, count in (("train", per_class), ("val", max(1, per_class // 2))):
        for c in range(n_classes):
            for k in range(count):
                write_jpeg(out / split / f"class_{c:02d}" / f"{k:04d}.jpg", textured_image(c, n_classes, size, rng))
    return out


PLACES_IMAGES = Path("data/vision/torralba/deeplearning/images256")
PLACES_LISTS = Path("trainvalsplit_places205")


def write_places205(out: Path, seed: int = 0, n_classes: int = 5, train_per_class: int = 10,
                    val_per_class: int = 5, size: int = 64) -> Path:
    """Write FAIR's Places205 layout: images under data/vision/torralba/deeplearning/images256/s/sceneNNN/,
    lists trainvalsplit_places205/{train,val}_places205.csv ('<path> <label>') and categoryIndex_places205.csv."""
    rng = np.random.default_rng(seed)
    out = Path(out)
    (out / PLACES_LISTS).mkdir(parents=True, exist_ok=True)
    names = [f"s/scene{c:03d}" for c in range(n_classes)]
    (out / "categoryIndex_places205.csv").write_text("".join(f"/{name} {c}\n" for c, name in enumerate(names)))
    for split, count in (("train", train_per_class), ("val", val_per_class)):
        lines = []
        for c, name in enumerate(names):
            for k in range(count):
                relative = f"{name}/{split}_{k:05d}.jpg"
                write_jpeg(out / PLACES_IMAGES / relative, textured_image(c, n_classes, size, rng))
                lines.append(f"{relative} {c}\n")
        (out / PLACES_LISTS / f"{split}_places205.csv").write_text("".join(lines))
    return out


# ---------------------------------------------------------------- CLI entry

_PRESETS = {
    "voc": {"tiny": dict(n_trainval=60, n_test=60, size=96), "small": dict(n_trainval=300, n_test=300, size=160)},
    "nyuv2": {"tiny": dict(n_train=16, n_test=8, size=64), "small": dict(n_train=80, n_test=40, size=128)},
    "folder": {"tiny": dict(n_classes=4, per_class=10, size=48), "small": dict(n_classes=10, per_class=50, size=64)},
    "places205": {"tiny": dict(n_classes=5, train_per_class=10, val_per_class=5, size=64),
                  "small": dict(n_classes=20, train_per_class=40, val_per_class=10, size=96)},
}
_WRITERS = {"voc": write_voc, "nyuv2": write_nyuv2, "folder": write_folder, "places205": write_places205}


def make_data(kind: str, out: Path, seed: int = 0, size: str | None = None) -> Path:
    """`ssl-bench make-data KIND --out DIR`: write a generated dataset; returns the folder to pass as --data-root."""
    if kind not in _WRITERS:
        raise SslBenchError(f"unknown data kind '{kind}'.{did_you_mean(kind, _WRITERS)} "
                            f"Kinds: {', '.join(_WRITERS)}")
    size = size or "tiny"
    if size not in SIZES:
        raise SslBenchError(f"unknown --size '{size}'.{did_you_mean(size, SIZES)} Sizes: {', '.join(SIZES)}")
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise SslBenchError(f"--out {out} is a file; pass a folder to write the {kind} data into")
    return _WRITERS[kind](out, seed=seed, **_PRESETS[kind][size])
