"""Does bfloat16 keep results? The reproductions' verdicts and the demo's table, trained in float32 and in
bfloat16, side by side: the check a model family passes before ``train.amp=auto`` may pick bfloat16 for
it (``shiftkit.precision.VERIFIED``, docs/PERFORMANCE.md#precision).

Each reproduction runs twice from empty directories, ``shiftkit reproduce NAME --amp none`` and ``--amp
bf16``, and every claim's verdict is compared. The demo runs twice (``shiftkit demo train.amp=...``), and
every cell of its table is compared: a cell is unchanged within seed noise where the two means differ by
at most twice the standard error of their difference (the table's standard errors over seeds). A
reproduction's numbers are compared the same way, beside its verdicts: the mean final test balanced
accuracy of each group of runs (a method on a dataset, over its seeds). Each pair is also timed, end to
end. ``--set`` changes the reproductions' settings (``--set 'model=[model=cnn]'`` trains a model family
that the reproductions' own scales do not); ``--reuse`` reads back what an earlier call trained.

    python benchmarks/precision_verdicts.py [--names demo,wang2022-fig3,...] [--scale quick] [--seeds 5]
        [--device auto] [--set KEY=VALUE ...] [--reuse] [--out results/precision-verdicts]

On a device that emulates bfloat16 (``shiftkit.environment.bf16_native``) the numbers are the same as on
one that computes in it (both accumulate in float32) but each bfloat16 run is several times slower.

Final line: ``RESULT {"demo": {"same": ..., "cells": ..., "changed": [...], "seconds": {...}}, NAME:
{"same": ..., "changed": [...], "groups": ..., "groups_apart": [...], "seconds": {...}}, ..., "bf16_native": ...}``.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
import time
from pathlib import Path

from _common import result
from shiftkit.environment import bf16_native, resolve_device
from shiftkit.report_runs import mean_sem

PRECISIONS = ("none", "bf16")


def _shiftkit(args: list) -> float:
    """Run ``python -m shiftkit ARGS``; its wall time in seconds (its output goes to the log beside it)."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "shiftkit", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"shiftkit {' '.join(args)} failed: {(done.stderr or done.stdout).strip().splitlines()[-1:]}")
    return time.perf_counter() - start


def reproduction(name: str, scale: str, device: str, out: Path, settings: list = (), reuse: bool = False) -> dict:
    seconds, claims = {}, {}
    changes = ["--set", *settings] if settings else []
    for amp in PRECISIONS:
        where = out / f"{name}-{amp}"
        if not reuse:
            shutil.rmtree(where, ignore_errors=True)
        seconds[amp] = round(_shiftkit(["reproduce", name, "--scale", scale, "--device", device, "--amp", amp,
                                        "--out", str(where), *changes]), 1)
        claims[amp] = json.loads((where / "summary.json").read_text())["claims"]
    changed = [f"{a['text']}: {a['holds']} in float32, {b['holds']} in bfloat16 ({b['evidence']})"
               for a, b in zip(*claims.values()) if a["holds"] != b["holds"]]
    compared, apart = groups_apart(*(out / f"{name}-{amp}" / "runs" for amp in PRECISIONS))
    return {"same": not changed, "claims": len(claims["none"]), "changed": changed, "groups": compared,
            "groups_apart": apart, "seconds": seconds}


def _groups(runs: Path, metric: str) -> dict:
    """``{run group: [final test METRIC of each seed]}`` of a reproduction's runs folder; a group is a run's
    folder without its seed and identity (``DATA/METHOD@LABEL``), so the two precisions' groups pair up."""
    found: dict = {}
    for record in sorted(runs.rglob("run.json")):
        run = json.loads(record.read_text())
        value = (run.get("final") or {}).get("test", {}).get(metric)
        if run.get("status") == "finished" and value is not None:
            found.setdefault(record.parent.parent.relative_to(runs).as_posix(), []).append(value)
    return found


