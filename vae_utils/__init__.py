"""vae_utils: the helper package of the book *Compressing images with convolutional variational autoencoders*.

One module per idea, each imported by the chapters that need it:

- ``data``      the embedded MNIST, seeded stratified splits, binarization, tensors, fast batches (Chapter 1)
- ``model``     ConvVAE and the classic FCVAE; checkpoints on disk (Chapter 2)
- ``elbo``      likelihoods, the Gaussian KL, the ELBO, the IWAE bound, nats <-> bits/dim (Chapter 3)
- ``evaluate``  metrics over a dataset: -ELBO, IWAE NLL, PSNR/SSIM, per-class (Chapter 5)
- ``train``     the trainer and ``python -m vae_utils.train`` (Chapter 4)
- ``codec``     real bitstreams: bits-back and lossy coding, the ``.vae`` format, ``python -m vae_utils.codec`` (Chapter 6)
- ``shrink``    the model made small, the compact weight file, integer networks for portable files (Chapter 7)
- ``baselines`` classical codecs and PCA, measured the same way (Chapter 6)
- ``plots``     the figures the chapters share
"""

__version__ = "0.1.0"
