"""Multi-head attention with ``nn.MultiheadAttention``'s parameter names, in batch-first layout.

Our own module (not ``nn.MultiheadAttention``) so the exported graph is plain MatMul/Softmax with the batch kept
symbolic, and so official checkpoints (``in_proj_weight``, ``in_proj_bias``, ``out_proj.*``) load unchanged.
"""

import torch
import torch.nn.functional as F
from torch import nn


class MultiheadAttention(nn.Module):
    def __init__(self, embed_dim: int, num_heads: int):
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * embed_dim, embed_dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * embed_dim))
        self.out_proj = nn.Linear(embed_dim, embed_dim)
        nn.init.xavier_uniform_(self.in_proj_weight)

    def forward(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, key_padding_mask: torch.Tensor = None
    ) -> torch.Tensor:
        """query [N, Lq, C], key and value [N or 1, Lk, C], key_padding_mask [N, Lk] bool (True = ignore) or None
        -> [N, Lq, C]."""
        weight_q, weight_k, weight_v = self.in_proj_weight.chunk(3)
        bias_q, bias_k, bias_v = self.in_proj_bias.chunk(3)
        batch = query.shape[0]
        q = F.linear(query, weight_q, bias_q).view(batch, -1, self.num_heads, self.head_dim).transpose(1, 2)
        k = F.linear(key, weight_k, bias_k).view(key.shape[0], -1, self.num_heads, self.head_dim).transpose(1, 2)
        v = F.linear(value, weight_v, bias_v).view(value.shape[0], -1, self.num_heads, self.head_dim).transpose(1, 2)
        logits = (q * self.head_dim**-0.5) @ k.transpose(-2, -1)
        if key_padding_mask is not None:
            logits = logits.masked_fill(key_padding_mask[:, None, None, :], float("-inf"))
        attention = torch.softmax(logits, dim=-1)
        out = (attention @ v).transpose(1, 2).reshape(batch, -1, self.embed_dim)
        return self.out_proj(out)
