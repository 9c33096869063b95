"""The user's workload as autotune sees it: loaders, batches, and how a
batch becomes a loss."""
