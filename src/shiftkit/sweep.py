"""Sweeps in one process: compose and check every run first, then train them one after another (or a
seed sweep's runs as one vectorized ensemble), with progress on the console and one line per finished
run; a run that fails does not stop the others (:func:`run_many`, :func:`conclude`). The command line
(:mod:`shiftkit.cli`) parses and prints; the launchers' sweeps (:mod:`shiftkit.launch`) and the
reproductions call these too.
"""

from __future__ import annotations

from typing import Callable, List

from .errors import ShiftkitError

__all__ = ["conclude", "failure", "finished", "run_many"]


def _progress(console):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    # Live bars on a terminal only, gone when done: the one line per finished run is what stays (and all
    # that a log gets).
    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console,
        transient=True, disable=not console.is_terminal,
    )


def _grouped(split: dict) -> bool:
    """Whether the data have groups beyond their classes (an attribute): then the worst group matters."""
    return len(split.get("per_group_acc") or ()) > len(split.get("per_class_acc") or ())


def _describe(record: dict) -> str:
    val = record["val"]
    worst = f", worst group {val['worst_group_acc']:.3f}" if _grouped(val) else ""
    phase = {"search": "search ", "retrain": "retraining "}.get(record.get("phase"), "")
    return (
        f"{phase}epoch {record['epoch']}: train loss {record['train_loss']:.4f}, train acc {record['train']['acc']:.3f}, "
        f"val balanced acc {val['balanced_acc']:.3f}{worst}"
    )


#: Without a terminal (SLURM, nohup, a pipe), a run prints its latest evaluation at most this often.
PLAIN_PROGRESS_SECONDS = 30.0


def _plain_progress(say, title: str):
    """``on_eval`` for a log: one plain line per evaluation, at most every ``$SHIFTKIT_PROGRESS_SECONDS``
    (default 30; 0 for every evaluation), so that a long run shows it is alive where no bar is drawn."""
    import os
    import time

    try:
        every = float(os.environ.get("SHIFTKIT_PROGRESS_SECONDS", PLAIN_PROGRESS_SECONDS))
    except ValueError:
        raise ShiftkitError("$SHIFTKIT_PROGRESS_SECONDS must be a number of seconds") from None
    last = [time.monotonic()]

    def on_eval(record: dict) -> None:
        now = time.monotonic()
        if now - last[0] >= every:
            last[0] = now
            say(f"  {title}: {_describe(record)}")

    return on_eval


def finished(record: dict) -> str:
    if record.get("failed"):
        return f"failed: {record['failed']}"
    if record.get("interrupted"):
        return f"interrupted ({record['interrupted']}); its checkpoint is kept and the same command resumes it"
    if record.get("skipped"):
        return "already done, skipped"
    sel = record["selected"]
    test = sel["test"]
    worst = (f"worst group {test['worst_group_acc']:.3f}" if _grouped(test)
             else f"worst class {test['worst_class_acc']:.3f}")
    resumed = f", resumed from epoch {record['resumed_from_epoch']}" if record.get("resumed_from_epoch") else ""
    bf16 = ", bfloat16" if ((record.get("config") or {}).get("train") or {}).get("amp") == "bf16" else ""
    return (f"train acc {sel['train']['acc']:.3f}, test balanced acc {test['balanced_acc']:.3f}, {worst} "
            f"({_seconds(record)}{bf16}{resumed})")


def _seconds(record: dict) -> str:
    """How long a run trained: an AutoBalance run's search and retraining, and their sum."""
    seconds = record["train_seconds"]
    search = (record.get("search") or {}).get("seconds")
    if search is None:
        return f"{seconds:.1f} s"
    return f"{search + seconds:.1f} s: search {search:.1f} s + retraining {seconds:.1f} s"


def _epochs(cfg) -> int:
    """The epochs a run's progress counts: all its procedure's phases (AutoBalance's search and retraining)."""
    from omegaconf import OmegaConf

    from .runner import procedure_of

    plain = OmegaConf.to_container(cfg, resolve=True)
    return procedure_of(plain).epochs(plain)


def _done_epochs(record: dict, cfg) -> int:
    return record["epoch"] + (cfg.train.epochs if record.get("phase") == "retrain" else 0)


def _label(cfg) -> str:
    """A composed run's label, with its data where the data's options are not the defaults."""
    from omegaconf import OmegaConf

    from . import labels

    return labels.label(OmegaConf.to_container(cfg, resolve=True), with_data=True)


def _batches(configs: list) -> List[list]:
    """Runs to train together: with ``ensemble=true``, those that differ only in their seed."""
    from omegaconf import OmegaConf

    from .identity import EXECUTION_KEYS, config_hash

    batches: dict = {}
    for i, cfg in enumerate(configs):
        plain = OmegaConf.to_container(cfg, resolve=True)
        key = config_hash(plain, drop=(*EXECUTION_KEYS, "seed")) if cfg.ensemble else i
        batches.setdefault(key, []).append(cfg)
    return list(batches.values())


