"""PPO's pure pieces: rewards and advantages, losses, the KL coefficient, score normalisation.

Each piece is a small function or class over torch tensors with its shapes in the docstring;
the PPO stage (``alignlab/stages/ppo.py``) composes them, and a researcher can swap any one.
"""

from alignlab.rl.advantages import (
    ADVANTAGE_ESTIMATORS,
    AdvantageEstimator,
    AdvantageFn,
    compute_gae,
    compute_reinforce,
    get_advantage_estimator,
    last_token_index,
    per_token_rewards,
    register_advantage_estimator,
)
from alignlab.rl.kl import (
    AdaptiveKLController,
    FixedKLController,
    KLControl,
    KLController,
    KLEstimator,
    make_kl_controller,
)
from alignlab.rl.losses import (
    entropy_from_logits,
    explained_variance,
    logprobs_from_logits,
    masked_entropy,
    policy_loss,
    value_loss,
)
from alignlab.rl.masked import masked_mean, masked_var, masked_whiten
from alignlab.rl.normalization import (
    RewardNormalization,
    RunningMoments,
    normalize_scores,
    score_moments_from_metrics,
)

__all__ = [
    "ADVANTAGE_ESTIMATORS",
    "AdaptiveKLController",
    "AdvantageEstimator",
    "AdvantageFn",
    "FixedKLController",
    "KLControl",
    "KLController",
    "KLEstimator",
    "RewardNormalization",
    "RunningMoments",
    "compute_gae",
    "compute_reinforce",
    "entropy_from_logits",
    "explained_variance",
    "get_advantage_estimator",
    "last_token_index",
    "logprobs_from_logits",
    "make_kl_controller",
    "masked_entropy",
    "masked_mean",
    "masked_var",
    "masked_whiten",
    "normalize_scores",
    "per_token_rewards",
    "policy_loss",
    "register_advantage_estimator",
    "score_moments_from_metrics",
    "value_loss",
]
