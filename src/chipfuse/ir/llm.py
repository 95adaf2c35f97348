"""Build the IR graph of a decoder-only LLM from its ModelConfig."""

from __future__ import annotations

from ..frontends.config import ModelConfig
from .graph import Block, Graph, Op

KV, MLP = "kv_heads", "mlp_columns"  # the shard axes of a layer's attention and MLP (ir.graph.SHARD_AXES)


def build_llm_graph(cfg: ModelConfig) -> Graph:
    """Blocks: 0 = token embedding, 1..L = transformer layers, L+1 = final norm + LM head."""
    h, q, kv, inter = cfg.hidden_size, cfg.q_dim, cfg.kv_dim, cfg.intermediate_size
    ops: list[Op] = [Op("embed", "embedding", 0, in_features=cfg.vocab_size, out_features=h)]
    blocks = [Block(0, "embedding", "embedding")]
    prev = "embed"
    for i in range(cfg.num_layers):
        b = i + 1
        p = f"layers.{i}."
        blocks.append(Block(b, f"layer {i}", "layer", layer=i))
        layer = [
            Op(p + "attn_norm", "norm", b, (prev,), dim=h, flop_per_element=4),
            Op(p + "q_proj", "matmul", b, (p + "attn_norm",), h, q, bias=cfg.attention_bias, shard_axis=KV),
            Op(p + "k_proj", "matmul", b, (p + "attn_norm",), h, kv, bias=cfg.attention_bias, shard_axis=KV),
            Op(p + "v_proj", "matmul", b, (p + "attn_norm",), h, kv, bias=cfg.attention_bias, shard_axis=KV),
        ]
        if cfg.qk_norm:
            layer += [Op(p + "q_norm", "norm", b, (p + "q_proj",), dim=cfg.head_dim, flop_per_element=4 * cfg.num_heads,
                         shard_axis=KV),
                      Op(p + "k_norm", "norm", b, (p + "k_proj",), dim=cfg.head_dim,
                         flop_per_element=4 * cfg.num_kv_heads, shard_axis=KV)]
        layer += [
            Op(p + "rope", "elementwise", b, (p + "q_proj", p + "k_proj"), dim=q + kv, flop_per_element=3, shard_axis=KV),
            Op(p + "attention", "attention", b, (p + "rope", p + "v_proj"), heads=cfg.num_heads,
               kv_heads=cfg.num_kv_heads, head_dim=cfg.head_dim, window=cfg.window(i), shard_axis=KV),
            Op(p + "o_proj", "matmul", b, (p + "attention",), q, h, shard_axis=KV),
        ]
        # after the attention's all-reduce every die of a group holds the whole hidden state again
        if cfg.norms_per_layer == 4:
            layer.append(Op(p + "post_attn_norm", "norm", b, (p + "o_proj",), dim=h, flop_per_element=4, phase=1))
        e, k = max(cfg.num_experts, 1), max(cfg.experts_per_token, 1)  # routed experts (1, 1: a dense MLP)
        layer += [
            Op(p + "residual1", "elementwise", b, (prev, p + "o_proj"), dim=h, phase=1),
            Op(p + "mlp_norm", "norm", b, (p + "residual1",), dim=h, flop_per_element=4, phase=1),
        ]
        if e > 1:  # the router scores every expert for each token (every die of a group runs it whole)
            layer.append(Op(p + "router", "matmul", b, (p + "mlp_norm",), h, e, phase=1))
        layer += [
            Op(p + "gate_proj", "matmul", b, (p + "mlp_norm",), h, inter, shard_axis=MLP, phase=1, experts=e, active=k),
            Op(p + "up_proj", "matmul", b, (p + "mlp_norm",), h, inter, shard_axis=MLP, phase=1, experts=e, active=k),
            Op(p + "act_mul", "elementwise", b, (p + "gate_proj", p + "up_proj"), dim=inter * k, flop_per_element=5,
               shard_axis=MLP, phase=1),
            Op(p + "down_proj", "matmul", b, (p + "act_mul",), inter, h, shard_axis=MLP, phase=1, experts=e, active=k),
        ]
        if cfg.norms_per_layer == 4:
            layer.append(Op(p + "post_mlp_norm", "norm", b, (p + "down_proj",), dim=h, flop_per_element=4, phase=1))
        layer.append(Op(p + "residual2", "elementwise", b, (p + "residual1", p + "down_proj"), dim=h, phase=1))
        ops += layer
        prev = p + "residual2"
    hb = cfg.num_layers + 1
    blocks.append(Block(hb, "final norm + LM head", "head"))
    ops += [
        Op("final_norm", "norm", hb, (prev,), dim=h, flop_per_element=4, last_token_only=True),
        Op("lm_head", "matmul", hb, ("final_norm",), h, cfg.vocab_size,
           tied_to="embed" if cfg.tied_embeddings else None, last_token_only=True, shard_axis="vocab"),
    ]
    out_features = {0: h, hb: cfg.vocab_size, **{i + 1: h for i in range(cfg.num_layers)}}
    widths = {"kv_heads": cfg.num_kv_heads, "mlp_columns": inter, "vocab": cfg.vocab_size}
    return Graph(cfg.name, ops, blocks, out_features, meta={"family": cfg.family, "kind": "llm", "shard_widths": widths,
                                                     "experts": cfg.num_experts,
                                                     "heads_per_kv": int(cfg.num_heads) // int(cfg.num_kv_heads)})
