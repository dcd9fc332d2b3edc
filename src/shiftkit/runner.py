"""One run from a composed config: build everything from the registries, train it with its procedure,
write the run directory.

A run directory holds ``metrics.jsonl`` (one line per evaluation, written as training goes),
``run.json`` (resolved config, data counts, environment, final and selected metrics; written atomically
at the end) and an empty ``done`` marker written last; its path and identity: :mod:`shiftkit.identity`.
Everything that can be refused is refused before training (:func:`check`, :func:`check_sweep`).
:func:`run` trains one config with its procedure (:mod:`shiftkit.procedures`); :func:`run_ensemble` trains
runs that differ only in their seed together and writes the same directories. Sweeps:
:mod:`shiftkit.sweep`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import torch
from omegaconf import DictConfig, OmegaConf

from . import data, diagnostics, distributed, files, labels, losses, metrics, models, optim
from . import rundir
from . import procedures, sampling, tracking, weighting
from .checkpoint import FILE as CHECKPOINT_FILE
from .models import weights
from .checkpoint import Checkpoint, fitting
from .config import check_numbers, options
from .divergence import NonFiniteLoss, Watch
from .ensemble import fit_ensemble, refuse
from .errors import ShiftkitError
from .environment import command, environment, resolve_device  # noqa: F401 (the runner's public names)
from .identity import EXECUTION_KEYS, comparable, config_hash, run_dir  # noqa: F401
from .train import FitResult, check_schedule, parse_select, saved_histories

_DATA_CACHE: Dict[str, data.Splits] = {}


def divergence_hint(exc: NonFiniteLoss, plain: Dict[str, Any]) -> NonFiniteLoss:
    """``exc`` with a hint that names this run's settings: a loss already non-finite at the first step,
    before any update, comes from the loss, the weighting or the data, never from the learning rate."""
    settings = [f"{g}.{c}" for g in ("loss", "weighting") for c in labels.changed(g, plain[g])]
    named = " or ".join(settings) if settings else f"loss={plain['loss']['name']} and weighting={plain['weighting']['name']}"
    if exc.at_start:
        return exc.with_hint(f"it was so before any update, so the learning rate is not the cause: look at {named}"
                             " and at the data")
    lower = f"try a lower optim.lr (now {plain['optim']['lr']:g})"
    return exc.with_hint(f"{lower}, or look at {', '.join(settings)}" if settings else lower)


def load_data(node: Dict[str, Any]) -> data.Splits:
    key = json.dumps(node, sort_keys=True)
    if key not in _DATA_CACHE:
        _DATA_CACHE[key] = data.build(node["name"], **{k: v for k, v in node.items() if k != "name"})
    return _DATA_CACHE[key]


def validate(cfg: Dict[str, Any]) -> None:
    """Checks a schema cannot express (types are already checked when composing): every number finite and
    in range (:func:`shiftkit.config.check_numbers`), the results folder, the name, the schedule, the
    selection rule, the device, checkpoints, diagnostics and the procedure's settings."""
    check_numbers(cfg)
    check_out(cfg["out"])
    for key in ("name", *labels.LABEL_KEYS):
        value = cfg.get(key)
        if value is not None and (not value.strip() or set(value) <= {".", "/"}):
            raise ShiftkitError(f"{key} must be a label for the run's folder, not '{value}'")
    train = cfg["train"]
    check_schedule(train["epochs"], train["batch_size"], train["eval_every"], train["amp"])
    parse_select(train["select"])
    Watch(train["divergence"])
    weights.check_freeze(cfg["model"].get("freeze", "none"))
    resolve_device(cfg["device"])
    Checkpoint(Path(CHECKPOINT_FILE), cfg["checkpoint"]["every"], cfg["checkpoint"]["interval"], write=False)
    conf = cfg["diagnostics"]
    if conf["reference"]:  # refused here, before anything trains; loaded by make_probe when the run starts
        if not conf["enabled"]:
            raise ShiftkitError("diagnostics.reference needs diagnostics.enabled=true")
        diagnostics.reference_file(conf["reference"])
    procedure_of(cfg).validate(cfg)


def procedure_of(cfg: Dict[str, Any]) -> procedures.Procedure:
    """The run's procedure (:mod:`shiftkit.procedures`), built from its options."""
    node = dict(cfg["procedure"])
    return procedures.build(node.pop("name"), **node)


