"""`ssl-bench` command line: parse, call, print. Heavy imports happen inside the commands."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmark.errors import SslBenchError

LISTABLE = ("protocols", "recipes", "datasets", "archs", "zoo")
MAX_SEED = 2**32 - 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ssl-bench",
        description="Measure pretrained visual representations the way papers do.",
        epilog="Examples:\n"
               "  ssl-bench run --checkpoint random:resnet18 --protocol knn --dataset fashion_mnist\n"
               "  ssl-bench inspect ckpt.pth\n  ssl-bench list protocols\n"
               "  ssl-bench make-data voc --out data/voc\n"
               "  ssl-bench report --results results --out report --references\n"
               "  ssl-bench regress --baseline baseline.json --results results --junit regress.xml",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="evaluate a checkpoint with one protocol",
                              description="Evaluate a checkpoint with one protocol and write a result record.")
    run.add_argument("--checkpoint", required=True, metavar="SPEC",
                     help="a checkpoint file, random:ARCH or zoo:NAME")
    run.add_argument("--protocol", required=True, metavar="NAME", help="see `ssl-bench list protocols`")
    run.add_argument("--dataset", metavar="NAME",
                     help="dataset name (default: the protocol's); see `ssl-bench list datasets`")
    run.add_argument("--data-root", type=Path, metavar="DIR",
                     help="folder holding the dataset (for VOC: the folder holding VOCdevkit/)")
    run.add_argument("--taps", metavar="T1,T2", type=_comma_list,
                     help="layers to evaluate, e.g. conv1,res2,res3,res4,res5 (default: the protocol's)")
    run.add_argument("--results", type=Path, default=Path("results"), metavar="DIR",
                     help="where result records go (default: ./results)")
    run.add_argument("--device", default="auto", help="auto, cpu or cuda[:N] (default: auto)")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a protocol setting; repeatable")
    run.add_argument("--resume", action="store_true", help="continue an interrupted run from its saved state")
    run.add_argument("--allow-partial", action="store_true",
                     help="accept a checkpoint that lacks some trunk weights (they stay random)")
    run.add_argument("--arch", metavar="ARCH", help="architecture when the file does not name it")
    run.add_argument("--format", dest="checkpoint_format", metavar="NAME",
                     help="checkpoint format, overriding detection: native, torchvision, timm, vissl, "
                          "moco, moco_v3, dino, dino_student, prefixed (BYOL/solo-learn/lightly), sequential "
                          "(PyTorch-BYOL), lightning, detectron2 "
                          "(detectron2_c2 / detectron2_torchvision: stride in the 1x1 / 3x3 conv)")
    _add_pointer_options(run)
    run.add_argument("--name", metavar="NAME", help="name of the checkpoint in results and reports")
    run.add_argument("--seed", type=int, default=0, help="seed for everything random (default: 0)")
    run.add_argument("--batch-size", type=int, default=64, help="images per forward (default: 64)")
    run.add_argument("--workers", type=int, default=2, help="data loading processes (default: 2)")
    run.add_argument("--limit", type=int, metavar="N",
                     help="use N images of each split, classes taking turns, drawn with --seed (quick runs; recorded)")
    run.add_argument("--cache", type=Path, metavar="DIR",
                     help="feature cache (default: $SSL_BENCH_CACHE/features or ~/.cache/ssl-bench/features)")
    run.add_argument("--no-cache", action="store_true", help="do not read or write the feature cache")
    run.add_argument("--json", action="store_true", help="print the whole record as JSON")

    pretrain = commands.add_parser(
        "pretrain", help="train a self-supervised recipe and write a checkpoint",
        description="Pretrain a trunk with a recipe (see `ssl-bench list recipes`) on a dataset's training split "
                    "and write OUT/checkpoint.pth, which `ssl-bench run --checkpoint` reads as it is.",
        epilog="Example:\n  ssl-bench pretrain --recipe simclr --dataset fashion_mnist --out runs/simclr "
               "--epochs 20 --batch-size 256 --eval-every 5",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    pretrain.add_argument("--recipe", required=True, metavar="NAME", help="see `ssl-bench list recipes`")
    pretrain.add_argument("--dataset", default="fashion_mnist", metavar="NAME",
                          help="dataset whose training split is used (default: fashion_mnist)")
    pretrain.add_argument("--data-root", type=Path, metavar="DIR")
    pretrain.add_argument("--out", type=Path, required=True, metavar="DIR",
                          help="run folder: training states, TensorBoard logs, checkpoint.pth")
    pretrain.add_argument("--arch", default="resnet18_cifar", help="trunk architecture (default: resnet18_cifar)")
    pretrain.add_argument("--epochs", type=int, help="epochs (default: the paper's)")
    pretrain.add_argument("--batch-size", type=int, help="global batch (default: the paper's)")
    pretrain.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                          help="override a recipe setting; repeatable")
    pretrain.add_argument("--resume", action="store_true", help="continue from the run folder's training state")
    pretrain.add_argument("--overwrite", action="store_true", help="replace a finished run in --out")
    pretrain.add_argument("--seed", type=int, default=0)
    pretrain.add_argument("--device", default="auto", help="auto, cpu or cuda[:N] (default: auto)")
    pretrain.add_argument("--workers", type=int, default=2, help="data loading processes (default: 2)")
    pretrain.add_argument("--limit", type=int, metavar="N", help="use N training images, classes taking turns, drawn with --seed")
    pretrain.add_argument("--eval-every", type=int, default=0, metavar="N",
                          help="kNN check (res5avg, K=20) every N epochs, logged (default: never)")
    pretrain.add_argument("--eval-protocol", default="knn", choices=("knn",), help="the check's protocol")
    pretrain.add_argument("--eval-limit", type=int, default=2000, metavar="N",
                          help="images per split for the check (default: 2000)")

    inspect = commands.add_parser("inspect", help="show what a checkpoint holds and how it maps",
                                  description="Detected format, architecture, matched/missing/"
                                              "unexpected trunk keys and sha256 of a checkpoint.")
    inspect.add_argument("spec", metavar="SPEC", help="a checkpoint file, random:ARCH or zoo:NAME")
    inspect.add_argument("--arch", metavar="ARCH")
    inspect.add_argument("--format", dest="checkpoint_format", metavar="NAME")
    _add_pointer_options(inspect)
    inspect.add_argument("--keys", action="store_true", help="list every key, not only counts")

    report = commands.add_parser("report", help="tables and plots from result records",
                                 description="Build comparison tables (md, html, csv, tex) and plots from "
                                             "result records.")
    report.add_argument("--results", type=Path, nargs="+", default=[Path("results")], metavar="DIR",
                        help="folders of result records (default: ./results)")
    report.add_argument("--out", type=Path, default=Path("report"), metavar="DIR",
                        help="where the report goes (default: ./report)")
    report.add_argument("--format", dest="formats", type=_comma_list, default=("md", "html", "csv", "tex"),
                        metavar="md,html,csv,tex", help="which outputs to write (default: all)")
    report.add_argument("--references", action="store_true",
                        help="add the published reference rows (Goyal et al. 2019 and others), marked as such")
    report.add_argument("--strict", action="store_true", help="a malformed record is an error, not a warning")
    report.add_argument("--bootstrap", type=int, default=1000, metavar="N",
                        help="bootstrap resamples for intervals and significance marks (default: 1000, "
                             "as stored by every run; another N resamples the per-image arrays again)")

    regress = commands.add_parser("regress", help="fail when results drop below a baseline (for CI)",
                                  description="Compare result records with a baseline; exit 1 on a significant "
                                              "drop, a missing result or a changed config. Without a tolerance "
                                              "a drop is significant at one-sided 95% (p <= 0.05): a paired "
                                              "bootstrap of baseline and result over the same test images where "
                                              "both keep per-image results, else a z-test on the test-set size.")
    regress.add_argument("--baseline", type=Path, required=True, metavar="FILE")
    regress.add_argument("--results", type=Path, nargs="+", default=[Path("results")], metavar="DIR")
    regress.add_argument("--tolerance", type=float, default=None, metavar="POINTS",
                         help="allowed drop in metric points instead of the noise-aware test (default: the "
                              "baseline's; --write-baseline without it makes a noise-aware baseline)")
    regress.add_argument("--junit", type=Path, metavar="FILE", help="also write JUnit XML for CI systems")
    regress.add_argument("--write-baseline", action="store_true",
                         help="write the current results as the new baseline instead of comparing")
    regress.add_argument("--strict", action="store_true", help="a malformed record is an error, not a warning")

    listing = commands.add_parser("list", help="list protocols, recipes, datasets, archs or zoo entries")
    listing.add_argument("what", choices=LISTABLE)

    make_data = commands.add_parser("make-data", help="write a small generated dataset in a real on-disk format")
    make_data.add_argument("kind", metavar="KIND",
                           help="voc, nyuv2, folder or places205; nyuv2-from-mat converts the official files")
    make_data.add_argument("--out", type=Path, required=True, metavar="DIR")
    make_data.add_argument("--seed", type=int, default=0)
    make_data.add_argument("--size", default=None, help="tiny or small (default: tiny)")
    make_data.add_argument("--mat", type=Path, metavar="FILE",
                           help="nyuv2-from-mat: nyu_depth_v2_labeled.mat (normals: --normals, else its depth)")
    make_data.add_argument("--splits", type=Path, metavar="FILE", help="nyuv2-from-mat: the official splits.mat")
    make_data.add_argument("--overwrite", action="store_true",
                           help="write into a non-empty folder that is not an earlier make-data output of KIND")
    make_data.add_argument("--normals", type=Path, metavar="DIR",
                           help="nyuv2-from-mat: ground-truth normals, one nm_NNNNNN.mat (nx, ny, nz, depthValid) "
                                "per image; without it normals are computed from depth")
    return parser


def _add_pointer_options(command: argparse.ArgumentParser) -> None:
    command.add_argument("--key", dest="checkpoint_key", metavar="KEY",
                         help="the dict inside the file that holds the trunk, e.g. teacher or a.b.c "
                              "(with --prefix: for layouts detection does not know)")
    command.add_argument("--prefix", dest="checkpoint_prefix", metavar="PREFIX",
                         help="the prefix the trunk's keys carry there, e.g. module.encoder. (stripped; the rest "
                              "must be torchvision/timm names, or those of --format)")


def _comma_list(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def cmd_run(args: argparse.Namespace) -> int:
    from benchmark.config import parse_overrides
    from benchmark.progress import progress_factory
    from benchmark.results import split_arrays
    from benchmark.runner import RunOptions, default_cache_dir, run

    options = RunOptions(
        checkpoint=args.checkpoint, protocol=args.protocol, dataset=args.dataset, data_root=args.data_root,
        taps=args.taps, results_dir=args.results, device=args.device,
        overrides=parse_overrides(args.overrides), resume=args.resume, allow_partial=args.allow_partial,
        arch=args.arch, checkpoint_format=args.checkpoint_format, checkpoint_key=args.checkpoint_key,
        checkpoint_prefix=args.checkpoint_prefix, name=args.name, seed=args.seed,
        batch_size=_positive(args.batch_size, "--batch-size"), workers=max(0, args.workers),
        limit=_positive(args.limit, "--limit") if args.limit is not None else None,
        cache_dir=None if args.no_cache else (args.cache or default_cache_dir()))

    record, path = run(options, progress_factory=progress_factory(_log), log=_log)
    for note in record["checkpoint"].get("meta", {}).get("notes", []):
        print(f"checkpoint: {note}")
    if args.json:  # as stored: per-image arrays are references into the record's side file
        print(json.dumps(split_arrays(record)[0], indent=2, sort_keys=True))
    else:
        print(format_checkpoint(record["checkpoint"]))
        print(format_metrics(record))
        print(f"result: {path}")
    return 0


def format_checkpoint(checkpoint: dict[str, Any]) -> str:
    """One line: the detected format and arch, how the trunk keys matched, and what was adapted."""
    line = (f"checkpoint {checkpoint['name']}: format {checkpoint['format']}, arch {checkpoint['arch']}; trunk keys "
            f"{checkpoint['matched_keys']} matched, {checkpoint['missing_keys']} missing, "
            f"{checkpoint['unexpected_keys']} unexpected, {checkpoint['ignored_keys']} ignored")
    if checkpoint["missing_keys"]:
        line += f"; {checkpoint['missing_keys']} stay at their random init (--allow-partial)"
    resized = checkpoint["meta"].get("pos_embed_resized")
    return line + (f"; position embeddings resized {resized}" if resized else "")


def format_metrics(record: dict[str, Any]) -> str:
    """A plain-text table: one row per tap, one column per metric."""
    metrics = record["metrics"]
    shown = list(dict.fromkeys(m for values in metrics.values() for m in values))
    header = ["tap", *shown]
    rows = [[tap, *[f"{values.get(m, float('nan')):.2f}" for m in shown]] for tap, values in metrics.items()]
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)) for r in [header, *rows]]
    title = f"{record['protocol']['name']} on {record['dataset']['name']}: {record['checkpoint']['name']}"
    return "\n".join([title, *lines])


def cmd_inspect(args: argparse.Namespace) -> int:
    from checkpoints.formats import inspect_checkpoint

    report = inspect_checkpoint(args.spec, arch=args.arch, fmt=args.checkpoint_format, key=args.checkpoint_key,
                                prefix=args.checkpoint_prefix)
    for key, value in report.items():
        if isinstance(value, list):
            print(f"{key}: {len(value)}")
            if args.keys:
                for item in value:
                    print(f"  {item}")
        elif isinstance(value, dict):
            print(f"{key}: {json.dumps(value, sort_keys=True)}")
        else:
            print(f"{key}: {value}")
    return 0


def cmd_pretrain(args: argparse.Namespace) -> int:
    from benchmark.config import parse_overrides
    from benchmark.pretrain import PretrainOptions, pretrain
    from benchmark.progress import progress_factory

    options = PretrainOptions(
        recipe=args.recipe, out=args.out, dataset=args.dataset, data_root=args.data_root, arch=args.arch,
        epochs=_positive(args.epochs, "--epochs") if args.epochs is not None else None,
        batch_size=_positive(args.batch_size, "--batch-size") if args.batch_size is not None else None,
        overrides=parse_overrides(args.overrides), resume=args.resume, overwrite=args.overwrite, seed=args.seed,
        device=args.device, workers=max(0, args.workers),
        limit=_positive(args.limit, "--limit") if args.limit is not None else None,
        eval_every=max(0, args.eval_every), eval_limit=_positive(args.eval_limit, "--eval-limit"))

    path = pretrain(options, progress_factory=progress_factory(_log), log=_log)
    print(f"checkpoint: {path}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    if args.what == "zoo":
        from checkpoints.zoo import list_zoo

        for entry in list_zoo():
            print(f"{entry.name:24s} {entry.arch:10s} {entry.method:14s} {entry.url}")
        return 0
    from benchmark.registry import ARCHS, DATASETS, PROTOCOLS, RECIPES

    registry = {"protocols": PROTOCOLS, "recipes": RECIPES, "datasets": DATASETS, "archs": ARCHS}[args.what]
    for name in registry.names():
        print(f"{name:20s} {_summary(registry.get(name))}")
    return 0


def _summary(target: Any) -> str:
    doc = (getattr(target, "__doc__", None) or "").strip()
    return doc.splitlines()[0] if doc else ""


def cmd_report(args: argparse.Namespace) -> int:
    from reports.report import build_report

    written = build_report(args.results, args.out, formats=args.formats, references=args.references,
                           strict=args.strict, warn=_warn, n_boot=_positive(args.bootstrap, "--bootstrap"))
    for path in written:
        print(f"wrote {path}")
    return 0


def cmd_regress(args: argparse.Namespace) -> int:
    from benchmark.writable import check_output_file
    from reports.regress import run_regress

    if args.write_baseline:
        check_output_file(args.baseline, "baseline", "--baseline")
    if args.junit is not None:
        check_output_file(args.junit, "JUnit file", "--junit")

    return run_regress(args.baseline, args.results, tolerance=args.tolerance, junit_path=args.junit,
                       write_baseline=args.write_baseline, strict=args.strict, warn=_warn)


def cmd_make_data(args: argparse.Namespace) -> int:
    from benchmark.data.make_output import make_data_output

    with make_data_output(args.out, args.kind, overwrite=args.overwrite):
        path = _make_data(args)
    print(f"wrote {args.kind} data to {path}")
    return 0


def _make_data(args: argparse.Namespace) -> Path:
    from benchmark.data.synthetic import make_data

    if args.kind == "nyuv2-from-mat":
        from benchmark.data.nyuv2 import convert_mat
        if args.mat is None or args.splits is None:
            raise SslBenchError("make-data nyuv2-from-mat needs --mat nyu_depth_v2_labeled.mat "
                                "and --splits splits.mat")
        path = convert_mat(args.mat, args.splits, args.out, normals_dir=args.normals)
    else:
        path = make_data(args.kind, args.out, seed=args.seed, size=args.size)
    return path


def _check_seed(args: argparse.Namespace) -> None:
    seed = getattr(args, "seed", None)
    if seed is not None and not 0 <= seed <= MAX_SEED:
        raise SslBenchError(f"--seed must be an integer from 0 to {MAX_SEED} (numpy's seed range), got {seed}")


def _stdout_closed() -> int:
    """The reader of stdout went away (`ssl-bench inspect --keys | head`): stop quietly, as `cat` does."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so the interpreter's final flush has somewhere to go
    except (OSError, ValueError):
        pass
    return 128 + signal.SIGPIPE


