"""Architecture search (paper section 3): decision spaces, strategies, child training, workqueue, runs."""

from .base import STRATEGIES, Strategy, make_strategy
from .evolution import AgingEvolution  # registers evolution  # noqa: I001
from .space import SPACE_VARIANTS, DecisionSpace, NASNetSpace, SpaceError, make_space
from .strategies import PolicyGradient, RandomSearch, Reinforce  # registers ppo, reinforce, random

__all__ = ["DecisionSpace", "NASNetSpace", "SPACE_VARIANTS", "STRATEGIES", "SpaceError", "Strategy",
           "make_space", "make_strategy", "AgingEvolution", "PolicyGradient", "RandomSearch", "Reinforce"]
