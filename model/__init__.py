"""The network: config, layers, decoder, weight I/O and tokenizers."""

from model.config import ConfigError, ModelConfig
from model.llama import Transformer
from model.weights import CheckpointError, load_model, save_model

__all__ = ["ConfigError", "ModelConfig", "Transformer", "CheckpointError", "load_model", "save_model"]
