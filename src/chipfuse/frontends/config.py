"""LLM architecture description, read from a Hugging Face config.json mapping.

One normalised `ModelConfig` serves every decoder-only family we know (Llama, Mistral,
Qwen2/2.5/3, Phi-3, Gemma 2/3, SmolLM, TinyLlama): GQA, tied embeddings, gated MLPs,
QKV bias, QK-norm and sliding-window layers are fields, not subclasses.

Every front end (catalogue, config.json, GGUF) goes through `from_hf_config`, so one set of
rules holds for all: counts are strict integers (no bool, str or float) within the bounds
below, floats are finite and positive, and heads, KV heads, head_dim and windows agree.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    Strict,
    ValidationError,
    model_validator,
)

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
    "mixtral": {},  # mixture of experts: every layer's MLP is routed experts
    "qwen3_moe": {"qk_norm": True},
}

# Bounds far above any published model (largest today: hidden 16,384, vocab 262,208, 128 heads), low
# enough that planning stays fast and its byte sums exact. Keyed by ModelConfig field; plan/ checks
# embedded configs against the same numbers.
LIMITS: dict[str, int] = {"hidden_size": 1 << 17, "intermediate_size": 1 << 20, "num_layers": 1024, "num_heads": 4096,
                          "num_kv_heads": 4096, "head_dim": 1 << 14, "vocab_size": 1 << 23, "max_position": 1 << 24,
                          "norms_per_layer": 8, "sliding_window": 1 << 24, "num_experts": 4096}
MAX_LAYERS = LIMITS["num_layers"]
MAX_Q_DIM = LIMITS["intermediate_size"]  # num_heads * head_dim
LAYER_TYPES = ("full_attention", "sliding_attention")


def _bounded(field: str):
    """A strict int type from 1 to the field's limit."""
    return Annotated[int, Strict(), Field(ge=1, le=LIMITS[field])]


Layers = _bounded("num_layers")
Hidden = _bounded("hidden_size")
Inner = _bounded("intermediate_size")
Vocab = _bounded("vocab_size")
Heads = _bounded("num_heads")
HeadDim = _bounded("head_dim")
Tokens = _bounded("max_position")
Window = _bounded("sliding_window")
Norms = _bounded("norms_per_layer")
Flag = Annotated[bool, Strict()]
Positive = Annotated[float, Strict(), Field(gt=0, allow_inf_nan=False)]
Epsilon = Annotated[float, Strict(), Field(gt=0, lt=1, allow_inf_nan=False)]
Text = Annotated[str, Strict()]


def _up_to(field: str) -> str:
    return f"an integer from 1 to {LIMITS[field]:,}"


# What each field must be, said in the error message (the fix).
RULES: dict[str, str] = {
    "name": "a string",
    "family": f"one of {', '.join(FAMILIES)}",
    "hidden_size": _up_to("hidden_size"),
    "intermediate_size": _up_to("intermediate_size"),
    "num_layers": _up_to("num_layers"),
    "num_heads": _up_to("num_heads"),
    "num_kv_heads": _up_to("num_kv_heads") + " that divides the number of attention heads "
                                              "(leave it out for full multi-head attention)",
    "head_dim": _up_to("head_dim"),
    "vocab_size": _up_to("vocab_size"),
    "tied_embeddings": "true or false",
    "max_position": _up_to("max_position"),
    "attention_bias": "true or false",
    "qk_norm": "true or false",
    "norms_per_layer": _up_to("norms_per_layer"),
    "scaled_embedding": "true or false",
    "sliding_window": _up_to("sliding_window") + " tokens, or null (left out) for no sliding window",
    "layer_windows": f"per layer, a window from 1 to {LIMITS['sliding_window']:,} tokens or null",
    "rope_theta": "a finite number above 0",
    "num_experts": "0 (a dense model) or the routed experts per layer, up to 4,096",
    "experts_per_token": "the experts each token uses: 1 up to num_experts (0 for a dense model)",
    "rms_norm_eps": "a finite number above 0 and below 1",
}

# ModelConfig field -> the config.json key it comes from (fields not listed have the same name).
HF_KEYS: dict[str, str] = {
    "num_layers": "num_hidden_layers",
    "num_heads": "num_attention_heads",
    "num_kv_heads": "num_key_value_heads",
    "max_position": "max_position_embeddings",
    "tied_embeddings": "tie_word_embeddings",
    "layer_windows": "sliding_window",
    "family": "model_type",
    "num_experts": "num_experts",
    "experts_per_token": "num_experts_per_tok",
}

REQUIRED = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size")


