"""Plot layout: the legend names every checkpoint and fits in the figure, however long the names."""

from __future__ import annotations

import io
import re

import numpy as np
import pandas as pd
import pytest
from matplotlib.image import imread

from reports.plots import tap_profiles
from reports.records import COLUMNS, RecordSet

TAPS = ("conv1", "res3", "res5")
LONG = "zz-" + "W" * 50  # sorts last, so it sits in the legend's right-most column


def profile_records(names: list[str]) -> RecordSet:
    """A voc07_svm RecordSet straight from frame rows, one record per name."""
    rows = [{"checkpoint": name, "protocol": "voc07_svm", "variant": "voc07_svm", "config_digest": "0",
             "dataset": "voc2007", "dataset_digest": "d", "tap": tap, "metric": "mAP",
             "value": 10.0 + i + 5 * TAPS.index(tap), "primary": True, "path": f"/results/{i}.json"}
            for i, name in enumerate(names) for tap in TAPS]
    records = {f"/results/{i}.json": {"taps": list(TAPS)} for i in range(len(names))}
    return RecordSet(pd.DataFrame(rows, columns=list(COLUMNS)), records, {"voc07_svm": {"dataset": "voc2007"}})


@pytest.mark.parametrize("count", [3, 40])
def test_legend_names_every_checkpoint_within_the_figure(count):
    names = [f"ckpt-{i:02d}" for i in range(count - 1)] + [LONG]
    (plot,) = tap_profiles(profile_records(names), formats=("png", "svg"))
    drawn = re.findall(r"<!-- (.*?) -->", plot.images["svg"].decode())  # matplotlib writes each text as a comment
    assert all(name in drawn for name in names)
    image = imread(io.BytesIO(plot.png))
    ink = np.flatnonzero((image[..., :3] < 0.9).any(axis=(0, 2)))  # pixel columns with anything drawn
    assert image.shape[1] - 60 < ink[-1] < image.shape[1] - 3  # the long name ends inside, without much padding


@pytest.mark.parametrize("count", [1, 10, 11, 20, 21, 60])
def test_palette_colours_are_pairwise_distinct(count):
    from itertools import combinations

    from matplotlib import colormaps

    from reports.plots import palette

    colours = np.asarray(palette(count), dtype=float)
    assert colours.shape == (count, 3)
    assert min((np.linalg.norm(a - b) for a, b in combinations(colours, 2)), default=1.0) > 0.02
    if count <= 10:
        np.testing.assert_allclose(colours, colormaps["tab10"].colors[:count])


def test_every_checkpoint_line_gets_its_own_colour_beyond_ten():
    names = [f"ckpt-{i:02d}" for i in range(25)]
    (plot,) = tap_profiles(profile_records(names), formats=("svg",))
    svg = plot.images["svg"].decode()
    strokes = set(re.findall(r"stroke: (#[0-9a-f]{6})", svg)) - {"#000000", "#ffffff", "#b0b0b0"}  # axes, grid
    assert len(strokes) == 25
