"""Bridges from an autotune plan to the trainers users already have.

``autotune.apply(model, loader)`` makes the plan and rebuilds the loader;
a bridge turns the rest of the plan into what a trainer takes natively,
and states in one line each planned setting it cannot apply:

* :mod:`autotune.bridges.lightning` -- ``trainer_kwargs(tuned)`` for
  ``lightning.Trainer`` and ``AutotuneCallback(tuned)``;
* :mod:`autotune.bridges.huggingface` -- ``training_arguments(tuned)`` for
  ``transformers.TrainingArguments`` and ``AutotuneTrainerCallback(tuned)``;
* :mod:`autotune.bridges.accelerate` -- ``accelerator_kwargs(tuned)`` for
  ``accelerate.Accelerator``.

Each imports its framework only when it needs it, so ``import autotune``
(and this package) never does. Each logs, on ``autotune.bridges.<name>``,
one INFO line per setting it applies and one WARNING line per setting it
cannot; nothing is printed.

What they share lives beside them: :mod:`autotune.bridges.translate`, the
table a bridge is written as (a :class:`~autotune.bridges.translate.Row`
per planned setting: the framework's option, how the value converts, the
line when it cannot be applied) and the walk over it, starting from which
planned settings differ from PyTorch's behaviour (:func:`changes`); and
:mod:`autotune.bridges.callbacks`: :class:`Runtime`, the part no trainer
option covers -- thread counts and channels_last inputs -- which the
callbacks start and stop and :func:`runtime` offers as a ``with`` block for
a loop of one's own (Accelerate), and the one helper both callbacks are
made with.
"""

from __future__ import annotations

from autotune.bridges.callbacks import Runtime, runtime
from autotune.bridges.translate import Change, changes, describe, device_type, report

__all__ = ["Change", "Runtime", "changes", "describe", "device_type", "report", "runtime"]
