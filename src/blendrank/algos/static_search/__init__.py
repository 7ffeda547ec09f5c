"""``static_search``: one global fusion weight vector on the simplex (docs/static_search.md)."""

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
