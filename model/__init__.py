"""The network: config, layers, decoder, weight I/O and tokenizers; `load` builds any of our models."""

from model.config import ConfigError, ModelConfig
from model.llama import Transformer
from model.loader import load
from model.weights import CheckpointError, load_model, save_model

__all__ = ["ConfigError", "ModelConfig", "Transformer", "CheckpointError", "load", "load_model", "save_model"]
