"""Hardware profiles: YAML data that says which machines they fit and what
each plugin should prefer there.

A profile file::

    name: rtx5080_7950x
    description: RTX 5080 16 GB + Ryzen 9 7950X
    extends: generic_cuda          # optional; merged first, this file wins
    priority: 0                    # optional tie-breaker between equal matches
    match:                         # every rule must hold
      gpu_name: "RTX 5080"
      cpu_brand: "7950X"
    plugins:
      dataloader: {num_workers: [10, 18], prefetch_factor: [6, 8]}
      compile: {enabled: false}    # loaded, proposes nothing

Matching follows Linux tuned's ``recommend``: every rule of a profile must
hold; among the profiles that match, the one with the most rules (after
``extends`` merging) wins, then the higher ``priority``, then the name. Each
profile's verdict is explained rule by rule.

One job a module: :mod:`~autotune.profile.model` (the ``Profile`` record),
:mod:`~autotune.profile.match` (rules and the recommendation),
:mod:`~autotune.profile.yaml_safe` (reading hostile YAML safely),
:mod:`~autotune.profile.schema` (the envelope, and each plugin's section as
the plugin layer describes it), :mod:`~autotune.profile.load` (the search
path, ``extends``). This package sits below the plugin layer: what a
plugin's section may hold is passed in (``options=``), never looked up.
"""

from __future__ import annotations

from autotune.profile.load import (PROFILE_PATH_ENV, builtin_profile_dir, get_profile,
                                   load_file, load_profiles, profile_dirs)
from autotune.profile.match import (MATCH_RULES, MatchResult, Recommendation, RuleVerdict,
                                    explain, recommend)
from autotune.profile.model import RESERVED_PLUGIN_KEYS, Profile, merge
from autotune.profile.schema import (PluginOptions, profile_schema, schema_path,
                                     section_schema, validate)
from autotune.profile.yaml_safe import MAX_DEPTH, MAX_PROFILE_BYTES, MAX_VALUES, read_document

__all__ = [
    "MATCH_RULES", "MAX_DEPTH", "MAX_PROFILE_BYTES", "MAX_VALUES", "PROFILE_PATH_ENV",
    "RESERVED_PLUGIN_KEYS", "MatchResult", "PluginOptions", "Profile", "Recommendation",
    "RuleVerdict", "builtin_profile_dir", "explain", "get_profile", "load_file",
    "load_profiles", "merge", "profile_dirs", "profile_schema", "read_document", "recommend",
    "schema_path", "section_schema", "validate",
]
