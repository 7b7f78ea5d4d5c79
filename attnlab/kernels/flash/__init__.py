"""Pallas flash attention: softmax (FlashAttention-2) and sigmoid (FlashSigmoid), fwd + bwd.

Papers:

* "FlashAttention-2: Faster Attention with Better Parallelism and Work Partitioning"
  (Dao, arXiv 2307.08691): the forward keeps a float32 running max ``m``, sum ``l`` and an
  unnormalised output per query block, rescales once at the end and saves only the
  log-sum-exp; the backward recomputes each tile's probabilities from it, with
  ``delta = rowsum(dO * O)``, one kernel for dq (parallel over q blocks) and one for dk/dv
  (parallel over k blocks), so no atomics are needed.
* "Theory, Analysis, and Best Practices for Sigmoid Self-Attention" (Ramapuram et al.,
  arXiv 2409.04431), FlashSigmoid: ``out = sigmoid(q k^T * scale + b) v`` with
  ``b = -log(kv_len)`` by default. There are no row statistics: the forward is a plain sum of
  ``sigmoid(s) v`` over tiles and the backward uses ``ds = dP * p * (1 - p)``.

How this implementation maps onto the papers, and where it departs from them:

* The tile loop visits only the tiles that the mask's block summary
  (``attnlab.masks``, EMPTY / PARTIAL / FULL) does not mark EMPTY, through a per-row table of
  tile indices with FULL tiles first (no elementwise mask) and PARTIAL tiles after (mask
  evaluated in-kernel from iotas, see ``masks``). The table is per batch element when the mask
  is data dependent (segment ids, lengths) and shared otherwise; the number of grid steps on
  TPU is the static maximum row count when the summary is static.
* Exponentials are base 2 (``exp2``) with ``log2(e)`` folded into the scale (as the Triton
  FlashAttention kernels do); the saved log-sum-exp is in base 2. A query row with no visible
  key returns zeros (attnlab's contract; the paper leaves it undefined).
* Extras applied to the logits inside the kernel, in attnlab's order: soft-capping
  ``c * tanh(s / c)`` (Gemma 2), the additive bias (any broadcast of ``[B, H, Tq, Tk]``),
  ALiBi ``-slope * |q_pos + q_offset - k_pos|`` computed from iotas (slopes never materialised
  as a bias), then the mask. Head masks scale each head's output outside the kernel.
* GQA / MQA: query head ``h`` reads kv head ``h // G`` through the K/V ``index_map``; the dk/dv
  kernel runs per kv head and loops over the ``G`` query heads of its group, so repeated K/V is
  never materialised (nor are per-query-head dk/dv).
* Bias gradients (only computed when the bias is differentiated, detected with custom_vjp
  symbolic zeros): ``dS`` tiles for a full-resolution bias, row sums for a bias broadcast over
  keys, column sums for one broadcast over queries, reduced over broadcast batch/heads in XLA.
  ALiBi slopes, scale and soft-cap get no gradient (as in ``attnlab.chunked_attention``).
* Sequence lengths are padded to whole blocks; the ragged last key block is always treated as
  PARTIAL (keys past ``kv_len`` masked); padded query rows are computed and dropped, and
  their zero output cotangent makes their backward contribution exactly zero.
* The sigmoid forward on GPU with 16-bit inputs uses ``sigmoid(x) = (1 + tanh(x / 2)) / 2``
  with the hardware ``tanh.approx`` (the FlashSigmoid paper's trick); float32 inputs and
  interpret mode use the exact formula.

Modules, from the entry point down:

* ``api``: ``flash_attention`` (custom_vjp), ``flash_softmax_attention``,
  ``flash_sigmoid_attention``; registers the "pallas" implementations.
* ``support``: ``unsupported_reason``, supported dtypes / head dims / drivers, defaults.
* ``autotune``: tile sizes and launch parameters per device (on-disk cache, measuring).
* ``masks``: masks compiled into in-kernel programs. ``tables``: tile states and tables.
* ``forward``: the forward kernel. ``backward``: the dq and dk/dv kernels.
* ``tile_math``: per-tile logits, masking, probabilities and gradients.
* ``operands``: operand roles -> BlockSpecs / in-kernel slices, the ``pallas_call`` assembly.
* ``config``: the static ``Config`` of a call, ``Operand``, ``Coords``.
* Drivers (``kernel_backend``): ``triton`` (GPU; also the CPU interpret default) and
  ``mosaic_tpu`` ("mosaic": TPU; tested on CPU in TPU interpret mode).
"""

from attnlab.kernels.flash.api import (flash_attention, flash_sigmoid_attention,
                                       flash_softmax_attention)
from attnlab.kernels.flash.support import (BACKENDS, SUPPORTED_DTYPES, SUPPORTED_HEAD_DIMS,
                                           unsupported_reason)
from attnlab.kernels.flash.tables import build_table, table_layout, tile_states

__all__ = [
    "flash_attention", "flash_softmax_attention", "flash_sigmoid_attention",
    "unsupported_reason", "tile_states", "build_table", "table_layout", "BACKENDS",
    "SUPPORTED_DTYPES", "SUPPORTED_HEAD_DIMS",
]
