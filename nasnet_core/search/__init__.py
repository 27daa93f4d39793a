"""Architecture search (paper section 3): decision spaces, strategies, child training, workqueue, runs."""

from .space import SPACE_VARIANTS, DecisionSpace, NASNetSpace, SpaceError, make_space
from .strategies import STRATEGIES, Strategy, make_strategy

__all__ = ["DecisionSpace", "NASNetSpace", "SPACE_VARIANTS", "STRATEGIES", "SpaceError", "Strategy",
           "make_space", "make_strategy"]
