"""A run beside a competing CPU-bound process: busy / idle time, with PyTorch's own thread settings and
with shiftkit's (:mod:`shiftkit.threads`: sleeping waiters, the free cores).

Each measurement is a fresh process (OpenMP reads its settings once, when it loads), run idle and then
beside a competitor this script starts itself (``--competitor python``: one pure-Python busy loop, a
core's worth; ``torch``: another PyTorch process multiplying matrices on the default threads). Workloads:
the demo's MLP (2 x 512, batch 32, ``digits_binary``) and the ``cnn`` (batch 64, 1280 ``fmnist_binary``
images). ``OMP_NUM_THREADS`` and ``OMP_WAIT_POLICY`` are removed from the children's environment.

    python benchmarks/threads.py [--competitor python] [--repeats 3]

Final line: ``RESULT {"busy_idle_shiftkit_mlp": ..., "busy_idle_torch_mlp": ..., ...}``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import time

COMPETITORS = {
    "python": "while True: pass",
    "torch": "import torch\nx = torch.randn(1024, 1024)\nwhile True: x @ x",
}


def worker(model: str, policy: str, repeats: int) -> None:
    """One measurement (a child process): print the median seconds of ``repeats`` runs after a warm-up."""
    if policy == "shiftkit":
        from shiftkit import threads

        threads.configure()
    import torch

    from shiftkit import data, losses, models, optim, weighting
    from shiftkit.train import fit

    if model == "mlp":
        splits, kw, epochs, batch = data.build("digits_binary"), {"width": 512, "depth": 2}, 30, 32
    else:
        splits, kw, epochs, batch = data.build("fmnist_binary"), {}, 1, 64
        splits = dataclasses.replace(splits, train=splits.train.subset(torch.arange(1280)),
                                     val=splits.val.subset(torch.arange(256)), test=splits.test.subset(torch.arange(256)))

    def once(epochs=epochs):
        torch.manual_seed(0)
        net = models.build(model, **kw, **splits.statistics())
        start = time.perf_counter()
        fit(net, splits, losses.build("ce"), weighting.build("erm"), optim.build("sgd", lr=0.01, momentum=0.9),
            epochs=epochs, batch_size=batch, eval_every=epochs, device="cpu")
        return time.perf_counter() - start

    once(1)
    seconds = statistics.median(once() for _ in range(repeats))
    print(json.dumps({"seconds": seconds, "threads": torch.get_num_threads()}))


def measure(model: str, policy: str, repeats: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")}
    out = subprocess.run([sys.executable, __file__, "--worker", model, policy, str(repeats)], env=env,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--competitor", choices=sorted(COMPETITORS), default="python")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker[0], args.worker[1], int(args.worker[2]))
    from _common import result

    times = {}
    for state in ("idle", "busy"):
        competitor = None
        if state == "busy":
            env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")}
            competitor = subprocess.Popen([sys.executable, "-c", COMPETITORS[args.competitor]], env=env)
            time.sleep(1.0)
        try:
            for model in ("mlp", "cnn"):
                for policy in ("torch", "shiftkit"):
                    times[state, model, policy] = measure(model, policy, args.repeats)
                    print(f"{state} {model} {policy}: {times[state, model, policy]['seconds']:.3f} s "
                          f"({times[state, model, policy]['threads']} threads)", flush=True)
        finally:
            if competitor is not None:
                competitor.kill()
                competitor.wait()
    out = {}
    for model in ("mlp", "cnn"):
        for policy in ("torch", "shiftkit"):
            idle, busy = times["idle", model, policy], times["busy", model, policy]
            out[f"busy_idle_{policy}_{model}"] = round(busy["seconds"] / idle["seconds"], 3)
            out[f"seconds_{policy}_{model}"] = {"idle": round(idle["seconds"], 3), "busy": round(busy["seconds"], 3),
                                                "threads_idle": idle["threads"], "threads_busy": busy["threads"]}
        out[f"shiftkit_torch_idle_{model}"] = round(
            times["idle", model, "shiftkit"]["seconds"] / times["idle", model, "torch"]["seconds"], 3)
    result({**out, "competitor": args.competitor, "repeats": args.repeats})


if __name__ == "__main__":
    main()
