"""The ground-truth simulator: synthetic BIDS datasets with known motion and responses.

It may import :mod:`rtserver.core` (the HRF, the atlas definitions) and the shared
definitions, never the reverse: nothing of the live system depends on it.
"""

from rtserver.sim.simulator import simulate_cohort, simulate_subject

__all__ = ["simulate_cohort", "simulate_subject"]
