"""The model made small, and files that decode the same on every machine (Chapter 7).

- :mod:`~vae_utils.shrink.quantize`   float16/bfloat16 weights, int8 (int4) per output channel, magnitude pruning
  with ``torch.nn.utils.prune`` and a fine-tune through the book's ``Trainer``
- :mod:`~vae_utils.shrink.weightfile` the compact, checked weight file (``.vaew``): the receiver's bill in bytes
- :mod:`~vae_utils.shrink.integer`    integer networks (int8 weights, integer activations and tables) whose
  probabilities are the same on every machine: ``codec.compress(integer_model(...), ...)`` writes portable files
- :mod:`~vae_utils.shrink.tables`     the integer lookup tables, built with Python integers only
"""

from vae_utils.shrink.integer import IntegerVAE, integer_model, latent_grid_int, posterior_windows, quantize_per_channel
from vae_utils.shrink.quantize import (
    cast_weights,
    dequantize,
    fine_tune,
    finish_pruning,
    prune_weights,
    quantize_weights,
    sparsity,
    weighted_layers,
)
from vae_utils.shrink.weightfile import WeightFileError, bytes_by_part, load_weights, save_weights, weight_file_bytes

__all__ = [
    "IntegerVAE", "WeightFileError", "bytes_by_part", "cast_weights", "dequantize", "fine_tune", "finish_pruning", "integer_model",
    "latent_grid_int", "load_weights", "posterior_windows", "prune_weights", "quantize_per_channel",
    "quantize_weights", "save_weights", "sparsity", "weight_file_bytes", "weighted_layers",
]
