"""Merging adapters: pure functions on state dicts, one registry keyed by method name.

A method is an alignment (none, ot-wts, ot-acts) followed by a reduction (sum, avg, ta,
ties, dare-linear, dare-ties). MerA's four are mera-sum (none, sum), mera-avg (none, avg),
mera-wts (ot-wts, avg) and mera-acts (ot-acts, avg); the rest are named after their
reduction, prefixed `ot-` (weights) or `ot-acts-` when aligned: ties, ot-ties, ot-acts-ties.

The registry and parameter checks (mera.merge.methods) import no torch;
`mera.merge.core.merge(name, states, **params)` runs a method and returns the merged state
and diagnostics.
"""

from mera.merge.methods import (
    CALIB_PARAMS,
    METHODS,
    OT_PARAMS,
    MergeError,
    MergeMethod,
    check_params,
    get_method,
    not_applicable,
    validate,
)

__all__ = ["CALIB_PARAMS", "METHODS", "OT_PARAMS", "MergeError", "MergeMethod", "check_params", "get_method",
           "not_applicable", "validate"]
