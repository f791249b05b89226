"""vae_utils: the helper package of the book *Compressing images with convolutional variational autoencoders*.

One module per idea, imported by the chapters: ``data`` (Chapter 1). Later chapters add ``model``, ``elbo``,
``train``, ``evaluate``, ``codec``, ``baselines`` and ``plots``.
"""

__version__ = "0.1.0"
