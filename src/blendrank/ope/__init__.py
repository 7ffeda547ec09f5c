"""Off-policy estimates of a fusion policy's lift over production from logs alone.

Ground floor: imports only numpy, torch, pyarrow and :mod:`blendrank.errors`. See docs/ope.md.
"""

from blendrank.ope.arms import ESTIMATORS, ArmTarget, estimate_arms
from blendrank.ope.data import (
    LoggedRequests,
    PageObjective,
    check_propensity,
    dirichlet_log_density,
    logged_requests_from_table,
    pages_from_weights,
    positions_from_pages,
)
from blendrank.ope.estimators import (
    ImportanceWeights,
    Kernel,
    PerRequestEstimate,
    direct_method,
    item_position_dr,
    item_position_ips,
    item_quantities,
    logged_page_quantities,
    weight_space_ips,
    weight_space_weights,
)
from blendrank.ope.lift import (
    BASE_METRICS,
    Lift,
    Validation,
    metric_defs,
    paired_lifts,
    spearman,
    validate,
)

__all__ = [
    "BASE_METRICS",
    "ESTIMATORS",
    "ArmTarget",
    "ImportanceWeights",
    "Kernel",
    "Lift",
    "LoggedRequests",
    "PageObjective",
    "PerRequestEstimate",
    "Validation",
    "check_propensity",
    "direct_method",
    "dirichlet_log_density",
    "estimate_arms",
    "item_position_dr",
    "item_position_ips",
    "item_quantities",
    "logged_page_quantities",
    "logged_requests_from_table",
    "metric_defs",
    "pages_from_weights",
    "paired_lifts",
    "positions_from_pages",
    "spearman",
    "validate",
    "weight_space_ips",
    "weight_space_weights",
]
