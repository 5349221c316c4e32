"""The identity generator's network: a diffusion MLP over 32-d codes that predicts x0."""

from __future__ import annotations

import torch
from torch import nn

from genreid.training.networks.layers import NoiseEmbedding


class CodeMLP(nn.Module):
    """3 hidden SiLU layers; the noise-variance embedding is concatenated after each of them."""

    def __init__(self, code_dim: int = 32, hidden: int = 512, layers: int = 3, embed_dim: int = 64):
        super().__init__()
        self.embedding = NoiseEmbedding(embed_dim)
        dims = [code_dim + embed_dim] + [hidden + embed_dim] * (layers - 1)
        self.hidden = nn.ModuleList(nn.Linear(d, hidden) for d in dims)
        self.out = nn.Linear(hidden + embed_dim, code_dim)
        self.act = nn.SiLU()

    def forward(self, codes: torch.Tensor, variance: torch.Tensor) -> torch.Tensor:
        embedding = self.embedding(variance)
        x = torch.cat([codes, embedding], dim=1)
        for layer in self.hidden:
            x = torch.cat([self.act(layer(x)), embedding], dim=1)
        return self.out(x)
