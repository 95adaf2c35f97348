"""LLM architecture description, read from a Hugging Face config.json mapping.

One normalised `ModelConfig` serves every decoder-only family we know (Llama, Mistral,
Qwen2/2.5/3, Phi-3, Gemma 2/3, SmolLM, TinyLlama): GQA, tied embeddings, gated MLPs,
QKV bias, QK-norm and sliding-window layers are fields, not subclasses.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..errors import SpecError

# model_type values we accept, and the family traits that config.json does not state.
FAMILIES: dict[str, dict] = {
    "llama": {},
    "mistral": {},
    "qwen2": {"attention_bias": True},
    "qwen3": {"qk_norm": True},
    "phi3": {},
    "gemma": {"norms_per_layer": 2, "scaled_embedding": True},
    "gemma2": {"norms_per_layer": 4, "scaled_embedding": True},
    "gemma3": {"norms_per_layer": 4, "scaled_embedding": True, "qk_norm": True},
    "gemma3_text": {"norms_per_layer": 4, "scaled_embedding": True, "qk_norm": True},
    "smollm3": {},
}


class ModelConfig(BaseModel):
    """The architecture facts the IR needs; nothing about weights' values."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    family: str
    hidden_size: int = Field(gt=0)
    intermediate_size: int = Field(gt=0)
    num_layers: int = Field(gt=0)
    num_heads: int = Field(gt=0)
    num_kv_heads: int = Field(gt=0)
    head_dim: int = Field(gt=0)
    vocab_size: int = Field(gt=0)
    tied_embeddings: bool = False
    max_position: int = Field(4096, gt=0)
    attention_bias: bool = False
    qk_norm: bool = False
    norms_per_layer: int = 2
    scaled_embedding: bool = False
    sliding_window: int | None = None
    layer_windows: tuple[int | None, ...] | None = Field(
        None, description="per layer: attention window in tokens, or None for full attention")
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5

    @model_validator(mode="after")
    def _consistent(self) -> ModelConfig:
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_attention_heads {self.num_heads} is not a multiple of "
                             f"num_key_value_heads {self.num_kv_heads}")
        if self.layer_windows is not None and len(self.layer_windows) != self.num_layers:
            raise ValueError(f"layer_windows has {len(self.layer_windows)} entries for {self.num_layers} layers")
        return self

    def window(self, layer: int) -> int | None:
        """Attention span of a layer in tokens (None: the whole context)."""
        return self.layer_windows[layer] if self.layer_windows else None

    @property
    def q_dim(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.num_kv_heads * self.head_dim


def _layer_windows(cfg: dict, n_layers: int) -> tuple[int | None, ...] | None:
    """Sliding-window layout from `layer_types`, `sliding_window_pattern` or the family rule."""
    win = cfg.get("sliding_window")
    mtype = cfg.get("model_type", "")
    if not win or (mtype in ("qwen2", "qwen3") and not cfg.get("use_sliding_window", False)):
        return None
    types = cfg.get("layer_types")
    if types:
        return tuple(win if t == "sliding_attention" else None for t in types)
    pattern = cfg.get("sliding_window_pattern")
    if mtype.startswith("gemma3"):
        pattern = pattern or 6
    if pattern:  # every pattern-th layer is global
        return tuple(None if (i + 1) % pattern == 0 else win for i in range(n_layers))
    if mtype == "gemma2":  # alternating, local first
        return tuple(win if i % 2 == 0 else None for i in range(n_layers))
    return tuple(win for _ in range(n_layers))  # Mistral v0.1: every layer


def from_hf_config(cfg: dict, name: str, source: str = "config.json") -> ModelConfig:
    """Build a ModelConfig from a Hugging Face config.json mapping (text part for multimodal)."""
    if "text_config" in cfg and "hidden_size" not in cfg:
        cfg = {**cfg["text_config"], "model_type": cfg["text_config"].get("model_type", cfg.get("model_type", ""))}
    mtype = cfg.get("model_type")
    if mtype not in FAMILIES:
        raise SpecError(f"{source}: model_type {mtype!r} is not supported; accepted: {', '.join(FAMILIES)}")
    missing = [k for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size")
               if k not in cfg]
    if missing:
        raise SpecError(f"{source}: missing field(s) {', '.join(missing)} (a decoder-only LLM config.json has them)")
    traits = FAMILIES[mtype]
    heads = cfg["num_attention_heads"]
    n_layers = cfg["num_hidden_layers"]
    try:
        return ModelConfig(
            name=name,
            family=mtype,
            hidden_size=cfg["hidden_size"],
            intermediate_size=cfg["intermediate_size"],
            num_layers=n_layers,
            num_heads=heads,
            num_kv_heads=cfg.get("num_key_value_heads") or heads,
            head_dim=cfg.get("head_dim") or cfg["hidden_size"] // heads,
            vocab_size=cfg["vocab_size"],
            tied_embeddings=cfg.get("tie_word_embeddings", mtype.startswith("gemma")),
            max_position=cfg.get("max_position_embeddings", 4096),
            attention_bias=cfg.get("attention_bias", traits.get("attention_bias", False)),
            qk_norm=traits.get("qk_norm", False),
            norms_per_layer=traits.get("norms_per_layer", 2),
            scaled_embedding=traits.get("scaled_embedding", False),
            sliding_window=cfg.get("sliding_window"),
            layer_windows=_layer_windows(cfg, n_layers),
            rope_theta=cfg.get("rope_theta", (cfg.get("rope_parameters") or {}).get("rope_theta", 10000.0)),
            rms_norm_eps=cfg.get("rms_norm_eps", 1e-5),
        )
    except ValueError as err:
        raise SpecError(f"{source}: {err}") from None
