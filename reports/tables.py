"""Result tables (one per protocol variant and metric, plus a summary) and their renderers.

Layouts, in the manner of Goyal et al. 2019:

- `protocol_tables`: one table per variant of a protocol and its primary
  metric; rows are checkpoints, columns taps (conv1 .. res5avg order). A
  metric reported as mean/std over samples per k (lowshot's mAP_k{k}_mean)
  gives one such table per k, cells "mean ± std".
- `summary_table`: rows are checkpoints, one column per variant: the primary
  metric at the checkpoint's best tap, the tap named in the cell.

Which way is better comes from the records (RecordSet.direction: declared
by the protocol, guessed by name for schema-1 records); a metric declared
with no direction (a spread) gets no bold and no † at all. Taps run conv1 ..
res5avg, then ``network`` (protocols that train the whole network), then any
other name.

Marks, explained in every caption:

- bold: in a protocol table the best tap of each row; in the summary the best
  checkpoint of each column;
- † (dagger): the best entry of its column and every entry not significantly
  worse than it (paired bootstrap over the same test images, p > 0.05), as in
  the SimCLR transfer table. Only entries whose records keep per-image results
  for that metric can be tested; the others are left unmarked;
- [lo, hi]: BCa bootstrap 95% interval over test images, where per-image results
  exist.

Published reference rows (`references=True`) come after the checkpoints,
flagged in `reference_rows`, with their source in `sources`; they take part in
the row marks but never in the column marks. Values are the recorded numbers
(x100 for accuracies and mAP).
"""

from __future__ import annotations

import dataclasses
import html
import io
import math
import re
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from benchmark.bootstrap import ALPHA, EVIDENCE, N_BOOT, SEED, Bootstrap, aligned
from benchmark.record import WHOLE_NETWORK
from reports.records import RecordSet, as_direction
from reports.provenance import conditions_text
from reports.references import BEST, ReferenceRow, shown_references
from reports.uncertainty import Uncertainty

TAP_ORDER = ("conv1", "conv2", "conv3", "conv4", "conv5", "res2", "res3", "res4", "res5", "res5avg")
DAGGER = "†"
MEAN_FAMILY = re.compile(r"(?P<family>.+)_k(?P<k>\d+)_mean")


@dataclasses.dataclass
class Table:
    """A rendered-to-be table: numbers and marks on one (row label x column) grid.

    values: float (NaN where there is no number); index = row labels
      (checkpoints, then published rows), columns = taps or variants.
    bold, not_worse: bool frames on the same grid (see the module docstring).
    intervals: (lo, hi) tuples or None; spread: std over samples or NaN, or None
      for the whole table; cell_notes: text after a number (the best tap in the
      summary) or None for the whole table.
    reference_rows: row labels of published rows; sources: their citations.
    higher_is_better: the metric's direction; None: not a score, nothing marked.
    """

    title: str
    caption: str
    values: pd.DataFrame
    bold: pd.DataFrame
    not_worse: pd.DataFrame
    intervals: pd.DataFrame
    metric: str
    variant: str
    spread: pd.DataFrame | None = None
    cell_notes: pd.DataFrame | None = None
    reference_rows: set[str] = dataclasses.field(default_factory=set)
    sources: dict[str, str] = dataclasses.field(default_factory=dict)
    higher_is_better: bool | None = True
    digits: int = 2


def tap_order(columns: list[str]) -> list[str]:
    """Taps in network order (conv1 .. res5avg), then the whole network, then any other column in sorted order."""
    order = (*TAP_ORDER, WHOLE_NETWORK)
    return [t for t in order if t in columns] + sorted(c for c in columns if c not in order)


def protocol_tables(records: RecordSet, references: bool = False, n_boot: int = N_BOOT, seed: int = SEED,
                    uncertainty: Uncertainty | None = None) -> list[Table]:
    """One table per protocol variant and primary metric (per k for mean-over-samples families)."""
    cache = uncertainty or Uncertainty(records, n_boot, seed)
    frame = records.frame
    tables = []
    for variant, settings in records.variants.items():
        rows = frame[frame["variant"] == variant]
        for metric, std_metric in _table_metrics(rows, settings["primary_metric"]):
            tables.append(_protocol_table(records, cache, rows, variant, settings, metric, std_metric, references))
    return tables


