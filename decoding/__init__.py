"""Turning logits into tokens: samplers and the generation loop."""

from decoding.generate import ContextLengthError, GenerationResult, NonFiniteLogitsError, generate
from decoding.sampling import logits_to_probs, sample

__all__ = ["ContextLengthError", "GenerationResult", "NonFiniteLogitsError", "generate", "logits_to_probs", "sample"]
