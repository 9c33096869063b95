"""Do bf16 kernels beat fp32 ones on this CPU?  Times one matmul and one
convolution in fp32 and in bf16 (contiguous and channels_last). A CPU that
reports avx512_bf16 may or may not run oneDNN's bf16 kernels faster than
fp32 (it depends on the microarchitecture and on AMX); this probe is the
evidence behind the tuner's bf16 trials on the machine it ran on.

    python benchmarks/bf16_probe.py      # writes runs/benchmarks/cpu_bf16_probe.json
    python benchmarks/bf16_probe.py --out benchmarks/results/cpu_bf16_probe.json

It has no target of its own (it measures; the tuner decides), so it exits 0
whatever it finds. Where bf16 has no native kernels one bf16 matmul can
take a minute (61 s on the 2-core EPYC without AVX512-BF16): --repeats
lowers the count of timed calls (two untimed warm-up calls come first).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from common import DEFAULT_OUT, provenance, utc_now, wait_for_quiet, write_json  # noqa: E402


def median_ms(fn, repeats: int = 15) -> float:
    fn(), fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return sorted(times)[len(times) // 2]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT / "cpu_bf16_probe.json",
                        help="the result file (default %(default)s; the committed one is "
                             "benchmarks/results/cpu_bf16_probe.json)")
    parser.add_argument("--max-load", type=float, default=0.5)
    parser.add_argument("--max-wait", type=float, default=600.0)
    parser.add_argument("--repeats", type=int, default=15,
                        help="timed calls per case, median kept (default %(default)s)")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    load = wait_for_quiet(args.max_load, args.max_wait)
    started = utc_now()
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
    results = {}
    for name, fn in cases.items():
        results[name] = median_ms(fn, args.repeats)
        print(f"{name:42s} {results[name]:8.2f} ms", flush=True)
    write_json(args.out, {
        **provenance(sys.argv if argv is None else [__file__, *argv], date=started,
                     load_before=load),
        "threads": torch.get_num_threads(), "repeats": args.repeats,
        "median_ms": results})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