def _table_metrics(rows: pd.DataFrame, primary: str) -> list[tuple[str, str | None]]:
    """(metric, its std metric or None) to table: the primary, or its whole per-k family."""
    match = MEAN_FAMILY.fullmatch(primary)
    if not match:
        return [(primary, None)]
    family = match["family"]
    ks = sorted({int(m["k"]) for name in rows["metric"].unique()
                 if (m := MEAN_FAMILY.fullmatch(name)) and m["family"] == family})
    present = set(rows["metric"])
    return [(f"{family}_k{k}_mean", std if (std := f"{family}_k{k}_std") in present else None) for k in ks]


def _protocol_table(records: RecordSet, cache: Uncertainty, rows: pd.DataFrame, variant: str,
                    settings: dict[str, Any], metric: str, std_metric: str | None, references: bool) -> Table:
    chosen = rows[rows["metric"] == metric]
    values = chosen.pivot(index="checkpoint", columns="tap", values="value")
    paths = chosen.pivot(index="checkpoint", columns="tap", values="path")
    spread = None
    if std_metric is not None:
        std_rows = rows[rows["metric"] == std_metric]
        spread = std_rows.pivot(index="checkpoint", columns="tap", values="value").reindex_like(values)
    refs, left_out = _references(references, settings, metric)
    ref_rows = {_ref_label(ref, values.index): {k: v for k, v in ref.values.items() if k != BEST} for ref in refs}
    ref_rows = {label: v for label, v in ref_rows.items() if v}
    columns = tap_order(sorted(set(values.columns) | {c for v in ref_rows.values() for c in v}))
    index = list(values.index) + list(ref_rows)
    values = values.reindex(index=index, columns=columns)
    for label, cells in ref_rows.items():
        for column, value in cells.items():
            values.loc[label, column] = value
    values = values.astype(float)
    if spread is not None:
        spread = spread.reindex(index=index, columns=columns).astype(float)
    paths = paths.reindex(index=index, columns=columns).to_numpy(dtype=object)
    evidence = _grid(values, lambda i, j: cache.evidence(paths[i, j], columns[j], metric))
    intervals = _grid(values, lambda i, j: cache.interval(paths[i, j], columns[j], metric))
    higher = records.direction(variant, metric)
    bold = _row_best(values, higher)
    measured = [r for r in index if r not in ref_rows]
    not_worse = _column_not_worse(values, evidence, measured, higher, cache.bootstrap)
    shown = [ref for ref in refs if _ref_label(ref, chosen["checkpoint"].unique()) in ref_rows]
    caption = " ".join(filter(None, [
        _settings_text(settings, metric),
        _bold_text("tap of each row", {metric: higher}),
        _marks_text(intervals, cache, spread is not None),
        conditions_text((row.checkpoint, records.records[row.path]) for row in chosen.itertuples(index=False)),
        _sources_text(shown, chosen["checkpoint"].unique()), left_out]))
    return Table(title=f"{variant}: {metric}", caption=caption, values=values, bold=bold, not_worse=not_worse,
                 intervals=intervals, metric=metric, variant=variant, spread=spread,
                 reference_rows=set(ref_rows), sources={_ref_label(r, chosen["checkpoint"].unique()): r.source
                                                        for r in shown},
                 higher_is_better=higher)


