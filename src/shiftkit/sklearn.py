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
``groups`` arrive through scikit-learn's metadata routing. The hyperparameter checks live in
:mod:`shiftkit.sklearn_checks`, the rows and their weights in :mod:`shiftkit.sklearn_data`, the metrics and
scorers in :mod:`shiftkit.sklearn_scoring`.
"""

from __future__ import annotations

from typing import Dict, Optional

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils import check_random_state
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_array, check_is_fitted, column_or_1d, validate_data

from . import metrics
from .environment import resolve_device
from .errors import ShiftkitError
from .sklearn_checks import build_parts, check_hyperparameters, parameter_names
from .sklearn_data import encode, evaluation_groups, fit_groups, fit_splits, fit_weights, standardized, weighted_counts
from .sklearn_scoring import (  # noqa: F401
    balanced_accuracy,
    balanced_accuracy_scorer,
    group_balanced_accuracy,
    group_balanced_scorer,
    worst_group_accuracy,
    worst_group_scorer,
)
from .train import fit as train_fit

#: Rows per forward pass at prediction time.
_PREDICT_BATCH = 4096


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
            error.args = (parameter_names(self, str(error)),) + error.args[1:]
            raise

    def _fit(self, X, y, groups, sample_weight) -> "ShiftClassifier":
        check_hyperparameters(self)
        device = resolve_device(self.device)
        X, y = validate_data(self, X, y, dtype=np.float64)
        check_classification_targets(y)
        classes, y_ids = np.unique(y, return_inverse=True)
        if len(classes) < 2:
            raise ValueError(f"ShiftClassifier needs at least 2 classes in y, got 1 class: {classes[0]!r}")
        self.classes_ = classes
        weights = fit_weights(self, sample_weight, y, y_ids)
        g_ids, num_groups = fit_groups(self, groups, y_ids)
        seed = int(check_random_state(self.random_state).randint(np.iinfo(np.int32).max))
        splits, train_weights = fit_splits(self, X, y_ids, g_ids, num_groups, seed, weights)
        stats = splits.statistics()
        if train_weights is not None:  # the counts of the weighted rows: weight k counts as k copies
            stats.update(weighted_counts(splits.train, train_weights))
        self.class_counts_, self.group_counts_ = stats["class_counts"], stats["group_counts"]
        # The model's initialization draws from torch's global RNG: seed it, and give the caller's state back.
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)
            parts = build_parts(self, stats)
        self.fit_result_ = train_fit(
            splits=splits, **parts, epochs=self.epochs, batch_size=self.batch_size,
            eval_every=self.epochs if self.select == "last" else 1, select=self.select, seed=seed, device=device,
        )
        # Float64 inference: a row's prediction then does not depend on the rows batched with it (float32
        # matrix products may sum in a different order for another batch size).
        self.model_ = parts["model"].to(torch.float64).eval()
        self.weighting_ = parts["weighting"]
        return self

    @torch.no_grad()
    def _logits(self, X) -> np.ndarray:
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=np.float64)
        x = torch.from_numpy(np.ascontiguousarray(standardized(self, X), dtype=np.float64))
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
        y_ids = encode(y, self.classes_, "labels")
        g_ids, train_counts = evaluation_groups(self, groups, y_ids)
        if not len(logits) == len(y_ids) == len(g_ids):
            raise ValueError(f"X has {len(logits)} rows, y {len(y_ids)} and groups {len(g_ids)}")
        return metrics.evaluate(logits, torch.from_numpy(y_ids), torch.from_numpy(g_ids), train_counts)


__all__ = ["ShiftClassifier", "balanced_accuracy", "balanced_accuracy_scorer", "group_balanced_accuracy",
           "group_balanced_scorer", "worst_group_accuracy", "worst_group_scorer"]
