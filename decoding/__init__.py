"""Turning logits into tokens: samplers and the generation loop."""

from decoding.generate import ContextLengthError, GenerationResult, generate
from decoding.sampling import logits_to_probs, sample

__all__ = ["ContextLengthError", "GenerationResult", "generate", "logits_to_probs", "sample"]
