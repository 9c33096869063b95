"""The parts of the GPU session (``benchmarks/run_gpu.py``) that are not its
command line: ``workloads`` (the four workloads and their smoke-sized
variants) and ``contenders`` (the child process that times PyTorch defaults,
``autotune.apply`` and the peer's pick). A package, not scripts beside
``run_gpu.py``: every ``benchmarks/*.py`` but ``common.py`` is a script."""