def summary_table(records: RecordSet, references: bool = False, n_boot: int = N_BOOT, seed: int = SEED,
                  uncertainty: Uncertainty | None = None) -> Table:
    """Rows checkpoints, one column per variant: the primary metric at each row's best tap."""
    cache = uncertainty or Uncertainty(records, n_boot, seed)
    checkpoints = records.checkpoints
    variants = list(records.variants)
    cells: dict[tuple[str, str], tuple[float, str, str]] = {}  # (checkpoint, variant) -> (value, tap, path)
    for best in _best_taps(records).itertuples(index=False):
        cells[(best.checkpoint, best.variant)] = (best.value, best.tap, best.path)
    std_values = {(r.checkpoint, r.variant, r.tap, r.metric): r.value
                  for r in records.frame.itertuples(index=False) if r.metric.endswith("_std")}
    grid = {name: {v: {} for v in variants} for name in ("values", "spread", "notes", "evidence", "intervals")}
    for (checkpoint, variant), (value, tap, path) in cells.items():
        metric = records.variants[variant]["primary_metric"]
        grid["values"][variant][checkpoint] = value
        grid["notes"][variant][checkpoint] = tap
        grid["evidence"][variant][checkpoint] = cache.evidence(path, tap, metric)
        grid["intervals"][variant][checkpoint] = cache.interval(path, tap, metric)
        grid["spread"][variant][checkpoint] = std_values.get((checkpoint, variant, tap, _std_of(metric)), np.nan)
    conditions = conditions_text((checkpoint, records.records[path]) for (checkpoint, _), (_, _, path) in cells.items())
    values, spread, notes, evidence, intervals = (
        pd.DataFrame(grid[name], index=checkpoints, columns=variants,
                     dtype=float if name in ("values", "spread") else object)
        for name in ("values", "spread", "notes", "evidence", "intervals"))
    ref_cells: dict[str, dict[str, tuple[float, str]]] = {}
    shown: dict[str, ReferenceRow] = {}
    left_out: list[str] = []
    for variant in variants:
        settings = records.variants[variant]
        metric = settings["primary_metric"]
        refs, why = _references(references, settings, metric)
        left_out += [f"{variant}: {why}"] if why else []
        for ref in refs:
            label = _ref_label(ref, checkpoints)
            ref_cells.setdefault(label, {})[variant] = _best_reference_value(ref, records.direction(variant, metric))
            shown[label] = ref
    index = checkpoints + list(ref_cells)
    values, spread, notes = values.reindex(index), spread.reindex(index), notes.reindex(index).fillna("")
    evidence, intervals = evidence.reindex(index), intervals.reindex(index)
    for label, cells in ref_cells.items():
        for variant, (value, column) in cells.items():
            values.loc[label, variant] = value
            notes.loc[label, variant] = column
    higher = {v: records.direction(v, records.variants[v]["primary_metric"]) for v in variants}
    bold = pd.DataFrame(False, index=index, columns=variants)
    not_worse = pd.DataFrame(False, index=index, columns=variants)
    for variant in variants:
        column = _column_not_worse(values[[variant]], evidence[[variant]], checkpoints, higher[variant],
                                   cache.bootstrap)
        not_worse[variant] = column[variant]
        top = _top(values.loc[checkpoints, variant], higher[variant])
        bold.loc[top, variant] = True
    metrics = "; ".join(f"{v}: {records.variants[v]['primary_metric']}" for v in variants)
    caption = " ".join(filter(None, [
        f"Primary metric of each protocol variant at each checkpoint's best tap (named in the cell): {metrics}.",
        _bold_text("checkpoint of each column", higher),
        _marks_text(intervals, cache, bool(spread.notna().to_numpy().any())),
        conditions,
        _sources_text(list(shown.values()), checkpoints), *left_out]))
    return Table(title="Summary: best tap per protocol", caption=caption, values=values.astype(float), bold=bold,
                 not_worse=not_worse, intervals=intervals, metric="primary", variant="",
                 spread=spread if spread.notna().to_numpy().any() else None, cell_notes=notes,
                 reference_rows=set(ref_cells), sources={label: ref.source for label, ref in shown.items()})


def _best_taps(records: RecordSet) -> pd.DataFrame:
    """One frame row per (checkpoint, variant): the primary metric at its best tap (first in tap order on ties).

    A primary metric with no direction cannot be ranked: its first tap in tap order stands for the row.
    """
    frame = records.frame[records.frame["primary"]]
    rank = {tap: i for i, tap in enumerate(tap_order(list(frame["tap"].unique())))}
    sign = frame["higher_is_better"].map(lambda h: {True: 1.0, False: -1.0}.get(as_direction(h), 0.0))
    ordered = frame.assign(_key=-sign * frame["value"], _rank=frame["tap"].map(rank))
    ordered = ordered.sort_values(["_key", "_rank"], kind="stable")
    return ordered.drop_duplicates(["checkpoint", "variant"]).drop(columns=["_key", "_rank"])