class ModelConfig(BaseModel):
    """The architecture facts the IR needs; nothing about weights' values."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Text
    family: Text
    hidden_size: Hidden
    intermediate_size: Inner
    num_layers: Layers
    num_heads: Heads
    num_kv_heads: Heads
    head_dim: HeadDim
    vocab_size: Vocab
    tied_embeddings: Flag = False
    max_position: Tokens = 4096
    attention_bias: Flag = False
    qk_norm: Flag = False
    norms_per_layer: Norms = 2
    scaled_embedding: Flag = False
    sliding_window: Window | None = None
    layer_windows: tuple[Window | None, ...] | None = Field(
        None, description="per layer: attention window in tokens, or None for full attention")
    rope_theta: Positive = 10000.0
    rms_norm_eps: Epsilon = 1e-5
    num_experts: int = Field(0, ge=0, le=LIMITS["num_experts"], strict=True,
                             description="routed experts per layer (0: a dense MLP); intermediate_size is one expert's")
    experts_per_token: int = Field(0, ge=0, le=LIMITS["num_experts"], strict=True)

    @model_validator(mode="after")
    def _consistent(self) -> ModelConfig:
        """Heads, KV heads, head_dim and per-layer windows must describe one realisable model."""
        if self.family not in FAMILIES:
            raise ValueError(f"model_type {self.family!r} is not supported; accepted: {', '.join(FAMILIES)}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_attention_heads {self.num_heads} is not a multiple of "
                             f"num_key_value_heads {self.num_kv_heads}; fix one of them")
        if self.num_heads * self.head_dim > MAX_Q_DIM:
            raise ValueError(f"num_attention_heads x head_dim = {self.num_heads * self.head_dim:,} is over the limit "
                             f"of {MAX_Q_DIM:,}; fix num_attention_heads or head_dim")
        if (self.num_experts == 0) != (self.experts_per_token == 0) or self.experts_per_token > self.num_experts:
            raise ValueError(f"num_experts_per_tok {self.experts_per_token} does not fit num_experts {self.num_experts}: "
                             "a mixture of experts uses 1 up to num_experts of them per token (both 0 when dense)")
        if self.layer_windows is not None and len(self.layer_windows) != self.num_layers:
            raise ValueError(f"layer_windows has {len(self.layer_windows)} entries for {self.num_layers} layers")
        return self

    def window(self, layer: int) -> int | None:
        """Attention span of a layer in tokens (None: the whole context)."""
        return self.layer_windows[layer] if self.layer_windows else None

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 1

    @property
    def q_dim(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.num_kv_heads * self.head_dim


def _short(value: Any, n: int = 60) -> str:
    """A value's repr cut to n characters, for error messages."""
    s = repr(value)
    return s if len(s) <= n else s[:n] + "..."


def _is_count(value: Any) -> bool:
    """A strict positive integer (bool is not a count)."""
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _kind(value: Any) -> str:
    """The JSON name of a value's type, for messages."""
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", int: "a number",
             float: "a number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def _opt(cfg: dict, key: str, default: Any = None) -> Any:
    """cfg[key], with null or absent meaning `default` (Hugging Face writes null for 'not set')."""
    v = cfg.get(key)
    return default if v is None else v


def _text_part(cfg: Any, source: str) -> dict:
    """The mapping that holds the language model: the whole file, or text_config of a multimodal one."""
    if not isinstance(cfg, dict):
        raise SpecError(f"{source}: the top level is {_kind(cfg)}; a config.json must be one JSON object "
                        "({\"model_type\": ..., \"hidden_size\": ..., ...})")
    if "text_config" not in cfg or "hidden_size" in cfg:
        return cfg
    text = cfg["text_config"]
    if not isinstance(text, dict):
        raise SpecError(f"{source}: text_config is {_kind(text)}; it must be an object holding the language "
                        "model's keys (hidden_size, num_hidden_layers, ...)")
    return {**text, "model_type": text.get("model_type", cfg.get("model_type", ""))}


def _model_type(cfg: dict, source: str, keys: dict[str, str]) -> str:
    """The family name, checked to be one we model."""
    mtype = cfg.get("model_type")
    name = keys.get("model_type", "model_type")
    if not isinstance(mtype, str):
        raise SpecError(f"{source}: {name} is {_kind(mtype)}; it must be a string, one of {', '.join(FAMILIES)}")
    if mtype not in FAMILIES:
        raise SpecError(f"{source}: {name} {mtype!r} is not supported; accepted: {', '.join(FAMILIES)}")
    return mtype