def groups_apart(fp32: Path, bf16: Path, metric: str = "balanced_acc") -> tuple:
    """``(groups compared, [groups whose mean final test METRIC differs between the precisions by more than
    twice the standard error of the difference over seeds])``: the reproductions' numbers, not only their
    verdicts. At two standard errors, about one group in twenty is apart by chance alone."""
    a, b = _groups(fp32, metric), _groups(bf16, metric)
    common = sorted(set(a) & set(b))
    apart = [f"{group} {metric}: {gap} ({len(a[group])} and {len(b[group])} seeds)" for group in common
             if (gap := _apart(mean_sem(a[group]), mean_sem(b[group])))]
    return len(common), apart


def _apart(fp32: tuple, bf16: tuple) -> str:
    """``"m1 ± s1 in float32, m2 ± s2 in bfloat16"`` where two ``(mean, standard error)`` differ by more than
    twice the standard error of their difference, else ``""`` (one seed: no standard error, any
    difference counts)."""
    (m1, s1), (m2, s2) = fp32, bf16
    s1, s2 = s1 or 0.0, s2 or 0.0
    if abs(m1 - m2) <= 2 * math.hypot(s1, s2):
        return ""
    return f"{m1:.4f} ± {s1:.4f} in float32, {m2:.4f} ± {s2:.4f} in bfloat16"


def cells_apart(fp32: dict, bf16: dict) -> tuple:
    """``(cells compared, [cells whose means differ by more than twice the standard error of their
    difference])`` of two report.json tables."""
    compared, apart = 0, []
    for dataset, rows in fp32["tables"].items():
        other = {r["method"]: r for r in bf16["tables"][dataset]}
        for row in rows:
            for key, cell in row.items():
                if "/" not in key or cell is None:
                    continue
                compared += 1
                gap = _apart(cell, other[row["method"]][key])
                if gap:
                    apart.append(f"{dataset} {row['method']} {key}: {gap}")
    return compared, apart


def demo(seeds: int, device: str, out: Path, reuse: bool = False) -> dict:
    seconds, reports = {}, {}
    for amp in PRECISIONS:
        where = out / f"demo-{amp}"
        if not reuse:
            shutil.rmtree(where, ignore_errors=True)
        seconds[amp] = round(_shiftkit(["demo", "--out", str(where), "--seeds", str(seeds), f"train.amp={amp}",
                                        f"device={device}"]), 1)
        reports[amp] = json.loads((where / "report.json").read_text())
    compared, changed = cells_apart(reports["none"], reports["bf16"])
    return {"same": not changed, "cells": compared, "changed": changed, "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--names", default="demo", help="demo and/or reproductions, comma-separated")
    parser.add_argument("--scale", default="quick")
    parser.add_argument("--seeds", type=int, default=5, help="the demo's seeds per method")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                        help="change the reproductions' settings, as shiftkit reproduce --set does: "
                             "--set 'model=[model=cnn]' trains another model family")
    parser.add_argument("--reuse", action="store_true",
                        help="keep what an earlier call left in --out: its finished runs are read back, not trained "
                             "again (the seconds are then not end to end)")
    parser.add_argument("--out", default="results/precision-verdicts")
    args = parser.parse_args()
    device, out = resolve_device(args.device), Path(args.out)
    native = bf16_native(device)
    print(f"{device}: bfloat16 {'native' if native else 'emulated'}", flush=True)
    found = {}
    for name in args.names.split(","):
        found[name] = (demo(args.seeds, device, out, args.reuse) if name == "demo"
                       else reproduction(name, args.scale, device, out, args.set, args.reuse))
        report = found[name]
        print(f"{name}: {'unchanged' if report['same'] else 'CHANGED'} in bfloat16; seconds {report['seconds']}",
              flush=True)
        for line in report["changed"]:
            print(f"  {line}")
        if "groups" in report:
            print(f"  run groups whose mean test balanced accuracy is more than 2 s.e. apart: "
                  f"{len(report['groups_apart'])} of {report['groups']}")
            for line in report["groups_apart"]:
                print(f"    {line}")
    result({**found, "scale": args.scale, "set": args.set, "bf16_native": native, "device_used": device})


if __name__ == "__main__":
    main()
