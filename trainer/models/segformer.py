"""A small SegFormer (Xie et al., NeurIPS 2021), MiT-B0-sized, trained from scratch.

Hierarchical transformer encoder (overlapping patch embeddings, efficient self-attention with
spatial reduction, Mix-FFN with a 3x3 depthwise conv) and the all-MLP decoder. Attention is
written with Dense, Reshape, Permute and batched matmuls, which TFLite quantizes to int8.
"""

from __future__ import annotations

import keras
from keras import layers, ops

from trainer.models.blocks import LayerNorm, batch_norm, scaled, upsample_to

DIMS = (32, 64, 160, 256)  # MiT-B0
HEADS = (1, 2, 5, 8)
REDUCTION = (8, 4, 2, 1)  # spatial reduction of keys/values per stage
DEPTHS = (2, 2, 2, 2)


def build_segformer(
    input_shape: tuple[int, int, int], num_classes: int, *, width: float = 1.0
) -> keras.Model:
    """SegFormer-B0-like: four stages at strides 4, 8, 16, 32 and an all-MLP decoder.

    Args:
        input_shape: (H, W, 1); H and W divisible by 32.
        num_classes: output channels (softmax).
        width: multiplier for the embedding dims and the decoder (heads stay as in B0).

    Returns:
        A functional ``keras.Model`` named ``segformer``.
    """
    h, w = input_shape[:2]
    inputs = keras.Input(input_shape, name="image")
    x, features = inputs, []
    for stage, (dim, heads, sr, depth) in enumerate(zip(DIMS, HEADS, REDUCTION, DEPTHS), start=1):
        dim = scaled(dim, width * 1.0, minimum=8 * heads)
        dim -= dim % heads
        kernel, stride = (7, 4) if stage == 1 else (3, 2)
        x = layers.Conv2D(
            dim, kernel, strides=stride, padding="same", name=f"stage{stage}_patch_embed"
        )(x)
        x = LayerNorm(name=f"stage{stage}_patch_norm")(x)
        for block in range(1, depth + 1):
            x = _transformer_block(x, dim, heads, sr, name=f"stage{stage}_block{block}")
        x = LayerNorm(name=f"stage{stage}_norm")(x)
        features.append(x)
    size = features[0].shape[1:3]  # (H/4, W/4)
    dec = scaled(128, width)
    merged = [
        upsample_to(layers.Dense(dec, name=f"dec_proj{i}")(f), size, name=f"dec_up{i}")
        for i, f in enumerate(features, start=1)
    ]
    x = layers.Concatenate(name="dec_concat")(merged[::-1])
    x = layers.Conv2D(dec, 1, use_bias=False, name="dec_fuse_conv")(x)
    x = layers.ReLU(name="dec_fuse_relu")(batch_norm(name="dec_fuse_bn")(x))
    logits = layers.Conv2D(num_classes, 1, name="head_conv")(x)
    logits = upsample_to(logits, (h, w), name="head_up")
    outputs = layers.Softmax(name="head_softmax", dtype="float32")(logits)
    return keras.Model(inputs, outputs, name="segformer")


@keras.saving.register_keras_serializable(package="marsseg")
class MatMul(layers.Layer):
    """Batched matrix product of two inputs (B, ..., n, k) @ (B, ..., k, m)."""

    def call(self, inputs):
        return ops.matmul(inputs[0], inputs[1])

    def compute_output_shape(self, input_shapes):
        a, b = input_shapes
        return (*a[:-1], b[-1])


def _transformer_block(x, dim: int, heads: int, sr: int, *, name: str):
    """Pre-norm: x + attention(norm(x)); x + MixFFN(norm(x))."""
    y = LayerNorm(name=f"{name}_norm1")(x)
    x = layers.Add(name=f"{name}_add1")(
        [x, _efficient_attention(y, dim, heads, sr, name=f"{name}_attn")]
    )
    y = LayerNorm(name=f"{name}_norm2")(x)
    return layers.Add(name=f"{name}_add2")([x, _mix_ffn(y, dim, name=f"{name}_ffn")])


def _efficient_attention(x, dim: int, heads: int, sr: int, *, name: str):
    """Multi-head attention whose keys and values come from an sr-times smaller grid."""
    h, w = x.shape[1], x.shape[2]
    d = dim // heads
    q = layers.Dense(dim, name=f"{name}_query")(x)
    q = layers.Rescaling(d**-0.5, name=f"{name}_query_scale")(q)
    q = layers.Permute((2, 1, 3), name=f"{name}_query_heads")(
        layers.Reshape((h * w, heads, d), name=f"{name}_query_flat")(q)
    )  # (B, heads, N, d)
    kv = x
    if sr > 1:
        kv = layers.Conv2D(dim, sr, strides=sr, name=f"{name}_reduce")(kv)
        kv = LayerNorm(name=f"{name}_reduce_norm")(kv)
    n_kv = kv.shape[1] * kv.shape[2]
    k = layers.Reshape((n_kv, heads, d), name=f"{name}_key_flat")(
        layers.Dense(dim, name=f"{name}_key")(kv)
    )
    k = layers.Permute((2, 3, 1), name=f"{name}_key_heads")(k)  # (B, heads, d, Nk)
    v = layers.Reshape((n_kv, heads, d), name=f"{name}_value_flat")(
        layers.Dense(dim, name=f"{name}_value")(kv)
    )
    v = layers.Permute((2, 1, 3), name=f"{name}_value_heads")(v)  # (B, heads, Nk, d)
    scores = layers.Softmax(axis=-1, name=f"{name}_softmax")(MatMul(name=f"{name}_scores")([q, k]))
    out = MatMul(name=f"{name}_mix")([scores, v])  # (B, heads, N, d)
    out = layers.Reshape((h, w, dim), name=f"{name}_merge")(
        layers.Permute((2, 1, 3), name=f"{name}_unheads")(out)
    )
    return layers.Dense(dim, name=f"{name}_proj")(out)


def _mix_ffn(x, dim: int, *, name: str, expansion: int = 4):
    """Dense -> 3x3 depthwise conv (positional information) -> GELU -> Dense."""
    y = layers.Dense(dim * expansion, name=f"{name}_fc1")(x)
    y = layers.DepthwiseConv2D(3, padding="same", name=f"{name}_dwconv")(y)
    y = layers.Activation("gelu", name=f"{name}_gelu")(y)
    return layers.Dense(dim, name=f"{name}_fc2")(y)
