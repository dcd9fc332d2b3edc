"""Does bfloat16 keep results? The reproductions' verdicts and the demo's table, trained in float32 and in
bfloat16, side by side: the check a model family passes before ``train.amp=auto`` may pick bfloat16 for
it (``shiftkit.precision.VERIFIED``, docs/PERFORMANCE.md#precision).

Each reproduction runs twice from empty directories, ``shiftkit reproduce NAME --amp none`` and ``--amp
bf16``, and every claim's verdict is compared. The demo runs twice (``shiftkit demo train.amp=...``), and
every cell of its table is compared: a cell is unchanged within seed noise where the two means differ by
at most twice the standard error of their difference (the table's standard errors over seeds). Each pair
is also timed, end to end.

    python benchmarks/precision_verdicts.py [--names demo,wang2022-fig3,...] [--scale quick] [--seeds 5]
        [--device auto] [--out results/precision-verdicts]

On a device that emulates bfloat16 (``shiftkit.environment.bf16_native``) the numbers are the same as on
one that computes in it (both accumulate in float32) but each bfloat16 run is several times slower.

Final line: ``RESULT {"demo": {"same": ..., "cells": ..., "changed": [...], "seconds": {...}}, NAME:
{"same": ..., "changed": [...], "seconds": {...}}, ..., "bf16_native": ...}``.
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

PRECISIONS = ("none", "bf16")


def _shiftkit(args: list) -> float:
    """Run ``python -m shiftkit ARGS``; its wall time in seconds (its output goes to the log beside it)."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "shiftkit", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"shiftkit {' '.join(args)} failed: {(done.stderr or done.stdout).strip().splitlines()[-1:]}")
    return time.perf_counter() - start


def reproduction(name: str, scale: str, device: str, out: Path) -> dict:
    seconds, claims = {}, {}
    for amp in PRECISIONS:
        where = out / f"{name}-{amp}"
        shutil.rmtree(where, ignore_errors=True)
        seconds[amp] = round(_shiftkit(["reproduce", name, "--scale", scale, "--device", device, "--amp", amp,
                                        "--out", str(where)]), 1)
        claims[amp] = json.loads((where / "summary.json").read_text())["claims"]
    changed = [f"{a['text']}: {a['holds']} in float32, {b['holds']} in bfloat16 ({b['evidence']})"
               for a, b in zip(*claims.values()) if a["holds"] != b["holds"]]
    return {"same": not changed, "claims": len(claims["none"]), "changed": changed, "seconds": seconds}


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
                (m1, s1), (m2, s2) = cell, other[row["method"]][key]
                s1, s2 = s1 or 0.0, s2 or 0.0  # one seed: no standard error, any difference counts
                compared += 1
                if abs(m1 - m2) > 2 * math.hypot(s1, s2):
                    apart.append(f"{dataset} {row['method']} {key}: {m1:.4f} ± {s1:.4f} in float32, "
                                 f"{m2:.4f} ± {s2:.4f} in bfloat16")
    return compared, apart


def demo(seeds: int, device: str, out: Path) -> dict:
    seconds, reports = {}, {}
    for amp in PRECISIONS:
        where = out / f"demo-{amp}"
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
    parser.add_argument("--out", default="results/precision-verdicts")
    args = parser.parse_args()
    device, out = resolve_device(args.device), Path(args.out)
    native = bf16_native(device)
    print(f"{device}: bfloat16 {'native' if native else 'emulated'}", flush=True)
    found = {}
    for name in args.names.split(","):
        found[name] = demo(args.seeds, device, out) if name == "demo" else reproduction(name, args.scale, device, out)
        report = found[name]
        print(f"{name}: {'unchanged' if report['same'] else 'CHANGED'} in bfloat16; seconds {report['seconds']}",
              flush=True)
        for line in report["changed"]:
            print(f"  {line}")
    result({**found, "scale": args.scale, "bf16_native": native, "device_used": device})


if __name__ == "__main__":
    main()
