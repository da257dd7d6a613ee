"""Decoding: what a generation call does (plan.py: HF's resolution of the config), the
per-row logits processors (processors.py), sampling (sampling.py), and the steps as
small functions over a shared state (state.py): greedy and sampling (greedy.py), beam
search with its cache reorder (beam.py), and finished slots as candidates (results.py).
"""

from .beam import beam_step
from .greedy import token_step
from .plan import DecodingPlan, fit_positions, resolve_decoding_plan
from .processors import Unsupported, processors_to
from .results import collect
from .sampling import GumbelSampler, row_stream_key
from .state import DecodeState, Decoding

__all__ = [
    "DecodeState",
    "Decoding",
    "GumbelSampler",
    "DecodingPlan",
    "Unsupported",
    "beam_step",
    "collect",
    "fit_positions",
    "processors_to",
    "resolve_decoding_plan",
    "row_stream_key",
    "token_step",
]
