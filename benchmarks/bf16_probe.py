"""Do bf16 kernels beat fp32 ones on this CPU?  Times one matmul and one
convolution in fp32 and in bf16 (contiguous and channels_last). A CPU that
reports avx512_bf16 may or may not run oneDNN's bf16 kernels faster than
fp32 (it depends on the microarchitecture and on AMX); this probe is the
evidence behind the tuner's bf16 trials on the machine it ran on.

    python benchmarks/bf16_probe.py      # writes runs/benchmarks/cpu_bf16_probe.json
    python benchmarks/bf16_probe.py --out benchmarks/results/cpu_bf16_probe.json
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from common import DEFAULT_OUT, loadavg, wait_for_quiet, write_json  # noqa: E402


def median_ms(fn, repeats: int = 15) -> float:
    fn(), fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return sorted(times)[len(times) // 2]


def main(argv: list[str] | None = None) -> int:
    from autotune.detect import detect

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT / "cpu_bf16_probe.json",
                        help="the result file (default %(default)s; the committed one is "
                             "benchmarks/results/cpu_bf16_probe.json)")
    parser.add_argument("--max-load", type=float, default=0.5)
    parser.add_argument("--max-wait", type=float, default=600.0)
    args = parser.parse_args(argv)
    load = wait_for_quiet(args.max_load, args.max_wait)
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    x, w = torch.randn(64, 128, 16, 16), torch.randn(128, 128, 3, 3)
    xc, wc = (t.contiguous(memory_format=torch.channels_last) for t in (x, w))
    cases = {
        "matmul 2048x2048 fp32": lambda: a @ b,
        "matmul 2048x2048 bf16": (lambda ab=a.bfloat16(), bb=b.bfloat16(): ab @ bb),
        "conv3x3 64x128x16x16 fp32": lambda: F.conv2d(x, w, padding=1),
        "conv3x3 64x128x16x16 fp32 channels_last": lambda: F.conv2d(xc, wc, padding=1),
        "conv3x3 64x128x16x16 bf16": (lambda xb=x.bfloat16(), wb=w.bfloat16():
                                      F.conv2d(xb, wb, padding=1)),
        "conv3x3 64x128x16x16 bf16 channels_last": (lambda xb=xc.bfloat16(), wb=wc.bfloat16():
                                                    F.conv2d(xb, wb, padding=1)),
    }
    results = {name: median_ms(fn) for name, fn in cases.items()}
    for name, ms in results.items():
        print(f"{name:42s} {ms:8.2f} ms")
    hardware = detect()
    write_json(args.out, {
        "command": " ".join(shlex.quote(v) for v in [sys.executable, *sys.argv]),
        "cpu": hardware.cpu.brand, "cpu_flags": list(hardware.cpu.flags),
        "threads": torch.get_num_threads(), "torch": torch.__version__,
        "loadavg_before": load, "loadavg_after": loadavg(),
        "median_ms": results})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