def _head_dim(cfg: dict, source: str, keys: dict[str, str]) -> Any:
    """head_dim as given, else hidden_size / num_attention_heads when that divides exactly."""
    given = _opt(cfg, "head_dim")
    if given is not None:
        return given
    hidden, heads = cfg["hidden_size"], cfg["num_attention_heads"]
    if not (_is_count(hidden) and _is_count(heads) and hidden <= LIMITS["hidden_size"] and heads <= LIMITS["num_heads"]):
        return 1  # placeholder: the bad count itself is reported by ModelConfig
    if hidden % heads:
        h, n, d = (keys.get(k, k) for k in ("hidden_size", "num_attention_heads", "head_dim"))
        raise SpecError(f"{source}: {h} {hidden} is not a multiple of {n} {heads}, so the head size is unknown; "
                        f"give {d} explicitly or fix the head count")
    return hidden // heads


def _layer_types(cfg: dict, n_layers: int, source: str) -> list[str] | None:
    """`layer_types` checked: one known entry per layer."""
    types = cfg.get("layer_types")
    if types is None:
        return None
    if not isinstance(types, list) or len(types) != n_layers:
        size = f"{len(types)} entries" if isinstance(types, list) else _kind(types)
        raise SpecError(f"{source}: layer_types is {size}; it must list one of {', '.join(LAYER_TYPES)} "
                        f"for each of the {n_layers} layers (or be left out)")
    bad = sorted({_short(t) for t in types if t not in LAYER_TYPES})
    if bad:
        raise SpecError(f"{source}: layer_types has unknown entries {', '.join(bad)}; each must be one of "
                        f"{', '.join(LAYER_TYPES)}")
    return types


def _pattern(cfg: dict, mtype: str, source: str) -> int | None:
    """Every how many layers a global one comes (`sliding_window_pattern`; Gemma-3 default 6)."""
    pattern = _opt(cfg, "sliding_window_pattern")
    if pattern is None:
        return 6 if mtype.startswith("gemma3") else None
    if not _is_count(pattern) or pattern > MAX_LAYERS:
        raise SpecError(f"{source}: sliding_window_pattern {_short(pattern)} must be an integer from 1 to "
                        f"{MAX_LAYERS} (every how many layers a global one comes)")
    return pattern


def _uses_window(cfg: dict, mtype: str, source: str) -> bool:
    """Whether the sliding window applies: Qwen configs carry one that is off unless use_sliding_window."""
    use = cfg.get("use_sliding_window", False)
    if not isinstance(use, bool):
        raise SpecError(f"{source}: use_sliding_window {_short(use)} must be true or false")
    return use or mtype not in ("qwen2", "qwen3")


def _layer_windows(cfg: dict, mtype: str, n_layers: Any, source: str):
    """Sliding-window layout from `layer_types`, `sliding_window_pattern` or the family rule."""
    if not _is_count(n_layers) or n_layers > MAX_LAYERS:
        return None  # the layer count itself is reported by ModelConfig
    win = _opt(cfg, "sliding_window")
    types = _layer_types(cfg, n_layers, source)
    if not _uses_window(cfg, mtype, source):
        return None
    if win is None:
        if types and "sliding_attention" in types:
            raise SpecError(f"{source}: layer_types has sliding_attention layers but sliding_window is not given; "
                            "give sliding_window (tokens) or mark every layer full_attention")
        return None
    if not _is_count(win) or win > LIMITS["sliding_window"]:
        return None  # reported by ModelConfig as sliding_window
    if types:
        return tuple(win if t == "sliding_attention" else None for t in types)
    pattern = _pattern(cfg, mtype, source)
    if pattern:  # every pattern-th layer is global
        return tuple(None if (i + 1) % pattern == 0 else win for i in range(n_layers))
    if mtype == "gemma2":  # alternating, local first
        return tuple(win if i % 2 == 0 else None for i in range(n_layers))
    return tuple(win for _ in range(n_layers))  # Mistral v0.1: every layer


def _rope_theta(cfg: dict, source: str) -> Any:
    """rope_theta, or newer transformers' rope_parameters (flat or per layer type), default 1e4."""
    theta = _opt(cfg, "rope_theta")
    if theta is not None:
        return theta
    params = _opt(cfg, "rope_parameters", {})
    if not isinstance(params, dict):
        raise SpecError(f"{source}: rope_parameters is {_kind(params)}; it must be an object such as "
                        "{\"rope_theta\": 10000.0} (or be left out)")
    full = params.get("full_attention")
    if params.get("rope_theta") is None and isinstance(full, dict):
        params = full
    return _opt(params, "rope_theta", 10000.0)


