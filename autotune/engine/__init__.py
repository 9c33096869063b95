"""The shared training engine: the step, the epoch loop, checkpoints and history."""