def _positive(value: int, flag: str) -> int:
    if value < 1:
        raise SslBenchError(f"{flag} must be at least 1, got {value}")
    return value


def _log(message: str) -> None:
    """A progress or status line on stderr; under torchrun only rank 0 prints."""
    from benchmark.progress import is_main_rank

    if is_main_rank():
        print(f"[ssl-bench] {message}", file=sys.stderr, flush=True)


def _warn(message: str) -> None:
    print(f"ssl-bench: warning: {message}", file=sys.stderr)


COMMANDS = {"run": cmd_run, "pretrain": cmd_pretrain, "inspect": cmd_inspect, "list": cmd_list, "make-data": cmd_make_data,
            "report": cmd_report, "regress": cmd_regress}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        _check_seed(args)
        code = COMMANDS[args.command](args)
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's exit
        return code
    except BrokenPipeError:
        return _stdout_closed()
    except SslBenchError as exc:
        print(f"ssl-bench: error: {one_line(str(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ssl-bench: interrupted; finished work is saved, rerun with --resume to continue",
              file=sys.stderr)
        return 130


def one_line(message: str) -> str:
    """The user-facing line of an error message (drops tracebacks that worker processes attach)."""
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    if not lines:
        return "unknown error"
    last = lines[-1]
    prefix = "benchmark.errors.SslBenchError: "
    return last[len(prefix):] if last.startswith(prefix) else lines[0]


if __name__ == "__main__":
    sys.exit(main())
