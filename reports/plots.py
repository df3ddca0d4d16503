"""Report figures from the records frame: low-shot curves and per-tap profiles (Goyal et al. 2019 style).

Figures are plain matplotlib Figure objects on an Agg canvas, never registered
with pyplot, so nothing leaks into global state; they are rendered to bytes and
dropped. Names are text, not markup: `$` is escaped so that no checkpoint name
can switch matplotlib into mathtext.
"""

from __future__ import annotations

import dataclasses
import io
import re
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from benchmark.record import WHOLE_NETWORK
from reports.records import RecordSet
from reports.references import BEST, shown_references

LOWSHOT_MEAN = re.compile(r"^mAP_k(\d+)_mean$")
LOWSHOT_STD = r"mAP_k\d+_std"
IMAGE_FORMATS = ("png", "svg")
MAX_LABEL = 56
LINESTYLES = ("-", "-.", ":")
REFERENCE_MARKERS = ("x", "+", "^", "s", "v", "D")
DPI = 100
AXES_SIZE = (5.4, 3.3)  # inches
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_BOTTOM, MARGIN_TOP = 0.75, 0.1, 0.6, 0.35
LEGEND_ROWS = 24  # legend entries per column
LEGEND_FONT = 7
LEGEND_GAP = 0.15  # inches between the axes and the legend, and after it


@dataclasses.dataclass(frozen=True)
class Plot:
    """One rendered figure: a file stem, a plain-text title and alt text, and its bytes per image format."""

    name: str
    title: str
    alt: str
    images: dict[str, bytes]
    sources: tuple[str, ...] = ()

    @property
    def png(self) -> bytes:
        return self.images["png"]


def lowshot_curves(records: RecordSet, references: bool = False,
                   formats: Sequence[str] = ("png",)) -> list[Plot]:
    """Per low-shot variant: mAP (mean over samples, band of ± std) vs k on a log2 axis, one line per checkpoint.

    Each checkpoint is drawn at its best tap (highest mean mAP at its largest k); published
    low-shot rows are dashed when `references` is on.
    """
    frame = records.frame
    shots = frame["metric"].str.extract(LOWSHOT_MEAN, expand=False)
    lowshot = frame[shots.notna()].assign(k=pd.to_numeric(shots[shots.notna()]))
    stds = frame[frame["metric"].str.fullmatch(LOWSHOT_STD)]
    std_of = dict(zip(zip(stds["path"], stds["tap"], stds["metric"]), stds["value"]))
    plots = []
    for variant, rows in lowshot.groupby("variant", sort=True):
        fig, ax = _figure()
        all_ks: set[int] = set()
        sources: set[str] = set()
        by_path = dict(tuple(rows.groupby("path", sort=False)))
        lines = _lines(rows)
        for n, (label, path) in enumerate(lines):
            mine = by_path[path]
            top = mine[mine["k"] == mine["k"].max()]
            tap = str(top.loc[top["value"].idxmax(), "tap"])  # best tap: highest mean mAP at the largest k
            curve = mine[mine["tap"] == tap].sort_values("k")
            ks = curve["k"].to_numpy(int)
            mean = curve["value"].to_numpy(float)
            std = np.array([std_of.get((path, tap, f"mAP_k{k}_std"), 0.0) for k in ks])
            color, style = _style(n, len(lines))
            ax.plot(ks, mean, style, color=color, marker="o", markersize=3, label=_text(f"{label} ({tap})"))
            ax.fill_between(ks, mean - std, mean + std, color=color, alpha=0.18, linewidth=0)
            all_ks.update(ks.tolist())
        if references:
            refs = _lowshot_references(records.variants[variant])
            for r, (name, source, curve) in enumerate(refs):
                ks = sorted(curve)
                ax.plot(ks, [curve[k] for k in ks], **_reference_style(r), label=_text(f"ref: {name}"))
                all_ks.update(ks)
                sources.add(source)
        ticks = sorted(all_ks)
        ax.set_xscale("log", base=2)
        ax.set_xticks(ticks, [str(k) for k in ticks])
        ax.minorticks_off()
        ax.set_xlabel("k (positives per class)")
        ax.set_ylabel("test mAP (mean ± std over samples)")
        title = f"{variant}: low-shot mAP vs k"
        plots.append(_finish(fig, ax, f"lowshot-{variant}", title,
                             f"Line plot of {title}, one line per checkpoint at its best tap", formats, sources))
    return plots


