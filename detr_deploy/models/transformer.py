"""DETR's encoder-decoder transformer (post-norm), batch-first so the batch stays symbolic at export."""

import torch
import torch.nn.functional as F
from torch import nn

from detr_deploy.models.attention import MultiheadAttention


class TransformerEncoderLayer(nn.Module):
    """Post-norm encoder layer: DETR's (ReLU), and RT-DETR's AIFI (GELU)."""

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int, activation=F.relu):
        super().__init__()
        self.self_attn = MultiheadAttention(d_model, nhead)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.activation = activation

    def forward(self, src: torch.Tensor, pos: torch.Tensor, padding_mask: torch.Tensor = None) -> torch.Tensor:
        """src [N, S, C], pos [N or 1, S, C], padding_mask [N, S] bool or None -> [N, S, C]."""
        query_key = src + pos
        src = self.norm1(src + self.self_attn(query_key, query_key, src, padding_mask))
        return self.norm2(src + self.linear2(self.activation(self.linear1(src))))


class TransformerDecoderLayer(nn.Module):
    def __init__(self, d_model: int, nhead: int, dim_feedforward: int):
        super().__init__()
        self.self_attn = MultiheadAttention(d_model, nhead)
        self.multihead_attn = MultiheadAttention(d_model, nhead)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)

    def forward(self, tgt, memory, pos, query_pos, memory_padding_mask=None):
        """tgt [N, Q, C], memory [N, S, C], pos [N or 1, S, C], query_pos [1, Q, C], memory_padding_mask [N, S]
        bool or None -> [N, Q, C]."""
        query_key = tgt + query_pos
        tgt = self.norm1(tgt + self.self_attn(query_key, query_key, tgt))
        tgt = self.norm2(tgt + self.multihead_attn(tgt + query_pos, memory + pos, memory, memory_padding_mask))
        return self.norm3(tgt + self.linear2(F.relu(self.linear1(tgt))))


class TransformerEncoder(nn.Module):
    def __init__(self, num_layers: int, d_model: int, nhead: int, dim_feedforward: int):
        super().__init__()
        self.layers = nn.ModuleList(TransformerEncoderLayer(d_model, nhead, dim_feedforward) for _ in range(num_layers))

    def forward(self, src: torch.Tensor, pos: torch.Tensor, padding_mask: torch.Tensor = None) -> torch.Tensor:
        for layer in self.layers:
            src = layer(src, pos, padding_mask)
        return src


class TransformerDecoder(nn.Module):
    def __init__(self, num_layers: int, d_model: int, nhead: int, dim_feedforward: int):
        super().__init__()
        self.layers = nn.ModuleList(TransformerDecoderLayer(d_model, nhead, dim_feedforward) for _ in range(num_layers))
        self.norm = nn.LayerNorm(d_model)

    def forward(self, tgt, memory, pos, query_pos, memory_padding_mask=None):
        """Returns the final layer's normalized output [N, Q, C] (the only one deployment needs)."""
        for layer in self.layers:
            tgt = layer(tgt, memory, pos, query_pos, memory_padding_mask)
        return self.norm(tgt)


class Transformer(nn.Module):
    def __init__(
        self, d_model: int, nhead: int, num_encoder_layers: int, num_decoder_layers: int, dim_feedforward: int
    ):
        super().__init__()
        self.encoder = TransformerEncoder(num_encoder_layers, d_model, nhead, dim_feedforward)
        self.decoder = TransformerDecoder(num_decoder_layers, d_model, nhead, dim_feedforward)
        for parameter in self.parameters():
            if parameter.dim() > 1:
                nn.init.xavier_uniform_(parameter)

    def forward(self, src: torch.Tensor, query_embed: torch.Tensor, pos: torch.Tensor, padding_mask=None):
        """src [N, C, H, W], query_embed [Q, C], pos [N or 1, C, H, W], padding_mask [N, H, W] bool or None
        -> (hs [N, Q, C], memory [N, H*W, C])."""
        batch, channels = src.shape[:2]
        src = src.view(batch, channels, -1).transpose(1, 2)
        pos = pos.view(pos.shape[0], channels, -1).transpose(1, 2)
        if padding_mask is not None:
            padding_mask = padding_mask.view(batch, -1)
        query_pos = query_embed.unsqueeze(0)
        memory = self.encoder(src, pos, padding_mask)
        tgt = torch.zeros_like(query_pos).expand(batch, -1, -1)
        return self.decoder(tgt, memory, pos, query_pos, padding_mask), memory
