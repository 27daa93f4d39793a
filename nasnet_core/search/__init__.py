"""Architecture search (paper section 3): decision spaces, strategies, child training, workqueue, runs."""

from .base import STRATEGIES, Strategy, make_strategy
from .space import SPACE_VARIANTS, DecisionSpace, NASNetSpace, SpaceError, make_space

# isort: off
# Importing a strategy module registers its strategies; this order is STRATEGIES' (and errors') order.
from .strategies import PolicyGradient, Reinforce, RandomSearch  # ppo, reinforce, random
from .evolution import AgingEvolution  # evolution
# isort: on

__all__ = ["DecisionSpace", "NASNetSpace", "SPACE_VARIANTS", "STRATEGIES", "SpaceError", "Strategy",
           "make_space", "make_strategy", "AgingEvolution", "PolicyGradient", "RandomSearch", "Reinforce"]