def run_many(override_lists: List[List[str]], label: str = "runs", diverged_ok: bool = False) -> List[dict]:
    """Compose and check every run first (so bad input stops before anything trains), then run them,
    with a live progress bar on a terminal and one line per finished run everywhere (logs included).
    With ``ensemble=true``, runs that differ only in their seed train together as one ensemble. A run of a
    sweep that fails (e.g. diverges) does not stop the others; the sweep then ends in an error naming how
    many failed (their ``run.json`` says why), and the same command retries only them; with
    ``diverged_ok`` (a search) runs that diverged do not make it fail (:func:`conclude`)."""
    from rich.console import Console

    from . import distributed
    from .config import compose
    from .runner import check_sweep

    configs = [compose(o) for o in override_lists]
    check_sweep(configs)
    console = Console(stderr=True, highlight=False, markup=False, soft_wrap=True, quiet=not distributed.is_primary())
    records = []
    with _progress(console) as progress:
        task = progress.add_task(label, total=len(configs))
        for batch in _batches(configs):
            first = batch[0]
            seeds = ",".join(str(c.seed) for c in batch)
            title = f"{_label(first)} seed{'s' if len(batch) > 1 else ''} {seeds}"
            epochs = progress.add_task(f"  {title}", total=_epochs(first))

            plain = None if console.is_terminal else _plain_progress(progress.console.print, title)

            def on_eval(record: dict, epochs=epochs, plain=plain, first=first) -> None:
                progress.update(epochs, completed=_done_epochs(record, first), description=f"  {_describe(record)}")
                if plain is not None:
                    plain(record)

            done = _run_batch(batch, title, on_eval, progress.console.print, alone=len(configs) == 1)
            progress.remove_task(epochs)
            for cfg, record in zip(batch, done):
                progress.advance(task)
                records.append(record)
                progress.console.print(f"[{len(records)}/{len(configs)}] {_label(cfg)} seed {cfg.seed}: {finished(record)}")
    return conclude(records, console.print, diverged_ok)


def _run_batch(batch: list, title: str, on_eval: Callable[[dict], None], say: Callable[[str], None],
               alone: bool) -> List[dict]:
    """The records of one batch of :func:`run_many`: its seeds as one ensemble where there are several and
    the member axis serves them (``say`` tells why not, and they run one by one), else run after run."""
    from .ensemble import EnsembleUnsupported
    from .runner import run, run_ensemble

    done = None
    if len(batch) > 1:
        try:
            done = run_ensemble(batch, on_eval=on_eval)
        except EnsembleUnsupported as exc:
            say(f"{title}: {exc}; running the seeds one by one")
        except ShiftkitError as exc:
            done = [failure(exc)] * len(batch)
    if done is None:
        done = [_attempt(run, cfg, on_eval, alone=alone) for cfg in batch]
    return done


def failure(exc: ShiftkitError) -> dict:
    """The record of a sweep's run that shiftkit stopped: ``{"failed": message}``, with ``"diverged":
    true`` where training broke (a non-finite or exploding loss: an outcome of its settings)."""
    from .divergence import NonFiniteLoss

    return {"failed": str(exc), **({"diverged": True} if isinstance(exc, NonFiniteLoss) else {})}


def conclude(records: List[dict], say, diverged_ok: bool = False) -> List[dict]:
    """The end of a sweep (in-process or launched): ``say`` how many runs were skipped, and raise if any
    failed (the others are done: the same command reruns only the failed ones). With ``diverged_ok`` (a
    hyperparameter search), runs whose training diverged are an outcome of the settings drawn, not an
    error: they are said in one line, recorded as failed (never as results) and left out of selection."""
    skipped = sum(bool(r.get("skipped")) for r in records)
    if skipped:
        say(f"{skipped} of {len(records)} runs were already done and were skipped")
    diverged = [r for r in records if r.get("diverged")] if diverged_ok else []
    if diverged:
        say(f"{len(diverged)} of {len(records)} runs diverged (the first: {diverged[0]['failed']}); they are recorded "
            "as failed, are no results, and a rerun tries them again")
    failed = [r["failed"] for r in records if r.get("failed") and not (diverged_ok and r.get("diverged"))]
    if failed:
        raise ShiftkitError(
            f"{len(failed)} of {len(records)} runs failed (the first: {failed[0]}); the others finished, and the"
            " same command reruns only the failed ones"
        )
    interrupted = [r["interrupted"] for r in records if r.get("interrupted")]
    if interrupted:  # a launcher's job that its scheduler stopped
        raise ShiftkitError(
            f"{len(interrupted)} of {len(records)} runs were interrupted (the first: {interrupted[0]}) and kept their "
            "checkpoints; the others finished, and the same command resumes the interrupted ones"
        )
    return records


def _attempt(run, cfg, on_eval, alone: bool) -> dict:
    """One run of a sweep: its record, or ``{"failed": message}``. A run on its own fails as itself."""
    try:
        return run(cfg, on_eval=on_eval)
    except ShiftkitError as exc:
        if alone:
            raise
        return failure(exc)
