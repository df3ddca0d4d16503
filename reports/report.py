"""build_report: result records -> report.md, report.html, tables/*.csv, report.tex and plots/*.png.

Records are read once; tables and plots are built once and rendered to every
requested format. Every file is written atomically (temporary file + rename).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path

from benchmark import __version__
from benchmark.bootstrap import N_BOOT
from benchmark.errors import SslBenchError
from benchmark.results import atomic_write_bytes, atomic_write_text, safe_name
from reports.html import plot_caption, render_html
from reports.manifest import replace_manifest
from reports.plots import Plot, lowshot_curves, tap_profiles
from reports.records import RecordSet, load_records
from reports.tables import (
    DAGGER,
    Table,
    protocol_tables,
    summary_table,
    to_csv,
    to_html,
    to_latex,
    to_markdown,
)
from reports.uncertainty import Uncertainty

FORMATS = ("md", "html", "csv", "tex")
TITLE = "ssl-bench report"
LATEX_FLOATS_PER_PAGE = 6  # \clearpage after this many tables keeps LaTeX under its float limit
_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]<>()#+!|~])")


def build_report(results_dirs: Sequence[Path], out: Path, formats: Sequence[str] = FORMATS,
                 references: bool = False, strict: bool = False,
                 warn: Callable[[str], None] | None = None, n_boot: int = N_BOOT) -> list[Path]:
    """Write the report of every record under results_dirs into out; returns the written paths.

    md and html come with plots/*.png (md links them, html embeds them); csv writes
    tables/<name>.csv, one per table; tex writes report.tex (tables only).
    """
    wanted = check_formats(formats)
    out = Path(out)
    dirs = [Path(d) for d in results_dirs]
    warnings: list[str] = []

    def collect(message: str) -> None:
        warnings.append(message)
        if warn is not None:
            warn(message)

    records = load_records(dirs, strict=strict, warn=collect)
    _check_out(out)
    uncertainty = Uncertainty(records, n_boot, warn=collect)  # one bootstrap cache shared by every table
    tables = [summary_table(records, references, uncertainty=uncertainty),
              *protocol_tables(records, references, uncertainty=uncertainty)]
    plots = _plots(records, references) if {"md", "html"} & set(wanted) else []
    written: list[Path] = []
    for plot in plots:
        written.append(atomic_write_bytes(out / "plots" / f"{plot.name}.png", plot.png))
    sources = [str(d) for d in dirs]
    footer = _footer(tables, plots)
    if "md" in wanted:
        text = _markdown(tables, plots, sources, len(records.records), warnings, footer)
        written.append(atomic_write_text(out / "report.md", text))
    if "html" in wanted:
        text = render_html(title=TITLE, sources=sources, n_records=len(records.records), warnings=warnings,
                           tables=[to_html(t) for t in tables], plots=plots, footer=footer)
        written.append(atomic_write_text(out / "report.html", text))
    if "csv" in wanted:
        for name, table in zip(_unique_names(["summary", *(t.title for t in tables[1:])]), tables):
            written.append(atomic_write_text(out / "tables" / f"{name}.csv", to_csv(table)))
    if "tex" in wanted:
        written.append(atomic_write_text(out / "report.tex", _latex(tables)))
    written.append(replace_manifest(out, written))  # and files of an earlier report not written again go
    return written


def check_formats(formats: Sequence[str]) -> list[str]:
    """The requested formats in FORMATS order; SslBenchError naming the valid ones for anything else."""
    requested = [f.strip().lower() for f in formats if f.strip()]
    unknown = [f for f in requested if f not in FORMATS]
    if unknown or not requested:
        shown = ", ".join(repr(f) for f in unknown) if unknown else "none"
        raise SslBenchError(f"unknown report format {shown}; pass --format with one or more of "
                            f"{','.join(FORMATS)}")
    return [f for f in FORMATS if f in requested]


def _check_out(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SslBenchError(f"report dir {out} cannot be created ({exc.strerror}); pass --out DIR") from None
    if not os.access(out, os.W_OK):
        raise SslBenchError(f"report dir {out} is not writable; pass --out DIR")


def _plots(records: RecordSet, references: bool) -> list[Plot]:
    plots = [*tap_profiles(records, references), *lowshot_curves(records, references)]
    names = _unique_names([p.name for p in plots])
    return [Plot(name, p.title, p.alt, p.images, p.sources) for name, p in zip(names, plots)]


def _unique_names(names: Sequence[str]) -> list[str]:
    """File stems from free-form names: safe characters only, -2, -3 ... on collisions."""
    used: set[str] = set()
    stems = []
    for name in names:
        base = safe_name(name)
        stem, n = base, 1
        while stem.lower() in used:
            n += 1
            stem = f"{base}-{n}"
        used.add(stem.lower())
        stems.append(stem)
    return stems


def _footer(tables: Sequence[Table], plots: Sequence[Plot]) -> list[str]:
    sources = sorted({s for t in tables for s in t.sources.values()} | {s for p in plots for s in p.sources})
    lines = [(f"Marks: bold is the best tap of a row in a protocol table and the best checkpoint of a column in "
             f"the summary; {DAGGER} marks the best entry of a column and every entry not significantly worse "
             "than it (paired bootstrap over the same test images, p > 0.05); [lo, hi] is a BCa bootstrap 95% "
             "interval over test images; mean ± std is over low-shot samples. Entries whose records keep no "
             "per-image results carry no interval and no significance mark. Each table's caption gives the "
             "protocol settings that made its numbers.")]
    if sources:
        lines.append("Published rows (marked 'published', dashed in the plots) are copied from: "
                     + "; ".join(sources) + ".")
    lines.append(f"Made by ssl-bench {__version__}.")
    return lines


def _md(text: str) -> str:
    return _MD_SPECIAL.sub(r"\\\1", text).replace("\n", " ")


def _markdown(tables: Sequence[Table], plots: Sequence[Plot], sources: Sequence[str], n_records: int,
              warnings: Sequence[str], footer: Sequence[str]) -> str:
    lines = [f"# {TITLE}", "", f"{n_records} result record{'s' if n_records != 1 else ''} read from "
             + ", ".join(f"`{s.replace('`', '')}`" for s in sources) + ".", ""]
    if warnings:
        lines += [f"Warnings while reading the records ({len(warnings)}):", ""]
        lines += [f"- {_md(w)}" for w in warnings] + [""]
    lines += ["## Tables", ""] + [to_markdown(t) for t in tables]
    if plots:
        lines += ["## Plots", ""]
        for plot in plots:
            lines += [f"![{_md(plot.alt)}](plots/{plot.name}.png)", "", f"*{_md(plot_caption(plot))}*", ""]
    lines += ["---", ""] + [f"{_md(line)}\n" for line in footer]
    return "\n".join(lines)


def _latex(tables: Sequence[Table]) -> str:
    lines = [r"\documentclass{article}", r"\usepackage[utf8]{inputenc}", r"\usepackage[T1]{fontenc}",
             r"\usepackage{booktabs}", r"\usepackage{textcomp}", r"\begin{document}", ""]
    for n, table in enumerate(tables, 1):
        lines.append(to_latex(table))
        if n % LATEX_FLOATS_PER_PAGE == 0 and n < len(tables):
            lines.append(r"\clearpage")
    lines += [r"\end{document}", ""]
    return "\n".join(lines)
