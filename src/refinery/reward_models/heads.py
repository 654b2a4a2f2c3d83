"""The ArmoRM head: ridge objectives, verbosity decorrelation and the gating network over a backbone's hidden
states. Its own module so loading a reward model (``model.py``) and training one (``armo.py``) both import it
without importing each other."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from refinery.errors import CheckpointError


class ArmoHead(nn.Module):
    """Ridge objectives (frozen buffers), decorrelation lambdas, and the gating network (trainable)."""

    def __init__(self, hidden_size: int, objectives: list[str], verbosity: str, gate_hidden: int = 256,
                 gate_layers: int = 3, dropout: float = 0.2, temperature: float = 10.0):
        super().__init__()
        k = len(objectives)
        self.config = dict(hidden_size=hidden_size, objectives=list(objectives), verbosity=verbosity,
                           gate_hidden=gate_hidden, gate_layers=gate_layers, dropout=dropout,
                           temperature=temperature)
        self.objectives, self.verbosity_index = list(objectives), objectives.index(verbosity)
        self.register_buffer("weight", torch.zeros(k, hidden_size))
        self.register_buffer("bias", torch.zeros(k))
        self.register_buffer("lambdas", torch.zeros(k))
        layers: list[nn.Module] = []
        width = hidden_size
        for _ in range(gate_layers):
            layers += [nn.Linear(width, gate_hidden), nn.ReLU(), nn.Dropout(dropout)]
            width = gate_hidden
        layers.append(nn.Linear(width, k))
        self.gate = nn.Sequential(*layers)
        self.beta = nn.Parameter(torch.tensor(1.0))  # learnable scale of the mixed reward
        self.temperature = temperature

    def raw(self, h_last: torch.Tensor) -> torch.Tensor:
        """``[N, k]`` per-objective rewards from the ridge heads."""
        return h_last @ self.weight.T + self.bias

    def decorrelate(self, r: torch.Tensor) -> torch.Tensor:
        """``r'_i = r_i - lambda_i · r_verbosity`` (lambda of the verbosity objective itself is 1: it drops out)."""
        return r - self.lambdas * r[:, self.verbosity_index: self.verbosity_index + 1]

    def gates(self, h_prompt: torch.Tensor) -> torch.Tensor:
        """Weights over objectives, softmax over the objective dimension, one row per sample."""
        return torch.softmax(self.gate(h_prompt) / self.temperature, dim=-1)

    def forward(self, h_last: torch.Tensor, h_prompt: torch.Tensor) -> dict[str, torch.Tensor]:
        r = self.raw(h_last)
        adjusted = self.decorrelate(r)
        g = self.gates(h_prompt)
        return {"score": self.beta * (g * adjusted).sum(-1), "objectives": r, "adjusted": adjusted, "gates": g}

    def save(self, out: Path) -> None:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(out / "armo.safetensors"))
        (out / "armo.json").write_text(json.dumps(self.config, indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> ArmoHead:
        from safetensors.torch import load_file

        try:
            head = cls(**json.loads((path / "armo.json").read_text()))
            head.load_state_dict(load_file(str(path / "armo.safetensors")))
        except Exception as e:
            raise CheckpointError(f"cannot load the ArmoRM head from {path}: {e}") from None
        return head.eval()
