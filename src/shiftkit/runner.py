"""One run from a composed config: build everything from the registries, train it with its procedure,
write the run directory.

A run directory holds ``metrics.jsonl`` (one line per evaluation, written as training goes),
``run.json`` (resolved config, data counts, environment, final and selected metrics; written atomically
at the end) and an empty ``done`` marker written last; its path and identity: :mod:`shiftkit.identity`.
Everything that can be refused is refused before training (:func:`check`, :func:`check_sweep`).
:func:`run` trains one config with its procedure (:mod:`shiftkit.procedures`); :func:`run_ensemble` trains
runs that differ only in their seed together and writes the same directories. Sweeps:
:mod:`shiftkit.sweep`.

One module: the checks before a run and the run itself build the same parts from the same config;
together they keep what is refused in step with what is built.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import torch
from omegaconf import DictConfig, OmegaConf

from . import augment, data, diagnostics, distributed, labels, losses, metrics, models, optim
from . import rundir
from . import procedures, sampling, tracking, weighting
from .checkpoint import FILE as CHECKPOINT_FILE
from .models import weights
from .checkpoint import Checkpoint, fitting
from .config import check_numbers, options
from .divergence import Watch
from .ensemble import EnsembleUnsupported, fit_ensemble, refuse, slower
from .errors import ShiftkitError, ShiftkitWarning
from .environment import bf16_native, command, environment, resolve_device  # noqa: F401 (the runner's public names)
from .identity import EXECUTION_KEYS, comparable, config_hash, run_dir  # noqa: F401
from .records import divergence_hint, failures, finished_record, save_weights, write_record  # noqa: F401
from .train import check_schedule, parse_select

_DATA_CACHE: Dict[str, data.Splits] = {}


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
    procedure = procedure_of(cfg)
    procedure.validate(cfg)
    chosen = (cfg.get("augment") or {"name": "none"})["name"]
    if chosen != "none" and not procedure.takes_augment:
        raise ShiftkitError(f"augment={chosen} trains with procedure=plain or procedure=autobalance, "
                            f"not procedure={cfg['procedure']['name']}")


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
    weighting, sampler, optim, augment."""
    stats = splits.statistics()
    with torch.device(model_device) if model_device else contextlib.nullcontext():
        model = models.build(cfg.model.name, **options(cfg.model), **stats)
    return {
        "model": model,
        "loss": losses.build(cfg.loss.name, **options(cfg.loss), **stats),
        "weighting": weighting.build(cfg.weighting.name, **options(cfg.weighting), **stats),
        "sampler": sampling.build(cfg.sampler.name, **options(cfg.sampler), **stats),
        "optim": optim.build(cfg.optim.name, **options(cfg.optim)),
        "augment": augment.build(cfg.augment.name, **options(cfg.augment), **stats),
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


def _resume(state: Optional[dict], procedure: procedures.Procedure, source: Path, members: int) -> tuple:
    """What runs resumed from ``state`` already have: the ``run.json`` entries that say so (their
    procedure reads where they resume), and each member's evaluations to rewrite into ``metrics.jsonl``."""
    if state is None:
        return {}, [[] for _ in range(members)]
    with fitting(source):
        extra, histories = procedure.resume(state)
        if "batch" in state:  # saved inside an epoch: its batches done
            extra["resumed_from_batch"] = state["batch"]
    return extra, histories


def run(
    cfg: DictConfig, *, on_eval: Optional[Callable[[dict], None]] = None, force: bool = False
) -> Dict[str, Any]:
    """Run one composed config with its procedure and return its ``run.json`` record (read back if
    already done)."""
    (record,) = execute([cfg], on_eval=on_eval, force=force, stacked=False)
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
    return execute(cfgs, on_eval=on_eval, force=force, stacked=True)


def execute(cfgs: List[DictConfig], *, on_eval: Optional[Callable[[dict], None]] = None, force: bool = False,
            stacked: bool = False) -> List[Dict[str, Any]]:
    """The one sequence of every run: validate, skip what is done, build, resume from the checkpoint,
    train, write each run's directory. One config trains with its procedure (:func:`run`); ``stacked``
    configs (a seed sweep) train as one ensemble (:func:`run_ensemble`). Records are returned in order.
    Function of more than 40 lines: the sequence reads best in one place."""
    plains = [OmegaConf.to_container(c, resolve=True) for c in cfgs]
    for p in plains:
        validate(p)
        if stacked:
            refuse(torchrun=distributed.requested(), probe=p["diagnostics"]["enabled"], outer=procedure_of(p).alone,
                   augment=(p.get("augment") or {"name": "none"})["name"] != "none")
    if stacked and len({config_hash(p, drop=(*EXECUTION_KEYS, "seed")) for p in plains}) > 1:
        raise ShiftkitError("an ensemble's runs must differ only in their seed")
    outs = [run_dir(p) for p in plains]
    records, todo, group = _pending(plains, outs, force, stacked)
    if not todo:
        return records
    device = distributed.setup(resolve_device(plains[0]["device"]))
    if plains[0]["train"]["amp"] == "bf16" and not bf16_native(device):
        warnings.warn(f"train.amp=bf16: this {device.upper()} emulates bfloat16, so training is several times slower "
                      "than in float32 (benchmarks/precision.py)", ShiftkitWarning, stacklevel=2)
    splits = load_data(plains[0]["data"])
    parts = []
    for i in group:  # each member's initialization from its own seed
        torch.manual_seed(plains[i]["seed"])
        parts.append(build_parts(cfgs[i], splits))
    reason = slower([p["model"] for p in parts], device, plains[0]["train"]["batch_size"]) if stacked else None
    if reason:
        raise EnsembleUnsupported(reason)  # the sweep runs the seeds one by one, and says why
    probe = make_probe(plains[0])
    started = time.time()
    ck = _checkpoint(plains, outs, group, stacked)
    trackers = [make_logger(plains[i]) if i in todo else tracking.build("none") for i in group]
    procedure = procedure_of(plains[0])
    with failures([(plains[i], outs[i]) for i in todo], started, trackers, ck.path):
        for i in todo:
            if distributed.is_primary():
                rundir.tidy(outs[i])  # the temporary files of a save that a kill interrupted
        if force:
            ck.remove()
        extra, histories = _resume(ck.load(), procedure, ck.path, len(group))
        for i, tracker, history in zip(group, trackers, histories):
            if i in todo:
                _start_tracker(tracker, plains[i], outs[i], history)
        with contextlib.ExitStack() as stack:
            logs = [stack.enter_context(rundir.MetricsLog(outs[i], history, write=i in todo and distributed.is_primary()))
                    for i, history in zip(group, histories)]
            writers = [_log_writer(log, on_eval if i in todo else None, tracker)
                       for i, log, tracker in zip(group, logs, trackers)]
            if stacked:
                outcomes = _train_stacked(plains, group, parts, splits, device, writers, ck)
            else:
                job = procedures.Job(
                    cfgs[0], plains[0], splits, parts[0], device, writers[0], probe=probe, checkpoint=ck, out=outs[0],
                    make_model=lambda: models.build(cfgs[0].model.name, **options(cfgs[0].model), **splits.statistics()),
                )
                outcomes = [procedure.run(job)]
        for i, outcome in zip(group, outcomes):
            if i in todo:
                records[i] = _finish(plains[i], outs[i], splits, outcome, device, started, probe,
                                     {**({"ensemble_size": len(group)} if stacked else {}), **extra})
    for i, tracker in zip(group, trackers):
        if i in todo:
            tracker.finish("finished", records[i])
    if not plains[0]["checkpoint"]["keep"]:
        with contextlib.suppress(OSError):
            ck.remove()
    return records


def _pending(plains: List[dict], outs: List[Path], force: bool, stacked: bool) -> tuple:
    """``(records, todo, group)``: the records of the runs already done (None for the others), the runs
    to train, and the runs that train together (an ensemble killed while it wrote its members' records
    finishes as the group it was: :func:`_saved_group`). A finished run that asked for weights it did not
    save trains again, and saves them."""
    if not stacked:
        plain, out = plains[0], outs[0]
        done = None if force else finished_record(out, plain["checkpoint"]["keep"])
        if done is not None and plain["save_weights"] is True and not (out / rundir.WEIGHTS_FILE).exists():
            done = None
        return [done], [] if done is not None else [0], [0]
    names = [o.relative_to(p["out"]).as_posix() for o, p in zip(outs, plains)]
    # Checkpoints stay while the members are looked at: a kill between the members' done markers leaves the
    # ensemble's one checkpoint beside a member that is done, and the pending ones resume with it from it.
    records = [None if force else finished_record(o) for o in outs]
    todo = [i for i, r in enumerate(records) if r is None]
    group = todo if force or not todo else _saved_group(outs, names, todo)
    if not plains[0]["checkpoint"]["keep"]:  # the leftovers of finished members (not the group's checkpoint)
        for i, record in enumerate(records):
            if record is not None and (not todo or i != group[0]):
                with contextlib.suppress(OSError):
                    rundir.tidy(outs[i], keep_checkpoints=False)
    return records, todo, group


def _checkpoint(plains: List[dict], outs: List[Path], group: List[int], stacked: bool) -> Checkpoint:
    """A run's checkpoint (``checkpoint.pt`` in its directory), or an ensemble's one checkpoint in its first
    member's directory, naming the members it covers."""
    from .checkpoint import ENSEMBLE_FILE, MembersCheckpoint

    conf, write = plains[0]["checkpoint"], distributed.is_primary()
    if not stacked:
        return Checkpoint(outs[0] / CHECKPOINT_FILE, conf["every"], conf["interval"], write=write)
    names = [outs[i].relative_to(plains[i]["out"]).as_posix() for i in group]
    return MembersCheckpoint(outs[group[0]] / ENSEMBLE_FILE, names, conf["every"], conf["interval"], write=write)


def _train_stacked(plains, group, parts, splits, device, writers, checkpoint) -> List[procedures.Outcome]:
    """The group's runs as one vectorized ensemble; one outcome per member."""
    results = fit_ensemble(
        [p["model"] for p in parts], splits, parts[0]["loss"], [p["weighting"] for p in parts], parts[0]["optim"],
        samplers=[p["sampler"] for p in parts], seeds=[plains[i]["seed"] for i in group], **plains[0]["train"],
        device=device, on_eval=lambda s, record: writers[s](record), checkpoint=checkpoint,
    )
    return [procedures.Outcome(result, p["model"]) for result, p in zip(results, parts)]


def _finish(plain, out: Path, splits, outcome: procedures.Outcome, device: str, started: float, probe,
            extra: Dict[str, Any]) -> Dict[str, Any]:
    """Write a trained run's files (diagnostics' weights, the weights, ``run.json``, ``done``); returns its
    record."""
    result, model = outcome.result, outcome.model
    extra = {**extra, **outcome.extra}
    if probe is not None and distributed.is_primary():
        diagnostics.save_weights(model, out / diagnostics.WEIGHTS_FILE)
    extra.update(save_weights(plain, out, model, result))
    if probe is not None:
        extra["interpolation_epoch"] = diagnostics.interpolation_epoch(result.history)
    return write_record(plain, out, splits, result, device, started, **extra)


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
