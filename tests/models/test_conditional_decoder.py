"""The conditional decoder layer and the reference-point sine embedding against transformers' own modules (random
weights, state copied across), first layer and later layers, with and without a padding mask, batches 1 and 2."""

import pytest
import torch

from detr_deploy.models import get_model_spec
from detr_deploy.models.conditional_decoder import (
    ConditionalDecoderLayer,
    box_sine_embedding,
    reference_point_sine_embedding,
)

transformers = pytest.importorskip("transformers", reason="transformers is the reference (pip install transformers)")
peer = pytest.importorskip("transformers.models.conditional_detr.modeling_conditional_detr")

D_MODEL, HEADS, FFN = 32, 4, 64

# transformers' module names -> ours (the official ones).
PEER_TO_OURS = {
    "self_attn.q_content_proj": "sa_qcontent_proj",
    "self_attn.q_pos_proj": "sa_qpos_proj",
    "self_attn.k_content_proj": "sa_kcontent_proj",
    "self_attn.k_pos_proj": "sa_kpos_proj",
    "self_attn.v_proj": "sa_v_proj",
    "self_attn.o_proj": "self_attn.out_proj",
    "encoder_attn.q_content_proj": "ca_qcontent_proj",
    "encoder_attn.q_pos_proj": "ca_qpos_proj",
    "encoder_attn.k_content_proj": "ca_kcontent_proj",
    "encoder_attn.k_pos_proj": "ca_kpos_proj",
    "encoder_attn.v_proj": "ca_v_proj",
    "encoder_attn.q_pos_sine_proj": "ca_qpos_sine_proj",
    "encoder_attn.o_proj": "cross_attn.out_proj",
    "self_attn_layer_norm": "norm1",
    "encoder_attn_layer_norm": "norm2",
    "final_layer_norm": "norm3",
    "mlp.fc1": "linear1",
    "mlp.fc2": "linear2",
}


def peer_layer(is_first: bool):
    config = transformers.ConditionalDetrConfig(
        d_model=D_MODEL, decoder_attention_heads=HEADS, decoder_ffn_dim=FFN, use_pretrained_backbone=False
    )
    config._attn_implementation = "eager"
    torch.manual_seed(1)
    layer = peer.ConditionalDetrDecoderLayer(config).eval()
    for parameter in layer.parameters():
        torch.nn.init.normal_(parameter, std=0.2)
    if not is_first:
        layer.encoder_attn.q_pos_proj = None
    return layer


def ours_from(layer, is_first: bool) -> ConditionalDecoderLayer:
    ours = ConditionalDecoderLayer(D_MODEL, HEADS, FFN, has_query_pos_proj=is_first).eval()
    state = {}
    for name, tensor in layer.state_dict().items():
        module, leaf = name.rsplit(".", 1)
        state[f"{PEER_TO_OURS[module]}.{leaf}"] = tensor
    ours.load_state_dict(state)
    return ours


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("is_first", [True, False], ids=["first", "later"])
@pytest.mark.parametrize("masked", [False, True], ids=["unmasked", "masked"])
def test_layer_matches_transformers(batch, is_first, masked):
    layer = peer_layer(is_first)
    ours = ours_from(layer, is_first)
    generator = torch.Generator().manual_seed(batch)
    queries, sequence = 7, 15
    tgt = torch.randn(batch, queries, D_MODEL, generator=generator)
    memory = torch.randn(batch, sequence, D_MODEL, generator=generator)
    pos = torch.randn(1, sequence, D_MODEL, generator=generator)
    query_pos = torch.randn(1, queries, D_MODEL, generator=generator)
    points = torch.rand(batch, queries, 2, generator=generator)
    query_sine = reference_point_sine_embedding(points, D_MODEL) * torch.rand(batch, queries, D_MODEL)
    padding = torch.zeros(batch, sequence, dtype=torch.bool)
    padding[-1, -4:] = masked
    additive = torch.zeros(batch, 1, queries, sequence).masked_fill(padding[:, None, None, :], float("-inf"))
    with torch.no_grad():
        expected = layer(
            tgt,
            spatial_position_embeddings=pos.expand(batch, -1, -1),
            query_position_embeddings=query_pos.expand(batch, -1, -1),
            query_sine_embed=query_sine,
            encoder_hidden_states=memory,
            encoder_attention_mask=additive if masked else None,
            is_first=is_first,
        )
        actual = ours(tgt, memory, pos, query_pos, query_sine, is_first, padding if masked else None)
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5)


def test_sine_embeddings_match_transformers():
    points = torch.rand(2, 5, 2)
    boxes = torch.rand(2, 5, 4)
    torch.testing.assert_close(
        reference_point_sine_embedding(points, 256), peer.encode_sinusoidal_position_embedding(points, 128)
    )
    torch.testing.assert_close(box_sine_embedding(boxes, 256), peer.encode_sinusoidal_position_embedding(boxes, 128))
    assert box_sine_embedding(boxes, 256).shape == (2, 5, 512)


def test_prelu_and_layout():
    layer = ConditionalDecoderLayer(D_MODEL, HEADS, FFN, activation="prelu", has_query_pos_proj=False)
    keys = set(layer.state_dict())
    assert "activation.weight" in keys and not any(key.startswith("ca_qpos_proj.") for key in keys)
    assert layer.cross_attn.out_proj.weight.shape == (D_MODEL, D_MODEL)
    with pytest.raises(ValueError):
        ConditionalDecoderLayer(D_MODEL, HEADS, FFN, activation="gelu")


@pytest.mark.parametrize(
    "zoo_name, parameters", [("conditional_detr_r50", 43_418_401), ("conditional_detr_r101", 62_358_305)]
)
def test_zoo_parameter_counts_are_transformers(zoo_name, parameters):
    # transformers' ConditionalDetrForObjectDetection with the same backbone (counted once, written down here).
    with torch.device("meta"):
        model = get_model_spec(zoo_name).config.build()
    assert sum(parameter.numel() for parameter in model.parameters()) == parameters
