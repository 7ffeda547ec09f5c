"""IntegratedRL-MTF / UnifiedRL (Liu et al., arXiv 2404.17589): session-MDP offline actor-critic
with bounded exploration and progressive training, reconstructed for the marketplace world."""

from blendrank.algos.integrated_rl.config import IntegratedRLConfig
from blendrank.algos.integrated_rl.trainer import IntegratedRLPolicy, fit_integrated_rl

__all__ = ["IntegratedRLConfig", "IntegratedRLPolicy", "fit_integrated_rl"]
