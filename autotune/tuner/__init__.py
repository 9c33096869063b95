"""Measured tuning: trials on the user's own model and DataLoader.

``tune(...)`` measures PyTorch defaults and the candidate plans plugins
offer, and returns the plan with the fastest settings as source
``measured``; :func:`find_batch_size` finds the largest micro-batch that
fits. See docs/tuning.md (its last section maps the modules).
"""

from autotune.tuner.batch_size import BatchSizeResult, find_batch_size
from autotune.tuner.candidates import Config
from autotune.tuner.online_report import OnlineReport
from autotune.tuner.online_setup import OnlineTuning
from autotune.tuner.options import OnlineOptions, SearchOptions, TrialOptions
from autotune.tuner.records import Measurement, Status, Trial
from autotune.tuner.report import TuningReport
from autotune.tuner.tuning import DEFAULT_BUDGET_S, TuningResult, tune

__all__ = ["BatchSizeResult", "Config", "DEFAULT_BUDGET_S", "Measurement", "OnlineOptions",
           "OnlineReport", "OnlineTuning", "SearchOptions",
           "Status", "Trial", "TrialOptions", "TuningReport", "TuningResult", "find_batch_size",
           "tune"]