def _experts(cfg: dict, mtype: str, source: str) -> tuple[Any, Any, Any]:
    """(routed experts, experts per token, one expert's MLP width) of a mixture of experts; (0, 0, the MLP's width)
    for a dense model. Shared experts and dense layers between the sparse ones are refused by name."""
    if mtype not in ("mixtral", "qwen3_moe"):
        return 0, 0, cfg["intermediate_size"]
    experts = _opt(cfg, "num_local_experts" if mtype == "mixtral" else "num_experts")
    per_token = _opt(cfg, "num_experts_per_tok")
    if experts is None or per_token is None:
        raise SpecError(f"{source}: a {mtype} config gives its experts: "
                        f"{'num_local_experts' if mtype == 'mixtral' else 'num_experts'} and num_experts_per_tok")
    if mtype == "qwen3_moe":
        dense = _opt(cfg, "mlp_only_layers", []) or []
        step = _opt(cfg, "decoder_sparse_step", 1)
        if dense or step != 1:
            raise SpecError(f"{source}: dense MLP layers between the expert layers (mlp_only_layers {dense!r}, "
                            f"decoder_sparse_step {step!r}) are not modelled; every layer must be sparse")
        if _opt(cfg, "shared_expert_intermediate_size"):
            raise SpecError(f"{source}: shared experts are not modelled (shared_expert_intermediate_size)")
        return experts, per_token, _opt(cfg, "moe_intermediate_size", cfg["intermediate_size"])
    return experts, per_token, cfg["intermediate_size"]


def _fields(cfg: dict, mtype: str, name: str, source: str, keys: dict[str, str]) -> dict:
    """The ModelConfig keyword arguments, values as given (ModelConfig checks them)."""
    traits = FAMILIES[mtype]
    heads = cfg["num_attention_heads"]
    experts, per_token, inter = _experts(cfg, mtype, source)
    return {
        "name": name,
        "family": mtype,
        "hidden_size": cfg["hidden_size"],
        "intermediate_size": inter,
        "num_experts": experts,
        "experts_per_token": per_token,
        "num_layers": cfg["num_hidden_layers"],
        "num_heads": heads,
        "num_kv_heads": _opt(cfg, "num_key_value_heads", heads),
        "head_dim": _head_dim(cfg, source, keys),
        "vocab_size": cfg["vocab_size"],
        "tied_embeddings": _opt(cfg, "tie_word_embeddings", mtype.startswith("gemma")),
        "max_position": _opt(cfg, "max_position_embeddings", 4096),
        "attention_bias": _opt(cfg, "attention_bias", traits.get("attention_bias", False)),
        "qk_norm": traits.get("qk_norm", False),
        "norms_per_layer": traits.get("norms_per_layer", 2),
        "scaled_embedding": traits.get("scaled_embedding", False),
        "sliding_window": _opt(cfg, "sliding_window"),
        "layer_windows": _layer_windows(cfg, mtype, cfg["num_hidden_layers"], source),
        "rope_theta": _rope_theta(cfg, source),
        "rms_norm_eps": _opt(cfg, "rms_norm_eps", 1e-5),
    }


def describe_errors(err: ValidationError, fields: dict, keys: dict[str, str]) -> str:
    """One sentence per failed rule, naming the source's key, the value found and what it must be."""
    parts: dict[str, str] = {}
    for e in err.errors():
        if not e["loc"]:  # a model_validator's consistency rule
            parts.setdefault("", str(e["msg"]).removeprefix("Value error, "))
            continue
        field = str(e["loc"][0])
        hf = HF_KEYS.get(field, field)
        parts.setdefault(field, f"{keys.get(hf, hf)} is {_short(fields.get(field))}; "
                                f"it must be {RULES.get(field, e['msg'])}")
    return "; ".join(list(parts.values())[:3])


def from_hf_config(cfg: Any, name: str, source: str = "config.json", keys: dict[str, str] | None = None) -> ModelConfig:
    """Build a ModelConfig from a Hugging Face config.json mapping (text part for multimodal).

    `keys` renames config.json keys in error messages to the source's own (GGUF metadata keys)."""
    keys = keys or {}
    cfg = _text_part(cfg, source)
    mtype = _model_type(cfg, source, keys)
    missing = [keys.get(k, k) for k in REQUIRED if k not in cfg]
    if missing:
        raise SpecError(f"{source}: missing field(s) {', '.join(missing)} (a decoder-only LLM config.json has them)")
    fields = _fields(cfg, mtype, name, source, keys)
    try:
        return ModelConfig(**fields)
    except ValidationError as err:
        raise SpecError(f"{source}: {describe_errors(err, fields, keys)}") from None
