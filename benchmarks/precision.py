"""bfloat16 against float32: one training step of each model family under ``torch.autocast`` (what
``train.amp=bf16`` runs), alternated so that the machine's drifts weigh on both alike.

bfloat16 pays only where the hardware computes in it: CPUs with AVX-512 BF16 or AMX (``avx512_bf16`` /
``amx_bf16`` in ``/proc/cpuinfo``) and recent GPUs. Elsewhere PyTorch emulates it, and a step is several
times slower. The script prints what this machine has (``bf16_native``) beside the ratios.

    python benchmarks/precision.py [--models mlp,cnn,convnet,resnet32] [--rounds 10] [--device auto]

Final line: ``RESULT {"speedup_mlp": ..., "speedup_cnn": ..., ..., "bf16_native": ...}`` (fp32 / bf16 time).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from _common import result
from shiftkit import models
from shiftkit.environment import bf16_native

#: Input shape, batch size and options per family (the sizes of the data they train on here).
SHAPES = {"mlp": ((64,), 32, {"width": 512, "depth": 2}), "cnn": ((1, 28, 28), 64, {}),
          "convnet": ((3, 32, 32), 64, {}), "resnet32": ((3, 32, 32), 64, {})}


def speedup(name: str, device: str, rounds: int, steps: int = 2) -> tuple:
    shape, batch, options = SHAPES[name]
    torch.manual_seed(0)
    model = models.build(name, input_shape=shape, num_classes=10, **options).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x, y = torch.randn(batch, *shape, device=device), torch.randint(0, 10, (batch,), device=device)

    def run(bf16: bool) -> float:
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(steps):
            with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=bf16):
                loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return (time.perf_counter() - start) / steps

    run(False), run(True)  # warm-up
    times = [(run(False), run(True)) for _ in range(rounds)]
    fp32, bf16 = statistics.median(a for a, _ in times), statistics.median(b for _, b in times)
    return fp32, bf16


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="mlp,cnn,convnet,resnet32")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    native = bf16_native(device)
    print(f"{device}: bfloat16 {'native' if native else 'emulated'}")
    out = {}
    for name in args.models.split(","):
        fp32, bf16 = speedup(name, device, args.rounds)
        print(f"{name}: float32 {fp32 * 1e3:.2f} ms per step, bfloat16 {bf16 * 1e3:.2f} ms, speedup {fp32 / bf16:.2f}",
              flush=True)
        out[f"speedup_{name}"] = round(fp32 / bf16, 3)
        out[f"ms_per_step_{name}"] = {"fp32": round(fp32 * 1e3, 3), "bf16": round(bf16 * 1e3, 3)}
    result({**out, "bf16_native": native, "device_used": device, "rounds": args.rounds})


if __name__ == "__main__":
    main()