def _std_of(metric: str) -> str | None:
    return metric[:-len("_mean")] + "_std" if metric.endswith("_mean") else None


def _references(wanted: bool, settings: dict[str, Any], metric: str) -> tuple[list[ReferenceRow], str]:
    """(published rows to show, why rows are left out or '') when references are wanted."""
    return shown_references(settings, metric) if wanted else ([], "")


def _ref_label(ref: ReferenceRow, checkpoints: Any) -> str:
    """A published row's label, kept apart from a checkpoint of the same name."""
    return f"{ref.checkpoint} [published]" if ref.checkpoint in set(checkpoints) else ref.checkpoint


def _best_reference_value(ref: ReferenceRow, higher: bool | None) -> tuple[float, str]:
    """(value, column shown beside it; '' for BEST) of a published row's best entry (the highest when undirected)."""
    column = (min if higher is False else max)(ref.values, key=ref.values.__getitem__)
    return ref.values[column], "" if column == BEST else column


def _grid(values: pd.DataFrame, cell: Callable[[int, int], Any]) -> pd.DataFrame:
    """An object frame shaped like values, cell(row position, column position) in each cell."""
    return pd.DataFrame([[cell(i, j) for j in range(values.shape[1])] for i in range(values.shape[0])],
                        index=values.index, columns=values.columns, dtype=object)


def _best_mask(grid: np.ndarray, higher: bool | None, axis: int) -> np.ndarray:
    """True where a value is the best non-NaN value along axis (all of them on ties); nowhere when undirected."""
    if higher is None:
        return np.zeros(grid.shape, dtype=bool)
    worst = -np.inf if higher else np.inf
    present = ~np.isnan(grid)
    reduce = np.max if higher else np.min
    best = reduce(np.where(present, grid, worst), axis=axis, keepdims=True, initial=worst)  # initial: empty axes
    return present & (grid == best)


def _top(series: pd.Series, higher: bool | None) -> list[str]:
    """Labels holding the best value of series, NaN aside (all of them on ties)."""
    return list(series.index[_best_mask(series.to_numpy(dtype=float), higher, axis=0)])


def _row_best(values: pd.DataFrame, higher: bool | None) -> pd.DataFrame:
    """True where a value is the best of its row, NaN aside (all of them on ties)."""
    return pd.DataFrame(_best_mask(values.to_numpy(dtype=float), higher, axis=1), index=values.index,
                        columns=values.columns)


def _column_not_worse(values: pd.DataFrame, evidence: pd.DataFrame, measured: list[str], higher: bool | None,
                      bootstrap: Bootstrap) -> pd.DataFrame:
    """† marks: per column, the best measured entry and those a paired bootstrap cannot tell worse (if directed)."""
    marks = np.zeros(values.shape, dtype=bool)
    rows = [values.index.get_loc(label) for label in measured]
    found = evidence.to_numpy(dtype=object)
    tops = _best_mask(values.to_numpy(dtype=float)[rows], higher, axis=0)
    for j in range(values.shape[1]):
        top = [i for i, is_top in zip(rows, tops[:, j]) if is_top]
        marks[top, j] = True
        best = next((found[i, j] for i in top if isinstance(found[i, j], EVIDENCE)), None)
        if best is None:
            continue
        for i in rows:
            other = found[i, j]
            if i in top or not isinstance(other, EVIDENCE) or not aligned(best, other):
                continue
            p = bootstrap.pvalue(best, other) if higher else bootstrap.pvalue(other, best)
            marks[i, j] = p > ALPHA
    return pd.DataFrame(marks, index=values.index, columns=values.columns)


def _bold_text(what: str, directions: dict[str, bool | None]) -> str:
    """'Bold: best <what>.', then which of the named metrics or columns are lower-is-better or left unmarked."""
    lower = [name for name, higher in directions.items() if higher is False]
    unmarked = [name for name, higher in directions.items() if higher is None]
    return " ".join(filter(None, [
        f"Bold: best {what}.",
        f"Lower is better for {', '.join(lower)}." if lower else "",
        f"No marks for {', '.join(unmarked)}: a spread, not a score." if unmarked else ""]))


