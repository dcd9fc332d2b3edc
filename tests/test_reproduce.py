"""``shiftkit reproduce``: the framework (settings, staging, summaries) and every registered
reproduction at its tiny scale (docs/METHODS.md#reproductions)."""

import json

import pytest

from shiftkit import reproductions
from shiftkit.errors import ShiftkitError
from shiftkit.reproductions import reproduction

PNG = b"\x89PNG\r\n\x1a\n"


def test_every_reproduction_declares_three_scales_with_the_same_keys():
    for name in reproductions.names():
        repro = reproductions.REPRODUCTIONS.get(name)
        assert set(repro.scales) == set(reproductions.SCALES), name
        keys = {s: set(v) for s, v in repro.scales.items()}
        assert keys["tiny"] == keys["quick"] == keys["paper"], name
        assert repro.title and repro.source, name


@pytest.mark.parametrize("name", reproductions.names())
def test_reproduction_runs_at_tiny_scale_and_writes_its_files(name, tmp_path):
    summary = reproductions.reproduce(name, "tiny", tmp_path, device="cpu")
    payload = json.loads((tmp_path / "summary.json").read_text())
    repro = reproductions.REPRODUCTIONS.get(name)
    assert payload["name"] == name and payload["scale"] == "tiny"
    for key in repro.keys:
        assert key in payload, key
    assert summary.figures and payload["figures"] == summary.figures
    for figure in summary.figures:
        assert (tmp_path / figure).read_bytes()[:8] == PNG, figure
    text = (tmp_path / "summary.md").read_text()
    assert text.startswith(f"# {name}: ") and "| quantity | paper | ours |" in text
    assert not (tmp_path / ".staging").exists()
    for claim in payload["claims"]:
        assert claim["holds"] in (True, False, None) and claim["evidence"]


class _Toy(reproduction.Reproduction):
    title = "a toy"
    source = "nowhere"
    keys = ("value",)
    scales = {s: {"n": 2, "rate": 0.5, "fail": False} for s in reproductions.SCALES}

    def run(self, ctx, settings):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        figure = ctx.save_figure(plt.figure(), "toy.png")
        if settings["fail"]:
            raise ShiftkitError("failed on purpose")
        return reproduction.Summary(
            key={"value": settings["n"] * settings["rate"]},
            rows=[("value", "1.0", f"{settings['n'] * settings['rate']:.1f}")],
            claims=[reproduction.Claim("value is positive", settings["n"] > 0, f"n = {settings['n']}")],
            figures=[figure],
        )


@pytest.fixture
def toy(monkeypatch):
    monkeypatch.setitem(reproductions.REPRODUCTIONS._items, "toy", _Toy)


def test_settings_overrides_are_typed(toy, tmp_path):
    summary = reproductions.reproduce("toy", "tiny", tmp_path, overrides=["n=4", "rate=1"])
    assert summary.key["value"] == 4.0
    assert json.loads((tmp_path / "summary.json").read_text())["settings"] == {"n": 4, "rate": 1.0, "fail": False}
    for bad, message in [
        ("n=abc", "expected a int"),
        ("nope=1", "key among: fail, n, rate"),
        ("n", "key=value"),
        ("fail=1", "expected a bool"),
    ]:
        with pytest.raises(ShiftkitError, match=message):
            reproductions.reproduce("toy", "tiny", tmp_path / "bad", overrides=[bad])
    with pytest.raises(ShiftkitError, match="unknown scale 'huge'"):
        reproductions.reproduce("toy", "huge", tmp_path / "bad")
    with pytest.raises(ShiftkitError, match="unknown reproduction 'nope'; choose one of: "):
        reproductions.reproduce("nope", "tiny", tmp_path / "bad")
    assert not (tmp_path / "bad").exists()


def test_a_failed_reproduction_leaves_the_previous_files_untouched(toy, tmp_path):
    reproductions.reproduce("toy", "tiny", tmp_path)
    before = (tmp_path / "summary.json").read_text()
    with pytest.raises(ShiftkitError, match="on purpose"):
        reproductions.reproduce("toy", "tiny", tmp_path, overrides=["fail=true", "n=7"])
    assert (tmp_path / "summary.json").read_text() == before
    assert not (tmp_path / ".staging").exists()


def test_a_tiny_check_never_replaces_another_scale_and_its_figures_say_tiny(toy, tmp_path):
    from shiftkit.reproductions.reproduction import Context, default_out

    assert default_out("toy", "quick").as_posix() == "results/reproduce/toy"
    assert default_out("toy", "tiny").as_posix() == "results/reproduce/toy-tiny"
    reproductions.reproduce("toy", "quick", tmp_path)
    before = (tmp_path / "summary.json").read_text()
    with pytest.raises(ShiftkitError, match="holds a quick-scale reproduction; a tiny-scale one would replace"):
        reproductions.reproduce("toy", "tiny", tmp_path)
    assert (tmp_path / "summary.json").read_text() == before
    assert Context("toy", "tiny", tmp_path / "t").note and not Context("toy", "quick", tmp_path / "q").note


def test_summary_markdown_states_scale_rows_claims_and_figures(toy, tmp_path):
    reproductions.reproduce("toy", "quick", tmp_path)
    text = (tmp_path / "summary.md").read_text()
    assert "Scale `quick` (n=2, rate=0.5, fail=False)" in text
    assert "| value | 1.0 | 1.0 |" in text
    assert "- **holds**: value is positive (n = 2)" in text
    assert "![toy.png](toy.png)" in text


def _cli(*args, cwd):
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-m", "shiftkit.cli", "reproduce", *args], cwd=cwd, capture_output=True,
                          text=True, env=env, timeout=300)


def test_command_line_lists_runs_and_reports(tmp_path):
    listed = _cli(cwd=tmp_path)
    assert listed.returncode == 0
    assert [line.split(":")[0] for line in listed.stdout.splitlines()] == reproductions.names()
    done = _cli("wang2022-fig1", "--scale", "tiny", "--out", str(tmp_path / "fig1"), "--set", "epochs=50",
                "--set", "lr=0.2", cwd=tmp_path)  # a repeated --set adds to the earlier ones
    assert done.returncode == 0, done.stderr
    assert "boundary angle, CE" in done.stdout and f"are in {tmp_path / 'fig1'}/" in done.stdout
    payload = json.loads((tmp_path / "fig1" / "summary.json").read_text())
    assert payload["settings"]["epochs"] == 50 and payload["settings"]["lr"] == 0.2
    assert payload["command"].startswith("shiftkit reproduce wang2022-fig1")


@pytest.mark.parametrize(
    "args, message",
    [
        (["nope"], "unknown reproduction 'nope'; choose one of: "),
        (["wang2022-fig1", "--scale", "huge"], "unknown scale 'huge'"),
        (["wang2022-fig1", "--set", "nope=1"], "--set takes key=value with a key among: "),
        (["wang2022-fig1", "--set", "epochs=many"], "--set epochs: expected a int"),
        (["wang2022-fig1", "--device", "nope"], "device 'nope' is not available here"),
    ],
)
def test_command_line_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, args, message):
    res = _cli(*args, "--out", str(tmp_path / "out"), cwd=tmp_path)
    assert res.returncode == 2 and res.stderr.count("\n") == 1, res.stderr
    assert res.stderr.startswith("shiftkit: error: ") and message in res.stderr
    assert not (tmp_path / "out").exists()