def tap_profiles(records: RecordSet, references: bool = False,
                 formats: Sequence[str] = ("png",)) -> list[Plot]:
    """Per protocol variant: its primary metric vs tap, one line per checkpoint; published rows dashed.

    Results of the whole network (key `network`) have no tap to place, so a variant with only those gets no plot.
    """
    frame = records.frame
    primary = frame[frame["primary"] & (frame["tap"] != WHOLE_NETWORK)]
    plots = []
    for variant, rows in primary.groupby("variant", sort=True):
        metric = str(rows["metric"].iloc[0])
        refs = _tap_references(records.variants[variant], metric) if references else []
        taps = merge_orders([_taps(records.records[path]) for path in rows["path"].unique()]
                            + [list(values) for _, _, values in refs])
        position = {tap: i for i, tap in enumerate(taps)}
        fig, ax = _figure()
        rows = rows.assign(x=rows["tap"].map(position)).sort_values("x", kind="stable")
        by_path = dict(tuple(rows.groupby("path", sort=False)))
        lines = _lines(rows)
        for n, (label, path) in enumerate(lines):
            line = by_path[path]
            color, style = _style(n, len(lines))
            ax.plot(line["x"], line["value"], style, color=color, marker="o", markersize=3, label=_text(label))
        for n, (name, _, values) in enumerate(refs):
            xs = sorted(position[tap] for tap in values)
            ax.plot(xs, [values[taps[x]] for x in xs], **_reference_style(n), label=_text(f"ref: {name}"))
        ax.set_xticks(range(len(taps)), [_text(tap) for tap in taps])
        ax.set_xlabel("tap")
        ax.set_ylabel(_text(metric))
        title = f"{variant}: {metric} per tap"
        plots.append(_finish(fig, ax, f"taps-{variant}", title, f"Line plot of {title}, one line per checkpoint",
                             formats, {source for _, source, _ in refs}))
    return plots


def merge_orders(orders: Iterable[Sequence[str]]) -> list[str]:
    """One order consistent with every given order where possible (conv1..res5 from the records' taps)."""
    merged: list[str] = []
    for order in orders:
        at = 0
        for item in order:
            if item in merged:
                at = merged.index(item) + 1
            else:
                merged.insert(at, item)
                at += 1
    return merged


def _lowshot_references(settings: dict[str, Any]) -> list[tuple[str, str, dict[int, float]]]:
    """(checkpoint, source, {k: mAP}) of the published low-shot rows shown beside a variant (one value per k)."""
    curves: dict[tuple[str, str], dict[int, float]] = {}
    for row in shown_references(settings)[0]:
        match = LOWSHOT_MEAN.match(row.metric)
        if match and len(row.values) == 1:
            curves.setdefault((row.checkpoint, row.source), {})[int(match.group(1))] = next(iter(row.values.values()))
    return [(name, source, curve) for (name, source), curve in curves.items()]


def _tap_references(settings: dict[str, Any], metric: str) -> list[tuple[str, str, dict[str, float]]]:
    """(checkpoint, source, {tap: value}) of the published per-tap rows shown beside a variant ('best tap' left out)."""
    rows = []
    for row in shown_references(settings, metric)[0]:
        values = {tap: value for tap, value in row.values.items() if tap not in (BEST, WHOLE_NETWORK)}
        if values:
            rows.append((row.checkpoint, row.source, values))
    return rows


def _taps(record: dict) -> list[str]:
    return [tap for tap in record.get("taps") or record["metrics"] if tap != WHOLE_NETWORK]


def _lines(rows: pd.DataFrame) -> list[tuple[str, str]]:
    """(legend label, record path) per record of a variant, sorted by checkpoint; repeated names get [2], [3]."""
    pairs = rows[["checkpoint", "path"]].drop_duplicates().sort_values(["checkpoint", "path"])
    seen: dict[str, int] = {}
    lines = []
    for checkpoint, path in pairs.itertuples(index=False):
        seen[checkpoint] = seen.get(checkpoint, 0) + 1
        lines.append((checkpoint if seen[checkpoint] == 1 else f"{checkpoint} [{seen[checkpoint]}]", path))
    return lines


