"""Real bitstreams from a VAE: lossless bits-back coding, a lossy codec of quantized latents, the ``.vae`` file
format and ``python -m vae_utils.codec`` (Chapter 6).

**Lossless (bits-back with ANS, Townsend et al. 2019).** Each latent dimension is cut into ``2**latent_bits``
buckets of equal mass under the N(0, 1) prior (:func:`latent_grid`), so p(z) is uniform over the buckets:
exactly ``latent_bits`` bits per dimension. q(z | x) over the same buckets is the posterior Gaussian's mass in
each (:func:`posterior_bucket_probs`). To push one image (:func:`push_image`): *pop* a bucket per dimension
with q(z | x) (this reads bits already on the stack), push x with p(x | z) (Bernoulli per pixel, or the
256-level pmf of the discretized logistic mixture), push z with p(z). Popping an image (:func:`pop_image`) runs
the same steps backwards and puts q's bits back. Net cost per image: -log p(x | z) - log p(z) + log q(z | x),
the (discretized) -ELBO. All images of a file share one stream.

Two details keep the real rate at the -ELBO:

- *Whitened latents.* The bits the next image pops are those of the z just pushed, and z ~ q(z | x) is not
  uniform over the buckets unless the aggregate posterior is the prior: popping from them draws z biased
  towards the previous image's posterior. (A small ConvVAE trained for 100 steps then codes 1.8% above its
  -ELBO.) So each bucket index is pushed plus a pseudo-random offset modulo ``2**latent_bits``
  (:func:`latent_mask`, known to both sides): still exactly ``latent_bits`` bits under the uniform prior, and
  uniform bits for the next pop (the same model: -0.1%, within the noise).
- *Windowed posteriors.* constriction gives every entry of a probability table at least 2**-24, so a table
  over all ``2**latent_bits`` buckets leaks mass into the far tails of a narrow q, and a z drawn there costs
  many bits. q is coded over the buckets within :data:`WINDOW_SIGMAS` standard deviations of its mean.
  (Without the window, the book's binarized VAE codes 2.8% above its -ELBO at 16 bits.)

*Initial bits.* The first pop needs bits on the stack. The coder starts from ``latent_dim + 8`` pseudo-random
32-bit words that both sides derive from the header (sha256 of its fields, so the final state also checks the
header against the payload). The bottom words of that seed are never touched; they are left out of the file
(``stripped`` words) and the decoder puts them back. What remains, the bits the first image borrowed and could
not return, is :attr:`Compressed.initial_bits`: paid once per file, so it amortizes over the images
(:attr:`Compressed.bits_per_image_first_n`). Decoding must end in exactly the seed, or the file is rejected.

**Lossy.** ``s = round(mu / step)`` per latent dimension (clamped to ``-R..R``, ``R = ceil(8 / step)``), coded
under the prior mass of each bin ``[(s - 1/2) step, (s + 1/2) step]`` (constriction's ``QuantizedGaussian``
with mean 0 and std ``1 / step``); the decoder's mean E[x | z = s * step] is the reconstruction, as ``uint8``
``round(255 * mean)`` (for a Bernoulli model: the grey-level probability image). Larger steps, fewer bytes,
lower PSNR: :func:`rate_distortion`. The stream starts from 2 check words, which decoding must restore.

**Determinism.** Encoder and decoder must compute bit-identical probabilities. Every model call sees one image
(batch composition changes float results), on the CPU, in float32, with one torch thread (the thread count
can change the order of float sums), and probabilities go to constriction as float64. A lossless file is
therefore only guaranteed to decode on the same kind of machine with the same torch, numpy and constriction
versions; a lossy file always decodes to the same latents, though a reconstruction may differ by a grey level.

**Model identity.** :func:`model_id`: sha256 over the model class, its config and every ``state_dict`` tensor
(name, dtype, shape, bytes) in sorted order; the header stores the first 16 bytes. Weights, not checkpoint
bytes: the same weights saved twice (other metadata, another torch) keep their id.

**Integer arithmetic (Chapter 7).** Given an integer model (:func:`vae_utils.shrink.integer_model`: int8
weights, integer activations and lookup tables, float64 products proved exact), :func:`compress` writes a
version 2 file whose probabilities are integers over a power of two, the same on every machine, thread count,
batch size and device: it decodes bit for bit anywhere (:mod:`vae_utils.codec.portable`). Because the results
do not depend on the batch, lossless images are spread over several ANS stacks (*lanes*) and the networks run
on one image of every lane per call; each lane pays its own initial bits. A lossy file needs only the decoder:
its model id covers the decoder alone.

**File format, version 1** (integers little-endian):

======  =====  ===========================================================================================
offset  bytes  field
======  =====  ===========================================================================================
0       4      magic ``b"VAEC"``
4       1      format version (1)
5       1      mode: 0 lossless-binary, 1 lossless-8bit, 2 lossy
6       16     model id (first 16 bytes of :func:`model_id`)
22      4      image count N (u32), 1 .. :data:`MAX_IMAGES`
26      2      height (u16), 28
28      2      width (u16), 28
30      12     lossless: latent_bits (u8), 3 zero bytes, seed words (u32), stripped seed words (u32);
               lossy: step (f64), symbol range R (u32)
42      4      payload length P in bytes (u32, a multiple of 4)
46      P      payload: the ANS stack as u32 words, bottom first
46+P    4      CRC-32 (zlib) of bytes 0 .. 46+P-1
======  =====  ===========================================================================================

**File format, version 2.** Written for integer files (and for modes added later); float files of the three
modes above are still written as version 1, byte for byte, and both versions are read.

======  =====  ===========================================================================================
offset  bytes  field
======  =====  ===========================================================================================
0       4      magic ``b"VAEC"``
4       1      format version (2)
5       1      mode: an index into :data:`MODES`, a table that grows (0 lossless-binary, 1 lossless-8bit,
               2 lossy, 3 lossless-binary-deep, 4 lossless-8bit-deep; a later mode takes the next index)
6       1      arithmetic: an index into :data:`ARITHMETICS` (0 float, 1 integer)
7       1      zero
8       16     model id (lossy integer files: of the decoder alone)
24      4      image count N (u32), 1 .. :data:`MAX_IMAGES`
28      2      height (u16), 28
30      2      width (u16), 28
32      2      parameter block length L (u16, at most :data:`MAX_PARAMS_BYTES`)
34      L      the mode's parameters. lossless: latent_bits (u8), lanes K (u8, 1 .. :data:`MAX_LANES`), 2 zero
               bytes, seed words (u32), then per lane: stripped seed words (u32), payload words (u32);
               lossy: step (f64), symbol range R (u32); -deep: latent_bits (u8), order (u8, an index
               into :data:`DEEP_ORDERS`), latent layers (u8, 2 .. :data:`MAX_LAYERS`), a zero byte, seed
               words (u32), stripped seed words (u32). A new mode defines its own block.
34+L    4      payload length P in bytes (u32, a multiple of 4)
38+L    P      payload: the lanes' ANS stacks one after the other, each as u32 words, bottom first
38+L+P  4      CRC-32 (zlib) of everything before
======  =====  ===========================================================================================

The ``-deep`` modes (Chapter 8) code a model with a learned prior or several latent layers on one stack, in
float arithmetic, with :mod:`vae_utils.codec.hierarchy` in the Bit-Swap or the BB-ANS order; only the first
image's pops of the bottom layer (Bit-Swap) or of every layer (BB-ANS) borrow initial bits.

Lane ``j`` holds images ``j N / K`` to ``(j + 1) N / K - 1`` and starts from its own initial words (the header's
fields with the lane index). An integer lossy file codes its symbols under the prior's bin masses from the
integer normal CDF (not constriction's float ``QuantizedGaussian``), so that the stream is portable too.

:func:`read_header` checks magic, version, lengths and the CRC before anything else runs, and every failure,
including one inside constriction or numpy, is a :class:`CodecError` (a ``ValueError``). The image count is
capped at :data:`MAX_IMAGES` and the payload must be exactly the bytes present, so a hostile header cannot
make the reader allocate more than ~80 MB. Decoding checks the stack never drops below the level the encoder
reached and must end in exactly the initial words.
"""

