"""``shiftkit``: train, sweep, report and demo from the command line.

    shiftkit train loss=poly weighting=iw weighting.exponent=1.5 seed=3
    shiftkit train -m seed=0,1,2 loss=ce,poly weighting=erm,iw       # a sweep: every combination
    shiftkit train -m hydra/launcher=joblib seed=0,1,2,3             # ... through a Hydra launcher
    torchrun --nproc_per_node=2 -m shiftkit train                     # one run over two processes (DDP)
    shiftkit sweep --methods group_dro,jtt,dfr --trials 16 --seeds 3 data=fmnist_spurious  # random search
    shiftkit report results/ --select val/worst_group_acc                    # ... and model selection
    shiftkit reproduce wang2022-fig1 --scale quick --out results/fig1   # a paper's figure or table
    shiftkit demo
    shiftkit list

Bad input (an unknown name, a value of the wrong type, a missing directory) prints one line,
``shiftkit: error: ...``, and exits with status 2; nothing that looks like a finished result is written.

One module: the command line is one parser and the short handler of each subcommand it dispatches to,
read best side by side.
"""

from __future__ import annotations

import argparse
import signal
import sys
import warnings
from typing import List, Optional

from . import plugins, precision
from .errors import ShiftkitError, ShiftkitWarning
from .scheduler import Terminated, stopping_on
from .sweep import run_many


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    if issubclass(category, ShiftkitWarning):
        print(f"shiftkit: warning: {message}", file=sys.stderr)
    else:
        _show_warning(message, category, filename, lineno, file, line)


_show_warning = warnings.showwarning


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, not argparse's usage block
        raise ShiftkitError(message)


def _train(args: argparse.Namespace) -> int:
    from .config import check_repeated, expand_sweep, fit_options, legacy_overrides
    from .launch import launch, launcher_name

    args.overrides = legacy_overrides(args.overrides)
    check_repeated(args.overrides)
    if args.show:
        return _show(fit_options(expand_sweep(args.overrides)) if args.multirun else [list(args.overrides)])
    if args.multirun and launcher_name(args.overrides) is not None:  # through Hydra's launcher plugin
        records = launch(args.overrides)
    else:
        lists = fit_options(expand_sweep(args.overrides)) if args.multirun else [list(args.overrides)]
        records = run_many(lists, label="sweep" if args.multirun else "run")
    from . import distributed

    for record in records if distributed.is_primary() else ():  # under torchrun, rank 0 reports
        print(record["run_dir"])
    return 0


def _sweep(args: argparse.Namespace) -> int:
    """A seeded random search (docs/METHODS.md#search): every method's trials, each over the seeds; through
    a Hydra launcher where ``hydra/launcher=NAME`` is given."""
    from .config import check_repeated, expand_sweep, legacy_overrides
    from .hparams import plan, seeds_of
    from .launch import launch, launcher_name, split

    overrides = legacy_overrides(args.overrides)
    check_repeated(overrides)
    methods = [m.strip() for m in (args.methods or "").split(",") if m.strip()]
    runs = [run for base in expand_sweep(split(overrides)[1])
            for run in plan(methods, args.trials, seeds_of(args.seeds), base, args.tune, args.search_seed)]
    lists = [run["overrides"] for run in runs]
    if args.show or args.show_configs:
        for run in runs:
            if run["seed"] == runs[0]["seed"]:
                shown = ", ".join(f"{k}={v}" for k, v in run["values"].items()) or "defaults"
                print(f"{run['method']} trial {run['trial']}: {shown}")
        return _show(lists) if args.show_configs else 0
    records = (launch(overrides, runs=lists, diverged_ok=True) if launcher_name(overrides) is not None
               else run_many(lists, label="search", diverged_ok=True))
    for record in records:
        if "run_dir" in record:  # a diverged run has no result
            print(record["run_dir"])
    return 0


def _pretrain(args: argparse.Namespace) -> int:
    """One training run that keeps its model: ``weights.safetensors`` in its run directory, copied to
    ``--save`` for ``model.weights=FILE`` (docs/PRETRAINED.md)."""
    import shutil
    from pathlib import Path

    from . import files, rundir
    from .config import check_repeated
    from .models.weights import sha256

    check_repeated(args.overrides)
    if any(o.split("=", 1)[0].lstrip("+~") == "save_weights" for o in args.overrides):
        raise ShiftkitError("shiftkit pretrain sets save_weights itself; leave it out")
    target = Path(args.save).expanduser()
    if target.is_dir():
        raise ShiftkitError(f"--save {args.save} is a folder; name the weight file to write")
    files.make_dirs(target.parent)
    (record,) = run_many([[*args.overrides, "save_weights=true"]], label="pretrain")
    source = Path(record["run_dir"]) / rundir.WEIGHTS_FILE
    with files.atomic(target, binary=True) as handle, open(source, "rb") as weights:
        shutil.copyfileobj(weights, handle)
    print(f"{target} (sha256 {sha256(target)}; from {record['run_dir']})")
    return 0