def _settings_text(settings: dict[str, Any], metric: str) -> str:
    config = ", ".join(f"{k}={_compact(v)}" for k, v in sorted(settings["config"].items())) or "defaults"
    return (f"{metric} of protocol {settings['protocol']} v{settings['version']} on {settings['dataset']} "
            f"(data digest {str(settings['dataset_digest'])[:8]}); config: {config}.")


def _compact(value: Any) -> str:
    return ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def _marks_text(intervals: pd.DataFrame, cache: Uncertainty, has_spread: bool) -> str:
    parts = [(f"{DAGGER}: best of its column, or not significantly worse than it (paired bootstrap over the same "
              f"test images, one-sided p > {ALPHA}, {cache.n_boot} resamples, seed {cache.seed}); entries without "
              "per-image results are not tested.")]
    if any(isinstance(v, tuple) for v in intervals.to_numpy().ravel()):
        parts.append(f"[lo, hi]: BCa bootstrap 95% interval over test images ({cache.n_boot} resamples, "
                     f"seed {cache.seed}).")
    if has_spread:
        parts.append("mean ± std over samples.")
    return " ".join(parts)


def _sources_text(refs: list[ReferenceRow], checkpoints: Any) -> str:
    if not refs:
        return ""
    seen: dict[str, list[str]] = {}
    for ref in refs:
        seen.setdefault(ref.source, []).append(f"{_ref_label(ref, checkpoints)} ({ref.note})" if ref.note
                                               else _ref_label(ref, checkpoints))
    return "Published rows, not measured here: " + " ".join(
        f"{'; '.join(labels)}: {source}." for source, labels in seen.items())


# ----------------------------------------------------------------------------------------------- renderers

def _texts(table: Table) -> list[list[str | None]]:
    """Each cell's plain text: value, ± std, (tap), [lo, hi]; None for an empty cell."""
    d = table.digits
    values = table.values.to_numpy(dtype=float)
    spread = None if table.spread is None else table.spread.to_numpy(dtype=float)
    notes = None if table.cell_notes is None else table.cell_notes.to_numpy()
    intervals = table.intervals.to_numpy()
    out: list[list[str | None]] = []
    for i, row in enumerate(values):
        texts: list[str | None] = []
        for j, value in enumerate(row):
            if not math.isfinite(value):
                texts.append(None)
                continue
            text = f"{value:.{d}f}"
            if spread is not None and math.isfinite(spread[i, j]):
                text += f" ± {spread[i, j]:.{d}f}"
            if notes is not None and isinstance(notes[i, j], str) and notes[i, j]:
                text += f" ({notes[i, j]})"
            if isinstance(intervals[i, j], tuple):
                text += f" [{intervals[i, j][0]:.{d}f}, {intervals[i, j][1]:.{d}f}]"
            texts.append(text)
        out.append(texts)
    return out


def _rows(table: Table, cell: Callable[[str, bool, bool], str], empty: str,
          label: Callable[[str, bool], str]) -> list[list[str]]:
    bold, not_worse = table.bold.to_numpy(dtype=bool), table.not_worse.to_numpy(dtype=bool)
    out = []
    for i, (row, texts) in enumerate(zip(table.values.index, _texts(table))):
        cells = [label(row, row in table.reference_rows)]
        cells += [empty if text is None else cell(text, bold[i, j], not_worse[i, j]) for j, text in enumerate(texts)]
        out.append(cells)
    return out


_MD_SPECIAL = re.compile(r"([\\`*_\[\]<>#|])")


def _md(text: str) -> str:
    return _MD_SPECIAL.sub(r"\\\1", str(text)).replace("\n", " ")