from __future__ import annotations

from vae_utils.codec.bitsback import latent_grid, latent_mask, pop_image, posterior_bucket_probs, push_image
from vae_utils.codec.cli import CHECKPOINTS, DEFAULT_CHECKPOINTS, PROGRESS_THRESHOLD, build_parser, load_images, main
from vae_utils.codec.files import RD_STEPS, compress, decompress, rate_distortion
from vae_utils.codec.format import (
    ARITHMETICS,
    DEEP_ORDERS,
    DEFAULT_LATENT_BITS,
    DEFAULT_STEP,
    FORMAT_VERSION,
    HEADER_BYTES,
    LATENT_BITS_RANGE,
    LOSSY_CHECK_WORDS,
    MAGIC,
    MAX_IMAGES,
    MAX_LANES,
    MAX_LAYERS,
    MAX_PARAMS_BYTES,
    MAX_SEED_WORDS,
    MODES,
    READABLE_VERSIONS,
    STEP_RANGE,
    WINDOW_SIGMAS,
    CodecError,
    Compressed,
    Header,
    initial_words,
    model_id,
    read_header,
)
from vae_utils.codec.lossy import lossy_reconstruct, lossy_symbols

__all__ = [
    "ARITHMETICS",
    "DEEP_ORDERS",
    "MAX_LAYERS",
    "CHECKPOINTS",
    "DEFAULT_CHECKPOINTS",
    "DEFAULT_LATENT_BITS",
    "DEFAULT_STEP",
    "FORMAT_VERSION",
    "HEADER_BYTES",
    "LATENT_BITS_RANGE",
    "LOSSY_CHECK_WORDS",
    "MAGIC",
    "MAX_IMAGES",
    "MAX_LANES",
    "MAX_PARAMS_BYTES",
    "MAX_SEED_WORDS",
    "MODES",
    "PROGRESS_THRESHOLD",
    "RD_STEPS",
    "READABLE_VERSIONS",
    "STEP_RANGE",
    "WINDOW_SIGMAS",
    "CodecError",
    "Compressed",
    "Header",
    "build_parser",
    "compress",
    "decompress",
    "initial_words",
    "latent_grid",
    "latent_mask",
    "load_images",
    "lossy_reconstruct",
    "lossy_symbols",
    "main",
    "model_id",
    "pop_image",
    "posterior_bucket_probs",
    "push_image",
    "rate_distortion",
    "read_header",
]
