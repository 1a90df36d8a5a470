"""Post-training quantization of a built model: `quantize(model, method=...)`.

The model stays pure: quantization swaps its Linear layers after it is built (or
loaded) and never touches model/. See quant/quantize.py for the method registry and
the checkpoint format.
"""

from quant.int8 import Int8WeightOnlyLinear, dequantize_int8, quantize_int8_per_channel
from quant.quantize import (FORMAT_VERSION, METHODS, QuantizationError, load_quantized, quantize,
                            save_quantized)

__all__ = [
    "FORMAT_VERSION",
    "METHODS",
    "Int8WeightOnlyLinear",
    "QuantizationError",
    "dequantize_int8",
    "load_quantized",
    "quantize",
    "quantize_int8_per_channel",
    "save_quantized",
]