def _text(name: str, limit: int = MAX_LABEL) -> str:
    """A name as literal matplotlib text: `$` escaped, shortened, never starting with `_` (hidden by legends)."""
    name = name if len(name) <= limit else name[:limit - 1] + "…"
    name = name.replace("$", r"\$")
    return " " + name if name.startswith("_") else name


def palette(count: int) -> list[tuple[float, ...]]:
    """`count` distinct line colours: tab10 up to 10, tab20 (its dark half first) up to 20, else spread over turbo."""
    if count <= 10:
        return list(colormaps["tab10"].colors[:count])
    if count <= 20:
        pairs = colormaps["tab20"].colors
        return list((pairs[0::2] + pairs[1::2])[:count])
    return [tuple(c) for c in colormaps["turbo"](np.linspace(0.03, 0.97, count))[:, :3]]


def _style(n: int, count: int) -> tuple[tuple[float, ...], str]:
    """Colour and line style of line n of `count`: every colour distinct; styles cycle too, for print in grey."""
    return palette(count)[n], LINESTYLES[(n // 10) % len(LINESTYLES)]


def _reference_style(n: int) -> dict[str, object]:
    """Published rows: dashed, in greys, told apart by their markers."""
    return {"linestyle": "--", "linewidth": 1.1, "color": str(0.15 + 0.12 * (n % 5)),
            "marker": REFERENCE_MARKERS[n % len(REFERENCE_MARKERS)], "markersize": 4}


def _figure() -> tuple[Figure, Axes]:
    """A figure with one axes of fixed size in inches; _finish widens it for the legend."""
    fig = Figure(figsize=(MARGIN_LEFT + AXES_SIZE[0] + MARGIN_RIGHT, MARGIN_BOTTOM + AXES_SIZE[1] + MARGIN_TOP),
                 dpi=DPI)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.grid(True, linewidth=0.4, alpha=0.6)
    return fig, ax


def _place(fig: Figure, ax: Axes, legend_width: float) -> None:
    """Size the figure for the axes plus a legend column block of legend_width inches on the right."""
    width = MARGIN_LEFT + AXES_SIZE[0] + MARGIN_RIGHT + legend_width
    height = MARGIN_BOTTOM + AXES_SIZE[1] + MARGIN_TOP
    fig.set_size_inches(width, height)
    ax.set_position((MARGIN_LEFT / width, MARGIN_BOTTOM / height, AXES_SIZE[0] / width, AXES_SIZE[1] / height))


def _finish(fig: Figure, ax: Axes, name: str, title: str, alt: str, formats: Sequence[str],
            sources: Iterable[str] = ()) -> Plot:
    unknown = [f for f in formats if f not in IMAGE_FORMATS]
    if unknown:
        raise ValueError(f"image formats {unknown} are not among {IMAGE_FORMATS}")
    ax.set_title(_text(title, limit=3 * MAX_LABEL), fontsize=10)
    handles, _ = ax.get_legend_handles_labels()
    legend_width = 0.0
    if handles:
        # a fixed layout (no constrained/tight pass): the legend is laid out once to measure it, then placed
        legend = ax.legend(fontsize=LEGEND_FONT, loc="upper left", borderaxespad=0, frameon=False,
                           bbox_to_anchor=(1 + LEGEND_GAP / AXES_SIZE[0], 1.0), ncols=-(-len(handles) // LEGEND_ROWS),
                           handlelength=1.8, columnspacing=0.6)
        legend_width = 2 * LEGEND_GAP + legend.get_window_extent(fig.canvas.get_renderer()).width / fig.dpi
    _place(fig, ax, legend_width)
    images = {}
    for fmt in formats:
        buffer = io.BytesIO()
        fig.savefig(buffer, format=fmt, metadata=None if fmt == "png" else {"Date": None})
        images[fmt] = buffer.getvalue()
    return Plot(name=name, title=title, alt=alt, images=images, sources=tuple(sorted(sources)))