def check_out(out: str) -> None:
    """The results folder can be made and written: refused before anything trains, naming the path."""
    if not out.strip():
        raise ShiftkitError("out must name a results folder (default: results), got an empty string")
    path = Path(out).expanduser().absolute()
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        raise ShiftkitError(f"out={out} cannot be made: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ShiftkitError(f"out={out} cannot be written: {existing} is read-only here")


def make_probe(cfg: Dict[str, Any]) -> Optional[diagnostics.Probe]:
    """The run's :class:`~shiftkit.diagnostics.Probe` (``None`` unless ``diagnostics.enabled``)."""
    conf = cfg["diagnostics"]
    if not conf["enabled"]:
        return None
    return diagnostics.Probe(diagnostics.load_reference(conf["reference"]) if conf["reference"] else None)


def build_parts(cfg: DictConfig, splits: data.Splits, model_device: Optional[str] = None) -> Dict[str, Any]:
    """The fit() arguments a config names: model (created on ``model_device`` if given), loss,
    weighting, sampler, optim."""
    stats = splits.statistics()
    with torch.device(model_device) if model_device else contextlib.nullcontext():
        model = models.build(cfg.model.name, **options(cfg.model), **stats)
    return {
        "model": model,
        "loss": losses.build(cfg.loss.name, **options(cfg.loss), **stats),
        "weighting": weighting.build(cfg.weighting.name, **options(cfg.weighting), **stats),
        "sampler": sampling.build(cfg.sampler.name, **options(cfg.sampler), **stats),
        "optim": optim.build(cfg.optim.name, **options(cfg.optim)),
    }


def check(cfg: DictConfig) -> None:
    """Everything that can be refused before training: values, the device, and every constructor (the
    model is built on the meta device, so checking costs no memory)."""
    plain = OmegaConf.to_container(cfg, resolve=True)
    validate(plain)
    splits = load_data(plain["data"])
    parts = build_parts(cfg, splits, model_device="meta")
    _check_selectable(plain["train"]["select"], splits, plain["data"]["name"])
    procedure_of(plain).check(plain, splits, parts)
    make_logger(plain)


def check_sweep(configs: List[DictConfig]) -> List[Path]:
    """:func:`check` every run of a sweep, and refuse a sweep that lists one run twice (``seed=0,0``, two
    values that compose to one config): it would train once and report twice. Returns the run
    directories, in order."""
    if not configs:
        raise ShiftkitError("the sweep has no runs (an empty range() or list?)")
    outs: Dict[Path, int] = {}
    for i, cfg in enumerate(configs):
        check(cfg)
        out = run_dir(OmegaConf.to_container(cfg, resolve=True))
        if out in outs:
            raise ShiftkitError(f"runs {outs[out] + 1} and {i + 1} of the sweep are the same run ({out}): list each"
                                " value once")
        outs[out] = i
    return list(outs)


def _check_selectable(select: str, splits: data.Splits, name: str) -> None:
    """``best:<metric>`` needs a metric these data have (``deo`` needs a binary attribute)."""
    metric = parse_select(select)
    if metric is not None and metrics.evaluate(splits.val.y, splits.val.y, splits.val.g)[metric] is None:
        raise ShiftkitError(
            f"train.select=best:{metric} cannot select on data={name}: the"
            f" metric is undefined there (deo needs a binary attribute, groups g = 2y + a)"
        )


def finished_record(out: Path, keep_checkpoints: bool = True) -> Optional[Dict[str, Any]]:
    """The record of a finished run directory (marked ``skipped``), or None. A directory marked done whose
    files are damaged (:func:`shiftkit.rundir.finished`) loses its marker, with one warning, and counts as
    unfinished: it trains again while the other runs of a sweep go on. A finished run's leftovers (the
    temporary files of an interrupted save, and its checkpoints unless ``keep_checkpoints``) are removed."""
    try:
        record = rundir.finished(out)
    except rundir.Damaged as exc:
        rundir.warn(f"{exc}; the run will be trained again")
        with contextlib.suppress(OSError):
            rundir.unfinish(out)
        return None
    if record is None:
        return None
    if distributed.is_primary():
        with contextlib.suppress(OSError):
            rundir.tidy(out, keep_checkpoints)
    record["skipped"] = True
    return record


def make_logger(plain: Dict[str, Any]) -> tracking.Logger:
    """The run's tracking logger (:mod:`shiftkit.tracking`); under ``torchrun`` only rank 0 logs."""
    node = dict(plain["logger"]) if distributed.is_primary() else {"name": "none"}
    return tracking.build(node.pop("name"), **node)


def _start_tracker(tracker: tracking.Logger, plain: Dict[str, Any], out: Path, history: List[dict]) -> None:
    """Start the run's logger and replay ``history`` (the evaluations a resumed run already has), so that
    its tracking shows the whole curve."""
    tracker.start(out, Path(plain["out"]), f"{labels.label(plain, with_data=True)} seed {plain['seed']}", plain)
    for record in history:
        tracker.log(record)


def _log_writer(log: rundir.MetricsLog, on_eval: Optional[Callable[[dict], None]], tracker=None) -> Callable[[dict], None]:
    def write(record: dict) -> None:
        log.write(record)
        if tracker is not None:
            tracker.log(record)
        if on_eval is not None:
            on_eval(record)

    return write


def _identity(plain: Dict[str, Any], out: Path, started: float) -> Dict[str, Any]:
    return {
        "method": labels.method(plain),
        "label": labels.label(plain),
        "group_key": config_hash(plain, drop=(*EXECUTION_KEYS, "seed")),
        "config": plain,
        "started": started,
        "environment": environment(),
        "run_dir": str(out),
    }


def _write_failure(plain, out: Path, started: float, exc: BaseException, checkpoint: Optional[Path] = None) -> None:
    """``run.json`` of a run that stopped (no ``done`` marker: nothing reads it as a result), naming the
    checkpoint a rerun resumes from. Written when it can be: on a full disk the error line has to do."""
    if not distributed.is_primary():
        return
    checkpoint = checkpoint if checkpoint is not None else out / CHECKPOINT_FILE
    record = {
        **_identity(plain, out, started),
        "status": "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed",
        "error": str(exc) or type(exc).__name__,
        "checkpoint": os.path.relpath(checkpoint, out) if checkpoint.exists() else None,
    }
    with contextlib.suppress(OSError, ShiftkitError):
        files.write_text(out / rundir.RUN_FILE, files.json_text(record))


@contextlib.contextmanager
def _failures(members: List[tuple], started: float, trackers: List[tracking.Logger], checkpoint: Optional[Path] = None):
    """Record a failure of the block in every member's ``run.json`` (``members``: ``(plain, out)`` pairs;
    one for a plain run) and re-raise it: a divergence with a hint naming the run's settings, an I/O error
    as one line naming its file. Nothing is marked done."""
    try:
        yield
    except (Exception, KeyboardInterrupt) as exc:
        failure = exc
        if isinstance(exc, NonFiniteLoss):
            failure = divergence_hint(exc, members[0][0])
        elif isinstance(exc, OSError):
            failure = files.write_error(Path(exc.filename or members[0][1]), exc)
        for plain, out in members:
            _write_failure(plain, out, started, failure, checkpoint)
        for tracker in trackers:
            with contextlib.suppress(Exception):
                tracker.finish("failed")
        if failure is exc:
            raise
        raise failure from None


def _write_record(plain, out: Path, splits: data.Splits, result: FitResult, device: str, started: float, **extra):
    """``run.json`` (atomically, strict JSON, with the digest of ``metrics.jsonl``), then the ``done``
    marker; returns the record."""
    record = {
        "status": "finished",
        **_identity(plain, out, started),
        "data": {
            "name": plain["data"]["name"],
            "statistics": splits.statistics(),
            "counts": splits.counts(),
            "info": splits.info,
            "pipeline": dataclasses.asdict(splits.pipeline),
        },
        "final": result.final,
        "selected": result.selected,
        "selected_epoch": result.selected_epoch,
        "train_seconds": round(result.seconds, 3),
        "steps": result.steps,
        "device": device,
        **extra,
    }
    if plain["model"].get("weights") is not None:
        record["model_weights"] = weights.describe(plain["model"]["name"], plain["model"]["weights"])
    if distributed.is_primary():
        record["metrics_sha256"] = rundir.digest(out / rundir.METRICS_FILE)
        record = files.finite(record)
        files.write_text(out / rundir.RUN_FILE, files.json_text(record))
        files.write_text(out / rundir.DONE_FILE, "")
    return record


def _save_weights(plain: Dict[str, Any], out: Path, model: torch.nn.Module, result: FitResult) -> Dict[str, Any]:
    """Write the run's weights (``rundir.WEIGHTS_FILE``: the selected ones; ``FINAL_WEIGHTS_FILE`` too when
    an earlier evaluation was selected) unless ``save_weights`` is false, or unset and the state dict is
    larger than ``rundir.AUTO_WEIGHTS_BYTES``. Returns the ``run.json`` entry."""
    state = model.state_dict()
    size = sum(t.numel() * t.element_size() for t in state.values())
    wanted = plain["save_weights"]
    if wanted is False or (wanted is None and size > rundir.AUTO_WEIGHTS_BYTES) or not distributed.is_primary():
        return {}
    metadata = {"model": json.dumps(plain["model"], sort_keys=True)}  # what the weights depend on, no more
    weights.save(state, out / rundir.WEIGHTS_FILE, metadata)
    entry = {"file": rundir.WEIGHTS_FILE, "epoch": result.selected_epoch, "bytes": size}
    if result.final_state is not None:
        weights.save(result.final_state, out / rundir.FINAL_WEIGHTS_FILE, metadata)
        entry["final_file"] = rundir.FINAL_WEIGHTS_FILE
    return {"weights": entry}


def _resume(state: Optional[dict], procedure: procedures.Procedure, source: Path) -> tuple:
    """What a run resumed from ``state`` already has: the ``run.json`` entries that say so (its procedure
    reads where it resumes), and the evaluations to rewrite into ``metrics.jsonl``."""
    if state is None:
        return {}, []
    with fitting(source):
        extra, history = procedure.resume(state)
        if "batch" in state:  # saved inside an epoch: its batches done
            extra["resumed_from_batch"] = state["batch"]
    return extra, history


def run(
    cfg: DictConfig, *, on_eval: Optional[Callable[[dict], None]] = None, force: bool = False
) -> Dict[str, Any]:
    """Run one composed config and return its ``run.json`` record (read back if already done)."""
    plain = OmegaConf.to_container(cfg, resolve=True)
    validate(plain)
    out = run_dir(plain)
    done = None if force else finished_record(out, plain["checkpoint"]["keep"])
    if done is not None and not (plain["save_weights"] is True and not (out / rundir.WEIGHTS_FILE).exists()):
        return done  # (a finished run asked for weights it did not save trains again, and saves them)
    device = distributed.setup(resolve_device(plain["device"]))
    splits = load_data(plain["data"])
    torch.manual_seed(plain["seed"])
    parts = build_parts(cfg, splits)
    probe = make_probe(plain)
    started = time.time()
    ck = Checkpoint(
        out / CHECKPOINT_FILE, plain["checkpoint"]["every"], plain["checkpoint"]["interval"],
        write=distributed.is_primary(),
    )
    tracker = make_logger(plain)
    with _failures([(plain, out)], started, [tracker]):
        if distributed.is_primary():
            rundir.tidy(out)  # the temporary files of a save that a kill interrupted
        if force:
            ck.remove()
        procedure = procedure_of(plain)
        extra, history = _resume(ck.load(), procedure, ck.path)
        _start_tracker(tracker, plain, out, history)
        with rundir.MetricsLog(out, history, write=distributed.is_primary()) as log:
            write = _log_writer(log, on_eval, tracker)
            job = procedures.Job(
                cfg, plain, splits, parts, device, write, probe=probe, checkpoint=ck, out=out,
                make_model=lambda: models.build(cfg.model.name, **options(cfg.model), **splits.statistics()),
            )
            outcome = procedure.run(job)
            result, model = outcome.result, outcome.model
            extra.update(outcome.extra)
        if probe is not None and distributed.is_primary():
            diagnostics.save_weights(model, out / diagnostics.WEIGHTS_FILE)
        extra.update(_save_weights(plain, out, model, result))
        if probe is not None:
            extra["interpolation_epoch"] = diagnostics.interpolation_epoch(result.history)
        record = _write_record(plain, out, splits, result, device, started, **extra)
    tracker.finish("finished", record)
    if not plain["checkpoint"]["keep"]:
        with contextlib.suppress(OSError):
            ck.remove()
    return record


def run_ensemble(
    cfgs: List[DictConfig], *, on_eval: Optional[Callable[[dict], None]] = None, force: bool = False
) -> List[Dict[str, Any]]:
    """Run configs that differ only in their seed as one vectorized ensemble (:mod:`shiftkit.ensemble`);
    every member writes its own run directory, exactly as its sequential run would. The ensemble keeps one
    checkpoint, in its first pending member's directory, and the same call resumes from it when it covers
    the same pending members (else it starts over). An ensemble stopped while it wrote its members' records
    (some done, some not) resumes as the whole group it was, from its checkpoint beside a finished member,
    and writes only the pending members: an ensemble's numbers depend on its size in the last digits."""
    from .checkpoint import ENSEMBLE_FILE, MembersCheckpoint

    plains = [OmegaConf.to_container(c, resolve=True) for c in cfgs]
    for p in plains:
        validate(p)
        refuse(torchrun=distributed.requested(), probe=p["diagnostics"]["enabled"], outer=procedure_of(p).alone)
    if len({config_hash(p, drop=(*EXECUTION_KEYS, "seed")) for p in plains}) > 1:
        raise ShiftkitError("an ensemble's runs must differ only in their seed")
    outs = [run_dir(p) for p in plains]
    names = [o.relative_to(p["out"]).as_posix() for o, p in zip(outs, plains)]
    conf = plains[0]["checkpoint"]
    # Checkpoints stay while the members are looked at: a kill between the members' done markers leaves the
    # ensemble's one checkpoint beside a member that is done, and the pending ones resume with it from it.
    records = [None if force else finished_record(o) for o in outs]
    todo = [i for i, r in enumerate(records) if r is None]
    group = todo if force or not todo else _saved_group(outs, names, todo)
    if not conf["keep"]:  # the leftovers of finished members (not the checkpoint the group resumes from)
        for i, record in enumerate(records):
            if record is not None and (not todo or i != group[0]):
                with contextlib.suppress(OSError):
                    rundir.tidy(outs[i], keep_checkpoints=False)
    if not todo:
        return records
    device = resolve_device(plains[0]["device"])
    splits = load_data(plains[0]["data"])
    parts = []
    for i in group:
        torch.manual_seed(plains[i]["seed"])
        parts.append(build_parts(cfgs[i], splits))
    started = time.time()
    ck = MembersCheckpoint(
        outs[group[0]] / ENSEMBLE_FILE, [names[i] for i in group],
        conf["every"], conf["interval"], write=distributed.is_primary(),
    )
    trackers = [make_logger(plains[i]) if i in todo else tracking.build("none") for i in group]
    with _failures([(plains[i], outs[i]) for i in todo], started, trackers, ck.path):
        for i in todo:
            rundir.tidy(outs[i])
        if force:
            ck.remove()
        state = ck.load()
        with fitting(ck.path):
            extra = {"resumed_from_epoch": state["epoch"]} if state is not None else {}
            if state is not None and "batch" in state:  # saved inside an epoch: its batches done
                extra["resumed_from_batch"] = state["batch"]
            histories = saved_histories(state) if state is not None else [[]] * len(group)
        for i, tracker, history in zip(group, trackers, histories):
            if i in todo:
                _start_tracker(tracker, plains[i], outs[i], history)
        with contextlib.ExitStack() as stack:
            logs = [stack.enter_context(rundir.MetricsLog(outs[i], history, write=i in todo))
                    for i, history in zip(group, histories)]
            writers = [_log_writer(log, on_eval if i in todo else None, tracker)
                       for i, log, tracker in zip(group, logs, trackers)]
            results = fit_ensemble(
                [p["model"] for p in parts], splits, parts[0]["loss"], [p["weighting"] for p in parts],
                parts[0]["optim"], samplers=[p["sampler"] for p in parts], seeds=[plains[i]["seed"] for i in group],
                **plains[0]["train"], device=device, on_eval=lambda s, record: writers[s](record), checkpoint=ck,
            )
        for i, result in zip(group, results):
            if i in todo:
                saved = _save_weights(plains[i], outs[i], parts[group.index(i)]["model"], result)
                records[i] = _write_record(plains[i], outs[i], splits, result, device, started,
                                           ensemble_size=len(group), **extra, **saved)
    for i, tracker in zip(group, trackers):
        if i in todo:
            tracker.finish("finished", records[i])
    if not conf["keep"]:
        with contextlib.suppress(OSError):
            ck.remove()
    return records


def _saved_group(outs: List[Path], names: List[str], todo: List[int]) -> List[int]:
    """The members (indices into ``outs``) of an ensemble checkpoint beside one of them that covers every
    pending member (``todo``): those of an ensemble killed while it wrote its members' records, which
    finish together as they started. Without one, the pending members."""
    from .checkpoint import ENSEMBLE_FILE

    pending = {names[i] for i in todo}
    for out in outs:
        if not (out / ENSEMBLE_FILE).exists():
            continue
        try:
            saved = Checkpoint(out / ENSEMBLE_FILE).load().get("members")
        except ShiftkitError:  # not ours: the pending members start over (and the file is refused by name)
            continue
        if isinstance(saved, list) and pending <= set(saved) <= set(names):
            group = [i for i, name in enumerate(names) if name in saved]
            if [names[i] for i in group] == saved:
                return group
    return todo
