"""Replace-1-block scoring: put one variant into the otherwise intact parent and measure what changes.

The parent's hidden state entering every layer and its next-token log-probabilities on held-out windows are
computed once; scoring a variant of layer ``i`` then runs only the variant, the parent's layers ``i+1..L-1`` and
the head. Scores: ``KL(p_parent ‖ p_child)`` per token (Puzzle's default) and the LM loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from refinery.compression.puzzle.bld import layer_mask, rope, run_layer
from refinery.compression.puzzle.model import final_logits


def kl_parent_child(logp_parent: torch.Tensor, logp_child: torch.Tensor,
                    mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over tokens (those where ``mask`` is True) of ``KL(p_parent ‖ p_child) = Σ_v p_p (log p_p − log p_c)``."""
    kl = (logp_parent.exp() * (logp_parent - logp_child)).sum(-1)
    return kl.mean() if mask is None else kl[mask].mean()


class Scorer:
    """Holds the parent's per-layer inputs and log-probs on held-out windows; scores single-layer swaps."""

    @torch.no_grad()
    def __init__(self, parent, windows: torch.Tensor, batch_size: int = 8, mask: torch.Tensor | None = None):
        from refinery.compression.puzzle.library import collect_stats

        self.parent = parent.eval()
        self.windows = windows
        self.mask = torch.ones_like(windows, dtype=torch.bool) if mask is None else mask
        self.batch_size = batch_size
        stats = collect_stats(parent, windows, batch_size, self.mask, normal_equations=False)
        self.inputs = [s.inputs for s in stats.layers]
        S = windows.shape[1]
        self.pe = rope(parent.config, S)
        self.masks = [layer_mask(parent.config, i, S) for i in range(len(self.inputs))]
        self.ref_logp = self._head(stats.final)
        self.ref_loss = self._lm_loss(self.ref_logp)

    def _head(self, h: torch.Tensor) -> torch.Tensor:
        m = self.parent
        return torch.cat([F.log_softmax(final_logits(m, h[s: s + self.batch_size]).float(), -1)
                          for s in range(0, h.shape[0], self.batch_size)])

    def _lm_loss(self, logp: torch.Tensor) -> float:
        target = self.windows[:, 1:].masked_fill(~self.mask[:, 1:], -100)
        return float(F.nll_loss(logp[:, :-1].reshape(-1, logp.shape[-1]), target.reshape(-1), ignore_index=-100))

    @torch.no_grad()
    def score(self, i: int, layer) -> dict[str, float]:
        """KL and LM loss of the parent with its layer ``i`` replaced by ``layer``."""
        layer.eval()
        kls, logps = [], []
        for s in range(0, self.windows.shape[0], self.batch_size):
            h = run_layer(layer, self.inputs[i][s: s + self.batch_size], self.pe, self.masks[i])
            for j in range(i + 1, len(self.inputs)):
                h = run_layer(self.parent.model.layers[j], h, self.pe, self.masks[j])
            logp = F.log_softmax(final_logits(self.parent, h).float(), -1)
            ref, m = self.ref_logp[s: s + self.batch_size], self.mask[s: s + self.batch_size]
            kls.append(kl_parent_child(ref, logp, m) * int(m.sum()))
            logps.append(logp)
        kl = float(sum(kls) / int(self.mask.sum()))
        return {"kl": max(kl, 0.0), "lm_loss": self._lm_loss(torch.cat(logps))}
