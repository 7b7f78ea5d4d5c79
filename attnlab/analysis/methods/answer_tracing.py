"""Logit lens / answer tracing: in which layer does the answer emerge?

"Anchored Answers: Unravelling Positional Bias in GPT-2's Multiple-Choice Questions" (Li and
Gao, arXiv 2405.03205) decodes every layer's residual stream with the logit lens to trace where
the (biased) answer takes over. ``answer_emergence`` returns, per layer, the answer's
log-probability and rank under the lens, and the first layer from which it stays top-1.
Departure: the paper also traces individual MLP value vectors; DLA per head / MLP
(``attnlab.analysis.lens.direct_logit_attribution``) covers the component view.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from attnlab.analysis import lens

PAPER = ("Anchored Answers: Unravelling Positional Bias in GPT-2's Multiple-Choice Questions "
         "(arXiv 2405.03205)")


def answer_emergence(model: Any, tokens: Any, answers: Any, *,
                     position: int = -1) -> dict[str, Any]:
  """``{"logprob": [L+1, B], "rank": [L+1, B], "first_top1": [B]}``: row 0 decodes the
  embeddings, row ``l + 1`` layer ``l``'s output; ``first_top1`` is the first row from which
  the answer stays rank 0 (``L + 1`` if it never is top-1 at the output)."""
  out = lens.answer_trace(model, tokens, np.asarray(answers), position=position)
  rank = np.asarray(out["rank"])
  top = rank == 0
  rows = top.shape[0]
  first = np.full(top.shape[1], rows, np.int32)
  for b in range(top.shape[1]):
    for r in range(rows - 1, -1, -1):
      if not top[r, b]:
        break
      first[b] = r
  return {"logprob": np.asarray(out["logprob"]), "rank": rank, "first_top1": first}
