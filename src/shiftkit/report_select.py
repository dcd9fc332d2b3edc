"""Model selection across runs (docs/METHODS.md#select-across-runs): per method, the hyperparameters that a
validation criterion prefers, then the test metrics of that setting over its seeds (``shiftkit report
--select``), as SubpopBench and DomainBed report a search.

A method's *candidates* are the settings of a search: runs with the same method names (loss, weighting,
sampler, procedure, preset) on the same data whose configs differ only in those methods' options and the
optimizer's (``optim.*``); anything else that differs (the model, the epochs) keeps runs apart as today.
Each candidate's score is the mean over its seeds of the criterion, read from the evaluation each run
reports (``--which``): ``val/<metric>`` (``val/worst_group_acc`` needs group labels on validation;
``val/worst_class_acc`` and ``val/acc`` do not) or ``oracle`` / ``oracle/<metric>``, the test split itself
(the first column's metric for ``oracle``): an upper bound, labelled as such. Ties go to the candidate with
more seeds, then to the one that finished first. The chosen settings (the options that differ among the
candidates) are printed beside each row.

>>> criterion("val/worst_group_acc"), criterion("oracle", first=("test", "balanced_acc"))
(('val', 'worst_group_acc', False), ('test', 'balanced_acc', True))
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

from . import labels
from .errors import ShiftkitError
from .metrics import LOWER_IS_BETTER, SCALAR_METRICS

__all__ = ["criterion", "select"]

#: Config groups whose options a search tunes: the candidates of one method differ only in these.
SEARCHED = ("loss", "weighting", "sampler", "procedure", "search", "optim")


def criterion(text: str, first: Tuple[str, str] = ("test", "worst_group_acc")) -> Tuple[str, str, bool]:
    """``(split, metric, oracle)`` of a ``--select`` value (module docstring)."""
    if text == "oracle":
        return ("test", first[1], True)
    split, _, metric = text.partition("/")
    if split in ("val", "oracle") and metric in SCALAR_METRICS:
        return ("test" if split == "oracle" else "val", metric, split == "oracle")
    raise ShiftkitError(f"--select must be val/<metric>, oracle or oracle/<metric> with a metric among "
                        f"{', '.join(SCALAR_METRICS)}; got '{text}'")


def family(config: Dict[str, Any]) -> str:
    """A run's method without its options (``la+erm``, ``jtt:ce+erm``), with its preset and scale: what a
    search's settings share."""
    return labels.label(config, method_text=labels.method(config, options=False))


def _fixed(config: Dict[str, Any]) -> str:
    """What every candidate of one method shares: the config less the seed, how it ran and what a search tunes."""
    from .report_runs import _training

    return repr(sorted((k, repr(v)) for k, v in _training(config, SEARCHED).items()))


def _settings(config: Dict[str, Any]) -> Dict[str, str]:
    from .tracking import flatten

    return {k: labels.short(v) for k, v in flatten(config).items() if k.split(".")[0] in SEARCHED}


def _score(members: List[dict], which: str, split: str, metric: str) -> Optional[float]:
    values = [m[which][split].get(metric) for m in members]
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def _best(candidates: List[List[dict]], which: str, split: str, metric: str) -> Tuple[Optional[int], List[float]]:
    scores = [_score(c, which, split, metric) for c in candidates]
    sign = -1.0 if metric in LOWER_IS_BETTER else 1.0
    ranked = [(sign * s, len(c), -i) for i, (s, c) in enumerate(zip(scores, candidates)) if s is not None]
    return (-max(ranked)[2] if ranked else None), scores


def select(runs: List[dict], text: str, which: str = "selected",
           first: Tuple[str, str] = ("test", "worst_group_acc")) -> Tuple[List[dict], List[dict]]:
    """``(runs of the chosen settings, one note per method)``. Each chosen run carries ``_label`` (its
    method's name) and ``_chosen`` (the settings that differ among the candidates, ``key=value``); a note is
    ``{"data", "method", "chosen", "candidates", "score", "criterion"}``."""
    split, metric, oracle = criterion(text, first)
    families: Dict[Tuple[str, str, str], Dict[str, List[dict]]] = {}
    for r in runs:
        config = r.get("config", {})
        dataset = labels.data(config) if "data" in config else r["data"]["name"]
        key = (dataset, family(config), _fixed(config))
        families.setdefault(key, {}).setdefault(r["group_key"], []).append(r)
    chosen, notes = [], []
    shown = f"{'oracle: test' if oracle else split} {metric}"
    for (dataset, name, _), by_setting in families.items():
        candidates = list(by_setting.values())
        best, scores = _best(candidates, which, split, metric)
        if best is None:
            raise ShiftkitError(f"--select {text}: no run of {name} on {dataset} has {split} {metric}")
        settings = [_settings(c[0].get("config", {})) for c in candidates]
        keys = sorted({k for s in settings for k in s if len({t.get(k) for t in settings}) > 1})
        picked = ", ".join(f"{k}={settings[best].get(k)}" for k in keys) or "the only setting"
        for r in candidates[best]:
            chosen.append({**r, "_label": f"{name} [{'oracle' if oracle else 'selected'}]" if len(candidates) > 1 else name,
                           "_chosen": picked})
        notes.append({"data": dataset, "method": name, "chosen": picked, "candidates": len(candidates),
                      "score": scores[best], "criterion": shown})
    return chosen, notes


def describe(notes: Sequence[dict]) -> List[str]:
    """One line per method: the setting chosen, out of how many, by what."""
    return [f"{n['data']}: {n['method']}: {n['chosen']} (best {n['criterion']} {n['score']:.3f} of "
            f"{n['candidates']} setting{'s' if n['candidates'] != 1 else ''})" for n in notes]
