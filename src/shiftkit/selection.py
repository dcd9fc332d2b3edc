"""Model selection over a run's evaluations (docs/METHODS.md#selection) and the result of a fit.

``last`` tests the final weights; ``best:<metric>`` the evaluation with the best validation ``<metric>``
(strictly better replaces, as a max-mode checkpoint does; [W]'s IW-ES is ``best:group_balanced_acc``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional

from .errors import ShiftkitError
from .metrics import LOWER_IS_BETTER, SCALAR_METRICS

__all__ = ["FitResult", "Selection", "parse_select"]


@dataclass
class FitResult:
    """Metrics per split (``train``, ``val``, ``test``) at the end and at the selected evaluation."""

    final: Dict[str, dict]
    selected: Dict[str, dict]
    selected_epoch: int
    history: List[dict] = field(default_factory=list)
    seconds: float = 0.0
    steps: int = 0
    #: The last epoch's state dict (CPU) when the model was left at an earlier, selected one; else None.
    #: Not a dataclass field: the record of a result (``dataclasses.asdict``) stays plain numbers.
    final_state = None


def parse_select(select: str) -> Optional[str]:
    """``"last"`` -> ``None``; ``"best:<metric>"`` -> ``<metric>``; anything else is an error."""
    if select == "last":
        return None
    metric = select[5:] if select.startswith("best:") else None
    if metric not in SCALAR_METRICS:
        raise ShiftkitError(
            f"train.select must be 'last' or 'best:<metric>' with a metric among {', '.join(SCALAR_METRICS)};"
            f" got '{select}'"
        )
    return metric


def _better(value: Optional[float], best: Optional[float], metric: str) -> bool:
    if value is None:
        return False
    if best is None:
        return True
    return value < best if metric in LOWER_IS_BETTER else value > best


class Selection:
    """Model selection over evaluations (docs/METHODS.md#selection): the last one, or the best validation ``metric``."""

    def __init__(self, select: str):
        self.metric = parse_select(select)
        self.best_value: Optional[float] = None
        self.best_record: Optional[dict] = None
        self.history: List[dict] = []

    def offer(self, record: dict) -> bool:
        """Record an evaluation; True when it becomes the selected one (save the weights then)."""
        self.history.append(record)
        if self.metric is None or not _better(record["val"][self.metric], self.best_value, self.metric):
            return False
        self.best_value, self.best_record = record["val"][self.metric], record
        return True

    def state_dict(self) -> dict:
        return {"history": self.history, "best_value": self.best_value, "best_record": self.best_record}

    def load_state_dict(self, state: dict) -> None:
        self.history, self.best_value, self.best_record = state["history"], state["best_value"], state["best_record"]

    def result(self, seconds: float, steps: int) -> FitResult:
        final = self.history[-1]
        chosen = self.best_record or final
        return FitResult(
            final={k: final[k] for k in ("train", "val", "test")},
            selected={k: chosen[k] for k in ("train", "val", "test")},
            selected_epoch=chosen["epoch"],
            history=self.history,
            seconds=seconds,
            steps=steps,
        )
