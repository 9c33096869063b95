"""The shared training engine, one module per job: :mod:`~autotune.engine.engine`
(the step, epochs, evaluation, checkpoints: ``Engine``),
:mod:`~autotune.engine.host` (what its plugins use of it, and their set-up),
:mod:`~autotune.engine.hooks` (how it calls their hooks),
:mod:`~autotune.engine.loop` (the loops behind ``fit`` and ``evaluate``, on
public methods only), :mod:`~autotune.engine.workers` (loader workers that
die), :mod:`~autotune.engine.checkpoint`, :mod:`~autotune.engine.history`
(per-epoch metrics) and :mod:`~autotune.engine.step` (what its events
exchange: monitors, recoveries, live adapters)."""