def _show(override_lists: List[List[str]]) -> int:
    """Print each run's composed config and run directory, checked as a run would be, without training."""
    from omegaconf import OmegaConf

    from .config import compose
    from .runner import check_sweep

    configs = [compose(o) for o in override_lists]
    for i, (cfg, out) in enumerate(zip(configs, check_sweep(configs))):
        print(f"# run {i + 1} of {len(configs)}: {out}")
        print(OmegaConf.to_yaml(cfg).rstrip())
    return 0


def _report(args: argparse.Namespace) -> int:
    from .report import parse_columns, report

    report(args.dir, parse_columns(args.metrics), which=args.which, baseline=args.baseline, show_curves=args.curves,
           fmt=args.format, pair_mismatched=args.pair_mismatched, log=args.log, select=args.select)
    return 0


def _demo(args: argparse.Namespace) -> int:
    from pathlib import Path

    from rich.console import Console

    from .reproductions import demo
    from .report import report

    from .config import check_repeated

    if args.seeds < 1:
        raise ShiftkitError(f"--seeds must be >= 1, got {args.seeds}")
    check_repeated(args.overrides)
    run_many(demo.runs(args.seeds, args.out, args.overrides), label="demo")
    report(Path(args.out), baseline=demo.BASELINE, show_curves=True)
    Console().print(f"runs, report.json, report.png and curves.png are in {args.out}/")
    return 0


def _reproduce(args: argparse.Namespace) -> int:
    from rich.console import Console

    from . import reproductions
    from .reproductions.reproduction import verdict

    if args.name is None:
        for name in reproductions.names():
            repro = reproductions.REPRODUCTIONS.get(name)
            print(f"{name}: {repro.title} ({repro.source})")
        return 0
    out = args.out or str(reproductions.reproduction.default_out(args.name, args.scale))
    runs = args.runs or (None if args.out else "results/reproduce/runs")
    summary = reproductions.reproduce(args.name, args.scale, out, args.device, args.set, runs=runs, amp=args.amp)
    console = Console(soft_wrap=True)  # paths and claims stay whole lines
    for quantity, paper, ours in summary.rows:
        console.print(f"{quantity}: ours {ours} (paper {paper})")
    for claim in summary.claims:
        console.print(f"[bold]{verdict(claim.holds)}[/bold]: {claim.text} ({claim.evidence})")
    console.print(f"figures, summary.md and summary.json are in {out}/")
    return 0


