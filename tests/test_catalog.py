"""``shiftkit list GROUP`` (every name with its options, types and defaults, from the registries), the
generated pages of docs/options/, ``shiftkit train --show``, and sweeps that set an option for the members
that have it."""

import dataclasses
import json
import warnings
from pathlib import Path

import pytest

from shiftkit import catalog
from shiftkit.cli import main
from shiftkit.config import GROUPS, compose, expand_sweep, fit_options, schema
from shiftkit.errors import ShiftkitError, ShiftkitWarning

DOCS = Path(__file__).resolve().parents[1] / "docs" / "options"


@pytest.mark.parametrize("group", list(GROUPS))
def test_every_name_is_listed_with_every_option_and_default(group):
    registry = GROUPS[group]
    entries = catalog.entries(group)
    assert [e.name for e in entries] == registry.names()
    shared = {o.key for o in catalog.shared(group)}
    assert shared == set(registry.shared_options())
    for entry in entries:
        node = compose([f"{group}={entry.name}"])[group] if group != "logger" else None
        fields = {f.name: f for f in dataclasses.fields(schema(group, entry.name)) if f.name != "name"}
        assert [o.key for o in entry.options] == [k for k in fields if k not in shared]
        for option in entry.options:
            if node is not None and option.default != "(required)":
                assert node[option.key] == option.default, (entry.name, option.key)
        assert entry.summary and "\n" not in entry.summary and len(entry.summary) <= 160


def test_list_loss_prints_each_loss_with_its_options(capsys):
    assert main(["list", "loss"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("loss: per-example losses")
    lines = out.splitlines()
    poly = next(i for i, line in enumerate(lines) if line.startswith("  poly: "))
    assert "Polynomially-tailed" in lines[poly]
    assert lines[poly + 1].strip() == "alpha: float = 1.0, beta: float = 1.0, continuity: str = 'scale', type: str = 'logit'"
    ce = next(i for i, line in enumerate(lines) if line.startswith("  ce: "))
    assert lines[ce + 1].strip() == "(no options)"


def test_list_model_names_the_options_every_model_shares(capsys):
    assert main(["list", "model"]) == 0
    out = capsys.readouterr().out
    assert "every model also takes: weights: Optional[str] = None, freeze: str = 'none'" in out
    assert "  resnet50: " in out


def test_an_unknown_group_is_one_line(capsys):
    assert main(["list", "losses"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == ("shiftkit: error: unknown group 'losses'; choose one of: data, model, loss, weighting, "
                           "sampler, optim, logger, procedure, augment")


@pytest.mark.parametrize("group", list(GROUPS))
def test_the_docs_pages_are_the_generated_ones(group):
    """docs/options/GROUP.md is what ``shiftkit list GROUP --markdown`` prints: regenerate it after a change."""
    assert (DOCS / f"{group}.md").read_text() == catalog.markdown(group) + "\n"


def test_summary_ends_at_the_first_full_stop_outside_parentheses_and_abbreviations():
    class Doc:
        """A loss of Kini et al. (NeurIPS 2021, e.g. eq. 3). More text.

        A second paragraph."""

    assert catalog.summary(Doc) == "A loss of Kini et al. (NeurIPS 2021, e.g. eq. 3)."


def test_show_prints_the_composed_config_and_trains_nothing(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["train", "--show", "loss=poly", "loss.alpha=2", "seed=3", f"out={out}"]) == 0
    text = capsys.readouterr().out
    first = text.splitlines()[0]
    folder = first.rsplit("/", 1)[1]
    assert first == f"# run 1 of 1: {out}/digits_binary/poly(alpha=2)+erm/{folder}" and folder.startswith("seed3-")
    assert "  name: poly\n  alpha: 2.0\n" in text
    assert not out.exists()


def test_show_lists_every_run_of_a_sweep(tmp_path, capsys):
    assert main(["train", "-m", "--show", "loss=ce,poly", "seed=0,1", f"out={tmp_path / 'out'}"]) == 0
    headers = [line for line in capsys.readouterr().out.splitlines() if line.startswith("# run ")]
    assert [h.split(":")[0] for h in headers] == [f"# run {i} of 4" for i in range(1, 5)]
    assert len({h.split(": ", 1)[1] for h in headers}) == 4


def test_show_refuses_what_a_run_would_refuse(tmp_path, capsys):
    assert main(["train", "--show", "train.epochs=0", f"out={tmp_path / 'out'}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("shiftkit: error: ") and err.count("\n") == 1


def test_a_sweep_sets_an_option_for_the_members_that_have_it():
    with pytest.warns(ShiftkitWarning, match=r"loss.alpha=2 applies only to .* not to ce \(1 of 2 runs\)"):
        runs = fit_options(expand_sweep(["loss=ce,poly", "loss.alpha=2", "seed=0"]))
    assert runs == [["loss=ce", "seed=0"], ["loss=poly", "loss.alpha=2", "seed=0"]]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an option every member has is not mentioned
        assert fit_options(expand_sweep(["loss=la,vs", "loss.tau=2"])) == [["loss=la", "loss.tau=2"],
                                                                          ["loss=vs", "loss.tau=2"]]


def test_an_option_no_member_has_is_refused_as_a_single_run_refuses_it():
    with pytest.raises(ShiftkitError, match="loss 'ce' has no option 'alphaa'; its options: none"):
        fit_options(expand_sweep(["loss=ce,poly", "loss.alphaa=2"]))


def test_the_command_line_trains_a_sweep_with_an_option_some_members_lack(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["train", "-m", "loss=ce,poly", "loss.alpha=2", "train.epochs=1", "model.width=8", f"out={out}",
                 "device=cpu"]) == 0
    assert "shiftkit: warning: loss.alpha=2 applies only to" in capsys.readouterr().err
    records = sorted(json.loads(p.read_text())["config"]["loss"].get("alpha", 0) for p in out.rglob("run.json"))
    assert records == [0, 2.0]


@pytest.mark.parametrize("group", ["data", "model", "loss", "weighting", "sampler", "optim"])
def test_listings_link_each_name_to_its_method_reference_and_keep_summaries_plain(group):
    from shiftkit import catalog

    page = catalog.markdown(group)
    for entry in catalog.entries(group):
        assert "METHODS.md" not in entry.summary
        assert f"(../METHODS.md#{group}-{entry.name})" in page
    assert f"docs/METHODS.md#{group}-NAME" in catalog.text(group)
