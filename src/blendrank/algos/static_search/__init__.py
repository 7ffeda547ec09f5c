"""``static_search`` baseline: one global fusion weight vector on the simplex (SPEC §5)."""

from blendrank.algos.static_search.config import METHODS, StaticSearchConfig
from blendrank.algos.static_search.objectives import offline_ndcg_objective
from blendrank.algos.static_search.search import SearchResult, search_weights, to_simplex

__all__ = [
    "METHODS",
    "SearchResult",
    "StaticSearchConfig",
    "offline_ndcg_objective",
    "search_weights",
    "to_simplex",
]