def to_markdown(table: Table) -> str:
    """A GitHub-flavoured Markdown table with title and caption; published rows in italics."""
    header = ["checkpoint", *table.values.columns]
    rows = _rows(table, lambda text, bold, dagger: (f"**{text}**" if bold else text) + (DAGGER if dagger else ""),
                 "–", lambda row, published: f"*{_md(row)}* (published)" if published else _md(row))
    lines = [f"### {_md(table.title)}", "", "| " + " | ".join(_md(h) for h in header) + " |",
             "|" + "---|" + "---:|" * (len(header) - 1)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join([*lines, "", _md(table.caption), ""])


def to_csv(table: Table) -> str:
    """The numbers: one column per tap/variant, then std, tap, interval bounds, published flag and source."""
    frame = table.values.copy()
    for column in table.values.columns:
        if table.spread is not None and table.spread[column].notna().any():
            frame[f"{column} std"] = table.spread[column]
        if table.cell_notes is not None:
            frame[f"{column} tap"] = table.cell_notes[column]
        bounds = [b if isinstance(b, tuple) else (np.nan, np.nan) for b in table.intervals[column]]
        if any(math.isfinite(lo) for lo, _ in bounds):
            frame[f"{column} lo"] = [lo for lo, _ in bounds]
            frame[f"{column} hi"] = [hi for _, hi in bounds]
    frame["published"] = [row in table.reference_rows for row in frame.index]
    frame["source"] = [table.sources.get(row, "") for row in frame.index]
    frame.index.name = "checkpoint"
    buffer = io.StringIO()
    frame.to_csv(buffer)
    return buffer.getvalue()


_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                  "<": r"\textless{}", ">": r"\textgreater{}", "|": r"\textbar{}"}


def latex_escape(text: str) -> str:
    """Text safe inside a LaTeX document (special characters replaced)."""
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in str(text))


def to_latex(table: Table) -> str:
    """A booktabs table (needs \\usepackage{booktabs}); best bold, † as $^\\dagger$, published rows italic."""
    def cell(text: str, bold: bool, dagger: bool) -> str:
        body = latex_escape(text).replace("±", r"$\pm$")
        return (rf"\textbf{{{body}}}" if bold else body) + (r"$^\dagger$" if dagger else "")

    rows = _rows(table, cell, "--", lambda row, published:
                 rf"\textit{{{latex_escape(row)}}} (published)" if published else latex_escape(row))
    measured = [r for r, label in zip(rows, table.values.index) if label not in table.reference_rows]
    published = [r for r, label in zip(rows, table.values.index) if label in table.reference_rows]
    caption = latex_escape(table.caption).replace("±", r"$\pm$").replace(DAGGER, r"$^\dagger$")
    lines = [r"\begin{table}[t]", r"\centering", rf"\caption{{{latex_escape(table.title)}. {caption}}}",
             r"\begin{tabular}{l" + "r" * len(table.values.columns) + "}", r"\toprule",
             " & ".join(["checkpoint", *(latex_escape(c) for c in table.values.columns)]) + r" \\", r"\midrule"]
    lines += [" & ".join(r) + r" \\" for r in measured]
    if published:
        lines.append(r"\midrule")
        lines += [" & ".join(r) + r" \\" for r in published]
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}", ""]
    return "\n".join(lines)


def to_html(table: Table) -> str:
    """An HTML <table> fragment; every name and the caption escaped, published rows labelled and styled."""
    def cell(text: str, bold: bool, dagger: bool) -> str:
        body = html.escape(text)
        body = f"<strong>{body}</strong>" if bold else body
        if dagger:
            body += ('<sup class="not-worse" title="best of its column or not significantly worse than it">'
                     f"{DAGGER}</sup>")
        return f"<td>{body}</td>"

    def label(row: str, published: bool) -> str:
        if not published:
            return f'<th scope="row">{html.escape(row)}</th>'
        source = html.escape(table.sources.get(row, ""), quote=True)
        return (f'<th scope="row" title="{source}">{html.escape(row)} '
                '<span class="published-tag">published</span></th>')

    rows = _rows(table, cell, "<td>–</td>", label)
    header = "".join(f'<th scope="col">{html.escape(str(c))}</th>' for c in ["checkpoint", *table.values.columns])
    body = []
    for r, row in zip(rows, table.values.index):
        css = ' class="published"' if row in table.reference_rows else ""
        body.append(f"<tr{css}>{''.join(r)}</tr>")
    return "\n".join([
        '<table class="ssl-bench-table">',
        (f"<caption><strong>{html.escape(table.title)}</strong><br><small>{html.escape(table.caption)}</small>"
         "</caption>"),
        f"<thead><tr>{header}</tr></thead>",
        "<tbody>", *body, "</tbody>", "</table>", ""])
