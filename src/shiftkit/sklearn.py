"""A scikit-learn classifier over shiftkit's one training loop, for tabular data.

:class:`ShiftClassifier` names a loss, a weighting scheme, a sampler, a model and an optimizer from the
registries (docs/METHODS.md#one-loop); ``fit`` computes the data statistics (class and group counts) from
the training rows, builds the parts with them and trains with :func:`shiftkit.train.fit`, the same loop as
``shiftkit train``. Any loss composes with any weighting and sampler, as on the command line: for example
``loss="poly", weighting="iw"`` is [W]'s polynomially-tailed loss with importance weights (docs/METHODS.md#loss-poly,
docs/METHODS.md#weighting-iw), ``weighting="group_dro"`` with ``groups`` is Group DRO (docs/METHODS.md#weighting-group_dro). Hyperparameters are set at
construction and checked in ``fit`` (data statistics at fit time, the scikit-learn convention), so the estimator clones, pickles and sits in
pipelines and grid searches like any scikit-learn classifier. docs/SKLEARN.md has a walk-through.

``fit`` takes scikit-learn's ``sample_weight`` (and the estimator a ``class_weight``): per-example multipliers
of the weighting scheme's weights, so that integer weights act as repeated rows. The module also has
scorers for ``GridSearchCV`` and ``cross_val_score`` (:func:`worst_group_accuracy`,
:func:`group_balanced_accuracy`, :func:`balanced_accuracy` and their ``*_scorer`` objects), whose
``groups`` arrive through scikit-learn's metadata routing.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from numbers import Integral, Real
from typing import Dict, Optional, Tuple

import numpy as np
import torch
from sklearn import config_context
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.metrics import make_scorer
from sklearn.utils import check_random_state
from sklearn.utils.class_weight import compute_class_weight
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_array, check_is_fitted, column_or_1d, validate_data

from . import losses, metrics, models, optim, sampling, weighting
from .data.base import Split, Splits, dense_ids
from .data.tabular import stratified_split
from .errors import ShiftkitError
from .registry import DATA_STATISTICS
from .environment import resolve_device
from .train import fit as train_fit, parse_select

#: Options the estimator gives a model unless ``model_options`` sets them: the registry's MLP (2 x 512,
#: [W]'s image MLP, docs/METHODS.md#model-mlp) is far wider than tabular data needs and would make every fit slow.
_MODEL_DEFAULTS = {"mlp": {"width": 128}}
#: Rows per forward pass at prediction time.
_PREDICT_BATCH = 4096
#: Keys of shiftkit's configuration that messages from the training loop and the optimizer name, and the
#: estimator's parameter that sets each (``optim.<key>`` is ``optimizer_options['<key>']``, except ``lr``).
_PARAMETER_OF_KEY = {
    "train.epochs": "epochs",
    "train.batch_size": "batch_size",
    "train.select": "select",
    "train.divergence": "the divergence check",
}
_CONFIG_KEY = re.compile(r"(?<![\w.])(train|optim|loss|weighting|sampler|model)\.([a-z_]+)\b")
_OPTIONS_OF_PART = {"optim": "optimizer_options", "loss": "loss_options", "weighting": "weighting_options",
                    "sampler": "sampler_options", "model": "model_options"}


def _check_integer(name: str, value, least: int, meaning: str = "") -> None:
    if isinstance(value, bool) or not isinstance(value, Integral) or value < least:
        raise ValueError(f"{name} must be an integer >= {least}{meaning}, got {value!r}")


def _encode(values: np.ndarray, known: np.ndarray, what: str) -> np.ndarray:
    """Ids of ``values`` in the sorted array ``known``; a value never seen in ``fit`` is an error."""
    ids = np.searchsorted(known, values).clip(0, len(known) - 1)
    unseen = values != known[ids]
    if unseen.any():
        raise ValueError(f"{what} not seen in fit: {', '.join(map(repr, np.unique(values[unseen])[:5].tolist()))}")
    return ids


def _weighted_counts(train: Split, weights: np.ndarray) -> Dict[str, list]:
    """Class and group counts as sums of the training rows' weights, from one (class, group) table, so that
    sums equal in rows are equal here too (a class made of two groups; groups that are the classes)."""
    cells = np.bincount(train.y.numpy() * train.num_groups + train.g.numpy(), weights=weights,
                        minlength=train.num_classes * train.num_groups).reshape(train.num_classes, -1)

    def tidy(counts: np.ndarray) -> list:
        return [int(c) if float(c).is_integer() else float(c) for c in counts]

    return {"class_counts": tidy(cells.sum(1)), "group_counts": tidy(cells.sum(0))}


class ShiftClassifier(ClassifierMixin, BaseEstimator):
    """A classifier trained to do well on every class and group: shiftkit's losses, weightings and
    samplers behind scikit-learn's ``fit`` / ``predict`` / ``predict_proba`` / ``score``.

    Training minimizes ``mean_i(w_i · loss(f(x_i), y_i, g_i))`` over the batches a sampler draws, where
    the weights ``w_i`` come from the weighting scheme (docs/METHODS.md#one-loop); every part is built by
    name from its registry with the training split's statistics (``Splits.statistics()``: class and group
    counts, number of classes and groups, input shape).

    Parameters
    ----------
    loss : str, default="ce"
        A name in ``shiftkit.losses.names()`` (docs/METHODS.md#losses): ``ce``, ``poly``, ``ldam``, ``la``, ``cdt``, ``vs``,
        ``vs_group``, ``focal``, ``autobalance`` (its parameters stay at their initial values: the bilevel
        search is not run here).
    loss_options, weighting_options, sampler_options, model_options, optimizer_options : dict or None
        Hyperparameters of the named part, e.g. ``loss_options={"alpha": 2.0}`` (docs/METHODS.md#loss-poly). Data
        statistics (``class_counts``, ``group_counts``, ...) are computed in ``fit`` and may not be given.
        ``model_options=None`` is the registry's defaults, except that the ``mlp`` is 128 wide.
    weighting : str, default="erm"
        A name in ``shiftkit.weighting.names()`` (docs/METHODS.md#weightings): ``erm``, ``iw``, ``group_dro``, ``rgd``,
        ``cvar``, ``cb``, ``drw``, ...
    sampler : str, default="none"
        A name in ``shiftkit.sampling.names()``: ``none`` (shuffled epochs), ``undersample``, ``resample``,
        ``balanced`` (docs/METHODS.md#samplers).
    model : str, default="mlp"
        A name in ``shiftkit.models.names()`` that accepts flat inputs: ``mlp`` or ``linear``.
    optimizer : str, default="adam"
        A name in ``shiftkit.optim.names()``: ``adam`` or ``sgd`` (momentum, weight decay and the schedule go
        in ``optimizer_options``).
    lr : float or None, default=None
        Learning rate; ``None`` is the optimizer's default (``adam`` 1e-3, ``sgd`` 0.01).
    epochs : int, default=50
        Passes over the training rows (as the sampler draws them).
    batch_size : int, default=128
        Rows per step; 0 means full batch.
    val_fraction : float, default=0.0
        Fraction of every (class, group) cell held out for validation (``stratified_split``, as in
        ``data=tabular``). Needed only for ``select="best:<metric>"``.
    select : str, default="last"
        ``"last"`` keeps the final weights; ``"best:<metric>"`` the epoch with the best validation metric
        (docs/METHODS.md#selection; [W]'s IW-ES is ``"best:group_balanced_acc"``).
    standardize : bool, default=True
        Scale each feature by the training rows' mean and (population) standard deviation, kept in
        ``mean_`` and ``scale_``; a constant feature is only centred. With ``sample_weight`` or
        ``class_weight`` the mean and standard deviation are weighted.
    class_weight : None, "balanced" or dict, default=None
        As in scikit-learn: per-class multipliers of the example weights, a dict ``{label: weight}`` keyed
        by the labels of ``y`` (strings too), or ``"balanced"``: ``n_samples / (n_classes * count(y))``,
        counted with ``sample_weight`` when given (``sklearn.utils.class_weight.compute_class_weight``).
        It multiplies ``sample_weight`` and the weighting scheme's weights, as ``sample_weight`` does.
    random_state : int, RandomState or None, default=None
        Seeds the model's initialization, the data order and the validation split; a fixed value gives
        identical predictions on the CPU (docs/RUNS.md, "Determinism"). The global torch RNG is left as it was.
    device : str, default="cpu"
        Where training and prediction run (``"cuda"``, ``"auto"``: as ``shiftkit train device=...``).

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
        The sorted labels; column ``k`` of ``predict_proba`` is ``classes_[k]``.
    groups_ : ndarray or None
        The sorted group ids given to ``fit``; ``None`` without ``groups``, when each row's group is its
        class (docs/METHODS.md#groups).
    class_counts_, group_counts_ : list of int or float
        Training counts per class and per group, as handed to the registries; with ``sample_weight`` or
        ``class_weight``, the sums of the example weights (integers where the sums are).
    mean_, scale_ : ndarray of shape (n_features,)
        The standardization (zeros and ones when ``standardize=False``).
    model_ : torch.nn.Module
        The trained network in evaluation mode, in float64 (see ``decision_function``).
    weighting_ : shiftkit.weighting.Weighting
        The trained weighting scheme with its state (Group DRO's ``q``).
    fit_result_ : shiftkit.train.FitResult
        Metrics (docs/METHODS.md#metrics) on the training rows (``fit_result_.final["train"]``) and the validation rows
        (``["val"]``: the training rows again when ``val_fraction=0``; ``["test"]`` repeats ``["val"]``).
    n_features_in_, feature_names_in_ :
        As set by scikit-learn's ``validate_data``.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(200, 2))
    >>> y = np.where(X[:, 0] + X[:, 1] > 0, "yes", "no")
    >>> clf = ShiftClassifier(loss="poly", weighting="iw", epochs=20, random_state=0).fit(X, y)
    >>> clf.classes_.tolist(), clf.predict_proba(X[:3]).shape
    (['no', 'yes'], (3, 2))
    >>> bool(clf.score(X, y) > 0.9)
    True
    """

    def __init__(
        self,
        loss: str = "ce",
        loss_options: Optional[dict] = None,
        weighting: str = "erm",
        weighting_options: Optional[dict] = None,
        sampler: str = "none",
        sampler_options: Optional[dict] = None,
        model: str = "mlp",
        model_options: Optional[dict] = None,
        optimizer: str = "adam",
        optimizer_options: Optional[dict] = None,
        lr: Optional[float] = None,
        epochs: int = 50,
        batch_size: int = 128,
        val_fraction: float = 0.0,
        select: str = "last",
        standardize: bool = True,
        class_weight=None,
        random_state=None,
        device: str = "cpu",
    ):
        self.loss = loss
        self.loss_options = loss_options
        self.weighting = weighting
        self.weighting_options = weighting_options
        self.sampler = sampler
        self.sampler_options = sampler_options
        self.model = model
        self.model_options = model_options
        self.optimizer = optimizer
        self.optimizer_options = optimizer_options
        self.lr = lr
        self.epochs = epochs
        self.batch_size = batch_size
        self.val_fraction = val_fraction
        self.select = select
        self.standardize = standardize
        self.class_weight = class_weight
        self.random_state = random_state
        self.device = device

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        # Same seed, same predictions holds on the CPU only: GPU kernels may sum in any order.
        tags.non_deterministic = self.device != "cpu"
        return tags

    def _options(self, param: str) -> dict:
        value = getattr(self, param)
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise ValueError(f"{param} must be a dict or None, got {type(value).__name__}")
        computed = sorted(set(value) & set(DATA_STATISTICS))
        if computed:
            raise ValueError(f"{param}: {', '.join(computed)} are computed from the training data in fit; remove them")
        return dict(value)

    def _optimizer_options(self) -> dict:
        options = self._options("optimizer_options")
        if self.lr is not None:
            if "lr" in options:
                raise ValueError("set the learning rate once: lr or optimizer_options['lr'], not both")
            options["lr"] = self.lr
        return options

    def _check_hyperparameters(self) -> None:
        """What can be refused before touching the data; an unknown name is a one-line ValueError that lists
        the choices (``Registry.get``)."""
        for registry, name in ((losses.LOSSES, self.loss), (weighting.WEIGHTINGS, self.weighting),
                               (sampling.SAMPLERS, self.sampler), (models.MODELS, self.model),
                               (optim.OPTIMIZERS, self.optimizer)):
            registry.get(name)
        _check_integer("epochs", self.epochs, 1)
        _check_integer("batch_size", self.batch_size, 0, " (0: full batch)")
        if self.lr is not None and (isinstance(self.lr, bool) or not isinstance(self.lr, Real)
                                    or not 0 < self.lr < math.inf):
            raise ValueError(f"lr must be a finite number > 0 or None, got {self.lr!r}")
        if not (self.class_weight is None or isinstance(self.class_weight, Mapping)
                or (isinstance(self.class_weight, str) and self.class_weight == "balanced")):
            raise ValueError(
                f"class_weight must be None, 'balanced' or a dict {{label: weight}}, got {self.class_weight!r}"
            )
        if not 0 <= self.val_fraction < 1:
            raise ValueError(f"val_fraction must lie in [0, 1), got {self.val_fraction}")
        if parse_select(self.select) is not None and self.val_fraction == 0:
            raise ValueError(f"select='{self.select}' picks an epoch on validation rows: set val_fraction > 0")

    def fit(self, X, y, groups=None, sample_weight=None) -> "ShiftClassifier":
        """Train on ``X [n, d]``, labels ``y [n]`` of any type, optional ``groups [n]`` (group ids of any
        type, for group-aware weightings, samplers and metrics; without them each row's group is its class).
        Returns the estimator.

        ``sample_weight [n]`` (finite, >= 0, not all 0; a scalar is one weight for every row) multiplies
        each example's weight from the weighting scheme in the objective, after ``class_weight``:
        ``mean_i(s_i · w_i · loss_i)`` with ``s`` scaled to mean 1 over the training rows, so constant
        weights change nothing. The data statistics the parts are built with (class and group counts) and
        the standardization are weighted too, so an integer weight ``k`` is ``k`` copies of the row for
        ERM and the count-based weightings (exactly with full batches; in expectation with mini-batches).
        A weight of 0 keeps a row out of the gradient and the statistics, but it still fills a place in
        its batch, enters the batch statistics of loss-based weightings (Group DRO's group losses, RGD,
        CVaR) and the samplers' row counts, and counts in ``fit_result_``'s (unweighted) metrics.
        """
        try:
            return self._fit(X, y, groups, sample_weight)
        except ShiftkitError as error:  # name the estimator's parameters, not shiftkit's configuration keys
            error.args = (self._parameter_names(str(error)),) + error.args[1:]
            raise

    def _parameter_names(self, message: str) -> str:
        """``message`` with each configuration key (``train.epochs``, ``optim.momentum``) replaced by the
        estimator's parameter that sets it (``epochs``, ``optimizer_options['momentum']``)."""

        def name(match: "re.Match") -> str:
            key = match.group(0)
            if key in _PARAMETER_OF_KEY:
                return _PARAMETER_OF_KEY[key]
            part, option = match.groups()
            if key == "optim.lr" and (self.lr is not None or "lr" not in (self.optimizer_options or {})):
                return "lr"
            if part == "train":
                return option
            return f"{_OPTIONS_OF_PART[part]}['{option}']"

        return _CONFIG_KEY.sub(name, message)

    def _fit(self, X, y, groups, sample_weight) -> "ShiftClassifier":
        self._check_hyperparameters()
        device = resolve_device(self.device)
        X, y = validate_data(self, X, y, dtype=np.float64)
        check_classification_targets(y)
        classes, y_ids = np.unique(y, return_inverse=True)
        if len(classes) < 2:
            raise ValueError(f"ShiftClassifier needs at least 2 classes in y, got 1 class: {classes[0]!r}")
        self.classes_ = classes
        weights = self._fit_weights(sample_weight, y, y_ids)
        g_ids, num_groups = self._fit_groups(groups, y_ids)
        seed = int(check_random_state(self.random_state).randint(np.iinfo(np.int32).max))
        splits, train_weights = self._splits(X, y_ids, g_ids, num_groups, seed, weights)
        stats = splits.statistics()
        if train_weights is not None:  # the counts of the weighted rows: weight k counts as k copies
            stats.update(_weighted_counts(splits.train, train_weights))
        self.class_counts_, self.group_counts_ = stats["class_counts"], stats["group_counts"]
        # The model's initialization draws from torch's global RNG: seed it, and give the caller's state back.
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)
            parts = self._build(stats)
        self.fit_result_ = train_fit(
            splits=splits, **parts, epochs=self.epochs, batch_size=self.batch_size,
            eval_every=self.epochs if self.select == "last" else 1, select=self.select, seed=seed, device=device,
        )
        # Float64 inference: a row's prediction then does not depend on the rows batched with it (float32
        # matrix products may sum in a different order for another batch size).
        self.model_ = parts["model"].to(torch.float64).eval()
        self.weighting_ = parts["weighting"]
        return self

    def _fit_weights(self, sample_weight, y: np.ndarray, y_ids: np.ndarray) -> Optional[np.ndarray]:
        """Each row's weight, ``sample_weight × class_weight[y]`` (float64, checked), or ``None`` when
        neither is given."""
        if sample_weight is None and self.class_weight is None:
            return None
        n = len(y_ids)
        if sample_weight is None:
            weights = np.ones(n)
        elif isinstance(sample_weight, Real) and not isinstance(sample_weight, bool):
            weights = np.full(n, float(sample_weight))
        else:
            try:
                weights = check_array(sample_weight, ensure_2d=False, dtype=np.float64, ensure_all_finite=False,
                                      input_name="sample_weight", copy=True)
            except (TypeError, ValueError) as error:
                raise ValueError(f"sample_weight must be numbers: {error}") from None
            if weights.ndim != 1:
                raise ValueError(f"sample_weight must be one weight per example (1-D), got shape {weights.shape}")
            if len(weights) != n:
                raise ValueError(f"sample_weight has {len(weights)} entries for {n} examples")
        if not np.isfinite(weights).all():
            raise ValueError("sample_weight must be finite, got NaN or infinite values")
        if (weights < 0).any():
            raise ValueError(f"sample_weight must be >= 0, got a minimum of {weights.min():g}")
        if not weights.any():
            raise ValueError("sample_weight must not be all zero: at least one example needs a positive weight")
        if self.class_weight is not None:
            given = None if sample_weight is None else weights
            per_class = compute_class_weight(self.class_weight, classes=self.classes_, y=y, sample_weight=given)
            per_class = np.asarray(per_class, dtype=np.float64)
            if not (np.isfinite(per_class).all() and (per_class >= 0).all()):
                raise ValueError(f"class_weight must give finite weights >= 0, got {per_class.tolist()}")
            weights = weights * per_class[y_ids]
        return weights

    def _check_class_weights(self, weights: np.ndarray, y_ids: np.ndarray) -> None:
        """Every class needs a positive total weight among the training rows."""
        totals = np.bincount(y_ids, weights=weights, minlength=len(self.classes_))
        if (totals > 0).all():
            return
        what = "sample_weight" if self.class_weight is None else "sample_weight × class_weight"
        rows = " among the training rows (val_fraction holds some out)" if self.val_fraction > 0 else ""
        empty = ", ".join(map(repr, self.classes_[totals == 0][:5].tolist()))
        raise ValueError(f"{what} is 0 for every example of class {empty}{rows}: every class needs a positive weight")

    def _splits(self, X: np.ndarray, y_ids: np.ndarray, g_ids: np.ndarray, num_groups: int, seed: int,
                weights: Optional[np.ndarray] = None) -> Tuple[Splits, Optional[np.ndarray]]:
        """Training rows and validation rows (``val_fraction`` of every (class, group) cell, drawn by
        ``stratified_split`` as ``data=tabular`` does), and the training rows' weights (``None`` without
        ``weights``); sets ``mean_`` and ``scale_`` from the training rows, weighted by ``weights``. The
        training split carries its weights scaled to mean 1."""
        held_out = np.zeros(len(X), dtype=bool)
        if self.val_fraction > 0:
            held_out = stratified_split(y_ids * num_groups + g_ids, self.val_fraction, 0.0, seed) == 1
        train = ~held_out
        train_weights = None if weights is None else weights[train]
        if train_weights is not None:
            self._check_class_weights(train_weights, y_ids[train])
        mean = np.average(X[train], axis=0, weights=train_weights)
        scale = np.sqrt(np.average((X[train] - mean) ** 2, axis=0, weights=train_weights))
        self.mean_ = mean if self.standardize else np.zeros_like(mean)
        self.scale_ = np.where(scale > 0, scale, 1.0) if self.standardize else np.ones_like(scale)
        x = torch.from_numpy(np.ascontiguousarray(self._standardize(X), dtype=np.float32))
        y_t, g_t = torch.from_numpy(y_ids.astype(np.int64)), torch.from_numpy(g_ids.astype(np.int64))

        def split(rows: np.ndarray, weight: Optional[torch.Tensor] = None) -> Split:
            index = torch.from_numpy(np.flatnonzero(rows))
            return Split(x[index], y_t[index], g_t[index], len(self.classes_), num_groups, weight)

        # The loop's objective is mean(weight · w · loss): weights of mean 1 over the training rows make it
        # the weighted mean, sum(s · w · loss) / sum(s), as over repeated rows.
        multiplier = None
        if train_weights is not None:
            scaled = train_weights * (len(train_weights) / train_weights.sum())
            multiplier = torch.from_numpy(scaled.astype(np.float32))
        # Splits needs validation and test rows: without held-out rows validation repeats the training rows,
        # and test repeats validation (the caller keeps its own test data). Evaluation ignores the weights.
        training = split(train, multiplier)
        val = split(held_out) if self.val_fraction > 0 else training
        return Splits(training, val, val), train_weights

    def _fit_groups(self, groups, y_ids: np.ndarray) -> Tuple[np.ndarray, int]:
        """``(group ids, number of groups)``; without ``groups`` the groups are the classes."""
        if groups is None:
            self.groups_ = None
            return y_ids, len(self.classes_)
        groups = column_or_1d(check_array(groups, ensure_2d=False, dtype=None, input_name="groups"))
        if len(groups) != len(y_ids):
            raise ValueError(f"groups has {len(groups)} entries for {len(y_ids)} examples")
        g_ids, self.groups_ = dense_ids(groups)  # sorted, as data=tabular numbers a group column
        return g_ids, len(self.groups_)

    def _build(self, stats: Dict[str, object]) -> Dict[str, object]:
        """The arguments of :func:`shiftkit.train.fit` that the names choose, built with ``stats``."""
        model_options = {**_MODEL_DEFAULTS.get(self.model, {}), **self._options("model_options")}
        return {
            "model": models.build(self.model, **model_options, **stats),
            "loss": losses.build(self.loss, **self._options("loss_options"), **stats),
            "weighting": weighting.build(self.weighting, **self._options("weighting_options"), **stats),
            "sampler": sampling.build(self.sampler, **self._options("sampler_options"), **stats),
            "optim": optim.build(self.optimizer, **self._optimizer_options()),
        }

    def _standardize(self, X: np.ndarray) -> np.ndarray:
        return (X - self.mean_) / self.scale_

    @torch.no_grad()
    def _logits(self, X) -> np.ndarray:
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=np.float64)
        x = torch.from_numpy(np.ascontiguousarray(self._standardize(X), dtype=np.float64))
        device = next(self.model_.parameters()).device
        return torch.cat([self.model_(chunk.to(device)).cpu() for chunk in x.split(_PREDICT_BATCH)]).numpy()

    def decision_function(self, X) -> np.ndarray:
        """The network's logits ``f(x) [n, K]``; for two classes ``f_1 - f_0 [n]`` (positive means
        ``classes_[1]``). Logit-adjusted losses (LA, LDAM, CDT, VS; docs/METHODS.md#losses-logit-adjusted) shift logits only during
        training, so these are the unadjusted logits that predictions use."""
        logits = self._logits(X)
        return logits[:, 1] - logits[:, 0] if len(self.classes_) == 2 else logits

    def predict_proba(self, X) -> np.ndarray:
        """``softmax(f(x)) [n, K]``, columns in the order of ``classes_``. A probability in the sense of a
        likelihood only for ``loss="ce"`` with ``weighting="erm"``: other losses and weightings move the
        logits on purpose (docs/METHODS.md#one-loop), so read it then as a score with the same ranking as the logits."""
        return torch.softmax(torch.from_numpy(self._logits(X)), dim=1).numpy()

    def predict(self, X) -> np.ndarray:
        """The label with the largest logit, ``classes_[argmax_k f_k(x)]``."""
        best = self._logits(X).argmax(1)  # before reading classes_: unfitted, _logits raises NotFittedError
        return self.classes_[best]

    def evaluate(self, X, y, groups=None) -> Dict[str, object]:
        """All metrics of docs/METHODS.md#metrics (accuracy, balanced, worst-class, group-balanced and worst-group
        accuracy, DEO, per-group accuracy) of the predictions on ``X`` (:func:`shiftkit.metrics.evaluate`).

        Groups: with ``groups`` given to ``fit``, ``groups`` here must use those ids (``per_group_acc``
        follows ``groups_``, and ``train_weighted_acc`` re-weights by the training group counts); a model
        fitted without groups takes any group ids here, in sorted order, and without them the groups are
        the classes.
        """
        logits = torch.from_numpy(self._logits(X))
        y = column_or_1d(check_array(y, ensure_2d=False, dtype=None, input_name="y"))
        y_ids = _encode(y, self.classes_, "labels")
        g_ids, train_counts = self._evaluation_groups(groups, y_ids)
        if not len(logits) == len(y_ids) == len(g_ids):
            raise ValueError(f"X has {len(logits)} rows, y {len(y_ids)} and groups {len(g_ids)}")
        return metrics.evaluate(logits, torch.from_numpy(y_ids), torch.from_numpy(g_ids), train_counts)

    def _evaluation_groups(self, groups, y_ids: np.ndarray) -> Tuple[np.ndarray, Optional[list]]:
        """``(group ids, training group counts or None)`` for :meth:`evaluate`."""
        if groups is None:
            if self.groups_ is not None:
                raise ValueError("this model was fitted with groups: pass groups to evaluate")
            return y_ids, self.class_counts_
        groups = column_or_1d(check_array(groups, ensure_2d=False, dtype=None, input_name="groups"))
        if self.groups_ is None:
            return dense_ids(groups)[0], None
        return _encode(groups, self.groups_, "groups"), self.group_counts_


def _group_accuracies(y_true, y_pred, groups, metric: str) -> np.ndarray:
    """Accuracy within each group present in ``groups`` (any ids), in sorted group order."""
    if groups is None:
        raise ValueError(
            f"{metric} needs groups=: in GridSearchCV or cross_val_score, enable metadata routing "
            "(sklearn.set_config(enable_metadata_routing=True)) and pass groups to fit (or in params=)"
        )
    y_true = column_or_1d(check_array(y_true, ensure_2d=False, dtype=None, input_name="y_true"))
    y_pred = column_or_1d(check_array(y_pred, ensure_2d=False, dtype=None, input_name="y_pred"))
    groups = column_or_1d(check_array(groups, ensure_2d=False, dtype=None, input_name="groups"))
    if not len(y_true) == len(y_pred) == len(groups) > 0:
        raise ValueError(f"{metric}: y_true has {len(y_true)} entries, y_pred {len(y_pred)} and groups {len(groups)}")
    ids, _ = dense_ids(groups)
    hits = np.bincount(ids, weights=(y_true == y_pred).astype(np.float64))
    return hits / np.bincount(ids)


def worst_group_accuracy(y_true, y_pred, *, groups=None) -> float:
    """The lowest accuracy over the groups present in ``groups`` (shiftkit's ``worst_group_acc``).

    >>> worst_group_accuracy([0, 0, 1, 1], [0, 1, 1, 1], groups=["a", "a", "b", "b"])
    0.5
    """
    return float(_group_accuracies(y_true, y_pred, groups, "worst_group_accuracy").min())


def group_balanced_accuracy(y_true, y_pred, *, groups=None) -> float:
    """The mean over the groups present in ``groups`` of their accuracy (shiftkit's ``group_balanced_acc``).

    >>> group_balanced_accuracy([0, 0, 1, 1, 1], [0, 1, 1, 1, 1], groups=["a", "a", "b", "b", "b"])
    0.75
    """
    return float(_group_accuracies(y_true, y_pred, groups, "group_balanced_accuracy").mean())


def balanced_accuracy(y_true, y_pred) -> float:
    """The mean over the classes present in ``y_true`` of their recall: the group-balanced accuracy with
    the classes as groups, equal to ``sklearn.metrics.balanced_accuracy_score`` (shiftkit's
    ``balanced_acc``).

    >>> balanced_accuracy([0, 0, 0, 1], [0, 0, 1, 1])
    0.8333333333333333
    """
    return float(_group_accuracies(y_true, y_pred, y_true, "balanced_accuracy").mean())


def _group_scorer(metric):
    """A scorer of ``metric`` that asks scikit-learn's metadata routing for ``groups``."""
    scorer = make_scorer(metric)
    with config_context(enable_metadata_routing=True):  # set_score_request exists only with routing on
        return scorer.set_score_request(groups=True)


#: Scorers for ``GridSearchCV(scoring=...)`` and ``cross_val_score``. The group scorers request ``groups``
#: through metadata routing: enable it (``sklearn.set_config(enable_metadata_routing=True)``) and pass
#: ``groups`` to the search's ``fit``; each test fold's groups then reach the scorer.
worst_group_scorer = _group_scorer(worst_group_accuracy)
group_balanced_scorer = _group_scorer(group_balanced_accuracy)
balanced_accuracy_scorer = make_scorer(balanced_accuracy)

__all__ = ["ShiftClassifier", "balanced_accuracy", "balanced_accuracy_scorer", "group_balanced_accuracy",
           "group_balanced_scorer", "worst_group_accuracy", "worst_group_scorer"]