def _list(args: argparse.Namespace) -> int:
    from . import catalog
    from . import reproductions
    from .config import GROUPS, experiments

    if args.group is not None:
        print(catalog.markdown(args.group) if args.markdown else catalog.text(args.group))
        return 0
    if args.markdown:
        raise ShiftkitError("--markdown lists one group: shiftkit list GROUP --markdown")
    for group, registry in GROUPS.items():
        print(f"{group}: {', '.join(registry.names())}")
    print(f"experiment: {', '.join(experiments())}")
    print(f"reproduce: {', '.join(reproductions.names())}")
    print(f"(shiftkit list GROUP: each name of {', '.join(GROUPS)} with its options and defaults)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``shiftkit`` argument parser and its subcommands. Function of more than 40 lines: one declaration of
    every subcommand and option, read best whole as the command line's reference."""
    parser = _Parser(prog="shiftkit", description="Classifiers that do well on every class and group.")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)
    train = sub.add_parser(
        "train",
        help="train one run, or a sweep with -m (Hydra override syntax)",
        epilog="Groups: data, model, loss, weighting, sampler, optim (their names: shiftkit list); "
        "experiment=NAME applies a preset. Other keys: train.{epochs,batch_size,eval_every,select,amp,compile,divergence}, "
        "procedure=plain|autobalance (procedure.*; search.* still reads as AutoBalance's), diagnostics.{enabled,reference}, checkpoint.{every,interval,keep}, "
        "logger=none|tensorboard|mlflow (logger.*), seed, device, out, name, ensemble, save_weights; every model takes "
        "model.weights=FILE|imagenet and model.freeze=backbone, every dataset data.features_from=MODEL (docs/PRETRAINED.md). A killed run resumes from "
        "its checkpoint when the same command runs again; torchrun --nproc_per_node=N -m shiftkit train ... "
        "trains one run over N processes (docs/RUNS.md). "
        "With -m, hydra/launcher=NAME runs the sweep through Hydra's launcher instead of in-process: joblib "
        "(hydra.launcher.n_jobs), submitit_slurm (hydra.launcher.partition, timeout_min, gpus_per_node, "
        "array_parallelism) or ray (hydra.launcher.ray.init.address); runs already done are not launched again "
        "(docs/SWEEPS.md).",
    )
    train.add_argument(
        "-m", "--multirun", action="store_true",
        help="sweep over comma lists and range(); in-process, or through hydra/launcher=joblib|submitit_slurm|ray",
    )
    train.add_argument("--show", action="store_true",
                       help="print the composed config of each run and its directory, checked, without training")
    train.add_argument("overrides", nargs="*", help="key=value overrides, e.g. loss=poly weighting.exponent=1.5")
    train.set_defaults(func=_train)
    swp = sub.add_parser(
        "sweep",
        help="seeded random hyperparameter search: each method's trials over seeds (then report --select)",
        epilog="Each method is a registered loss, weighting, sampler or procedure (group_dro, la, jtt), names "
        "joined by + (poly+iw), a preset (autobalance) or overrides joined by + (loss=vs+weighting=group_dro). "
        "Trial 0 is the defaults; trial t draws every option of the method's search space (and, with --tune all, "
        "optim.lr and optim.weight_decay) from a generator seeded by (--search-seed, method, t, option), so more "
        "trials extend a search and finished runs are skipped. Keys given on the command line are not searched; "
        "comma lists in them sweep as with train -m (data=fmnist_spurious,fmnist_lt); hydra/launcher=NAME runs "
        "the search through that launcher (docs/SWEEPS.md).",
    )
    swp.add_argument("--methods", required=True, help="comma list of methods, e.g. erm,group_dro,jtt,poly+iw")
    swp.add_argument("--trials", type=int, default=8, help="hyperparameter settings per method (default 8)")
    swp.add_argument("--seeds", default="3", help="seeds per setting: a count or a comma list (default 3)")
    swp.add_argument("--search-seed", type=int, default=0, help="the search's own seed (default 0)")
    swp.add_argument("--tune", default="all", choices=["all", "method"],
                     help="all: the method's options and the optimizer's lr and weight decay (default); method: only the method's")
    swp.add_argument("--show", action="store_true", help="print each trial's values without training")
    swp.add_argument("--show-configs", action="store_true", help="print every run's composed config without training")
    swp.add_argument("overrides", nargs="*", help="key=value overrides applied to every run")
    swp.set_defaults(func=_sweep)
    pre = sub.add_parser(
        "pretrain",
        help="train one run and save its model as a weight file for model.weights= or data.features_weights=",
        epilog="Takes the overrides of shiftkit train (one run, no -m); the run is recorded like any other, and "
        "a repeated command reuses it. Example: shiftkit pretrain data=fmnist_pretrain model=resnet18 "
        "model.width=16 --save backbones/fmnist8-resnet18.safetensors (docs/PRETRAINED.md).",
    )
    pre.add_argument("--save", required=True, metavar="FILE", help="the weight file to write (safetensors)")
    pre.add_argument("overrides", nargs="*", help="key=value overrides, as for shiftkit train")
    pre.set_defaults(func=_pretrain)
    rep = sub.add_parser("report", help="tables (mean ± s.e.m. over seeds) and a bar chart of finished runs")
    rep.add_argument("dir", help="a results directory")
    rep.add_argument("--metrics", nargs="+", help="columns as split/metric, e.g. test/balanced_acc train/acc")
    rep.add_argument("--which", default="selected", help="'selected' (model selection) or 'final' weights")
    rep.add_argument("--baseline", help="a method (or a unique prefix of one) to test against: one-sided paired "
                     "t-test over seeds, for methods that trained as the baseline did")
    rep.add_argument("--pair-mismatched", action="store_true",
                     help="also pair methods whose training differs from the baseline's (epochs, optimizer, model)")
    rep.add_argument("--select", metavar="CRITERION",
                     help="model selection across runs: per method, the setting of a search (shiftkit sweep) with the "
                     "best val/<metric> (e.g. val/worst_group_acc, val/worst_class_acc, val/acc) or, labelled oracle, "
                     "test metric (oracle, oracle/<metric>); its test metrics over seeds are reported")
    rep.add_argument("--curves", action="store_true", help="also print the first metric by epoch")
    rep.add_argument("--format", default="table", choices=["table", "csv", "markdown", "latex"],
                     help="print the tables as csv, markdown or latex on stdout instead (default: table)")
    rep.add_argument("--log", choices=["tensorboard", "mlflow"],
                     help="also log every finished run to this tracker from its files (tensorboard: DIR/tensorboard)")
    rep.set_defaults(func=_report)
    demo = sub.add_parser("demo", help="the demo: ERM vs IW vs Poly+IW on imbalanced digits")
    demo.add_argument("--out", default="results/demo", help="results directory (default results/demo)")
    demo.add_argument("--seeds", type=int, default=5, help="seeds per method (default 5)")
    demo.add_argument("overrides", nargs="*", help="extra overrides applied to every run")
    demo.set_defaults(func=_demo)
    rpr = sub.add_parser(
        "reproduce",
        help="a paper's figure or table: figures, summary.md and summary.json with our numbers beside the paper's",
        epilog="Without NAME, lists the reproductions. Scales: tiny (seconds, a smoke test), quick (<= 10 minutes "
        "on 2 CPU cores), paper (the papers' epochs and seeds). --set changes one setting of the scale, e.g. "
        "--set seeds=5.",
    )
    rpr.add_argument("name", nargs="?", help="e.g. wang2022-fig1 (shiftkit reproduce lists them)")
    rpr.add_argument("--scale", default="quick", help="tiny, quick (default) or paper")
    rpr.add_argument("--out", help="output directory (default results/reproduce/NAME, NAME-tiny or NAME-paper)")
    rpr.add_argument("--device", default="auto", help="auto (default), cpu or cuda")
    rpr.add_argument("--amp", default="auto", choices=precision.CHOICES,
                     help="every training run's train.amp (default auto: docs/PERFORMANCE.md#precision)")
    rpr.add_argument(
        "--runs", help="where training runs go (default: OUT/runs with --out, else results/reproduce/runs, "
        "shared by all reproductions so that finished runs are reused)"
    )
    rpr.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                     help="change settings of the scale (repeatable: --set a=1 --set b=2 is --set a=1 b=2)")
    rpr.set_defaults(func=_reproduce)
    lst = sub.add_parser("list", help="the registered names of every config group, and the experiment presets; "
                         "with GROUP, each name's options, types and defaults")
    lst.add_argument("group", nargs="?", help="data, model, loss, weighting, sampler, optim or logger")
    lst.add_argument("--markdown", action="store_true", help="the group's page of docs/options/ (Markdown)")
    lst.set_defaults(func=_list)
    return parser


