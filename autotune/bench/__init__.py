"""``autotune bench``: built-in workloads, PyTorch defaults vs tuned vs the
best of the grid, measured on this machine."""
