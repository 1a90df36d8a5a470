"""Post-training quantization of a built model: `quantize(model, method, calib, **opts)`.

The model stays pure: quantization swaps its Linear layers after it is built (or loaded) and
never touches model/. quant/quantize.py holds the method registry and the checkpoint formats;
one module per method (rtn, gptq, awq, smoothquant, rotation) and per layer kind (qlinear, int8).
"""

from quant.int8 import Int8WeightOnlyLinear, dequantize_int8, quantize_int8_per_channel
from quant.qlinear import FP8Linear, QuantLinear
from quant.quantize import (FORMAT_VERSION, METHODS, checkpoint_format, load_quantized, quantization_config,
                            quantize, save_quantized)
from quant.rtn import QuantizationError

__all__ = [
    "FORMAT_VERSION",
    "FP8Linear",
    "METHODS",
    "Int8WeightOnlyLinear",
    "QuantLinear",
    "QuantizationError",
    "checkpoint_format",
    "dequantize_int8",
    "load_quantized",
    "quantization_config",
    "quantize",
    "quantize_int8_per_channel",
    "save_quantized",
]