def entry() -> int:
    """The ``shiftkit`` program and ``python -m shiftkit``: :func:`main` in a process of its own, which
    also chooses the process's threads (:mod:`shiftkit.threads`; an in-process ``main`` leaves them be)."""
    return main(process=True)


def main(argv: Optional[List[str]] = None, process: bool = False) -> int:
    """The command line: 0 on success, 2 with one ``shiftkit: error:`` line for bad input or a failed
    run, 130 (Ctrl-C) or 143 (SIGTERM) with one line when interrupted. ``process``: this process is the
    command's own (:func:`entry`), whose threads it chooses."""
    with stopping_on((signal.SIGTERM,)), warnings.catch_warnings():
        warnings.showwarning = _one_line_warning
        warnings.simplefilter("always", ShiftkitWarning)
        return _main(argv, process)


def _held_signals():
    """Hold Ctrl-C and SIGTERM while torch's compiled core loads: an interrupt raised inside one of its
    callbacks into Python cannot unwind through C++ and aborts the process. The signal is acted on (as
    ``KeyboardInterrupt`` or :class:`Terminated`, by the handlers installed before) as soon as the import
    is done (:func:`shiftkit.files.signals_held`)."""
    from .files import signals_held

    return signals_held()


def _main(argv: Optional[List[str]], process: bool = False) -> int:
    try:
        with _held_signals():
            import torch  # noqa: F401 (loaded here, with signals held)
        if process:
            from . import threads

            threads.configure()
        plugins.load()  # before the arguments: plugins' names are listed, composed and validated like built-ins
        parser = build_parser()
        args, extra = parser.parse_known_args(argv)
        if extra and getattr(args, "overrides", None) is not None and not any(e.startswith("-") for e in extra):
            args.overrides += extra  # overrides after -m (``shiftkit train loss=poly -m seed=0,1``)
        elif extra:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        if args.command is None:
            parser.print_help(sys.stderr)
            return 2
        return args.func(args)
    except ShiftkitError as exc:
        print(f"shiftkit: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader left (``shiftkit list | head``): end quietly, as a SIGPIPE would
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except OSError as exc:  # a write that no layer below could name: say which file, never a traceback
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"shiftkit: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        how = f" ({exc})" if isinstance(exc, Terminated) else ""
        print(f"shiftkit: interrupted{how}; the same command resumes unfinished runs", file=sys.stderr)
        return 143 if isinstance(exc, Terminated) else 130


if __name__ == "__main__":
    sys.exit(entry())
