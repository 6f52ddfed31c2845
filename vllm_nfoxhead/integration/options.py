"""Translate the user's spelling (`nfoxhead:HEADS_DIR`) into vLLM's own config.

vLLM only knows `method="custom_class"` with a dotted class path in
`speculative_config.model`, and SpeculativeConfig forbids unknown keys. So the
heads directory and NFoxHead options travel in `additional_config["nfoxhead"]`,
which vLLM hands unchanged to every worker.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from vllm_nfoxhead.core.errors import NFoxHeadError
from vllm_nfoxhead.core.format import HeadsConfig, check_base_compat, validate_heads_dir
from vllm_nfoxhead.core.lookup import DEFAULT_LOOKUP
from vllm_nfoxhead.integration import logger

PREFIX = "nfoxhead:"
PROPOSER_PATH = "vllm_nfoxhead.integration.proposer.NFoxHeadProposer"
ADDITIONAL_CONFIG_KEY = "nfoxhead"
# Keys users may add to --speculative-config that vLLM itself does not know.
PLUGIN_KEYS: tuple[str, ...] = ("tree", "acceptance", "posterior_threshold", "posterior_alpha",
                                "load_policy", "cost_table", "lookup", "rank_check_interval")
ACCEPTANCE_MODES = ("exact", "typical")
LOAD_POLICIES = ("auto", "static", "off")
MAX_LOOKUP = 32


@dataclass(frozen=True)
class NFoxHeadOptions:
    """What a worker needs to know about the heads, read from additional_config."""

    heads_dir: str
    tree: list[list[int]] | None = None  # rank paths; None = chain drafting
    acceptance: str = "exact"  # "typical": Medusa's lossy rule for sampled tree requests
    posterior_threshold: float = 0.09
    posterior_alpha: float = 0.3
    # "auto": the cost model's plan, corrected by measured throughput (rate_tuner.py);
    # "static": the cost model's plan only; "off": always the full tree/chain.
    load_policy: str = "auto"
    cost_table: dict[str, float] | None = None  # verify_cost table; None = platform default
    # Prompt-lookup drafts of up to this many tokens for requests whose recent tokens
    # occurred before (lookup.py); 0 = heads only. Set internally: the heads' chain length.
    lookup: int = DEFAULT_LOOKUP
    chain_tokens: int | None = None
    # Under tensor parallelism: every this many steps the ranks compare a digest of
    # their drafts and stop the engine on a mismatch (rank_sync.py); 0 = never.
    rank_check_interval: int = 0

    @classmethod
    def from_additional_config(cls, additional_config: Any) -> "NFoxHeadOptions":
        """The options the front end stored under additional_config["nfoxhead"]."""
        opts = (additional_config or {}).get(ADDITIONAL_CONFIG_KEY)
        if not opts or "heads_dir" not in opts:
            raise NFoxHeadError(
                "the NFoxHead proposer was started without a heads directory",
                'use speculative_config={"model": "nfoxhead:/path/to/heads"}',
            )
        known = {k: opts[k] for k in (*PLUGIN_KEYS, "chain_tokens") if k in opts}
        return cls(heads_dir=opts["heads_dir"], **known)


def is_nfoxhead_model(model: Any) -> bool:
    """Whether a speculative model setting names NFoxHead heads (`nfoxhead:HEADS_DIR`)."""
    return isinstance(model, str) and model.startswith(PREFIX)


def translate_engine_args(args: Any) -> bool:
    """Rewrite an EngineArgs in place if it asks for NFoxHead; return whether it did.

    Reads `args.spec_model` (`--spec-model`/`--speculative-model`) and
    `args.speculative_config["model"]`; leaves every other method alone.
    """
    spec = dict(args.speculative_config or {})
    from_flag = is_nfoxhead_model(getattr(args, "spec_model", None))
    model = args.spec_model if from_flag else spec.get("model")
    if not is_nfoxhead_model(model):
        return False
    heads_dir = model[len(PREFIX):].strip()
    if not heads_dir:
        raise NFoxHeadError(
            f"{model!r} names no heads directory", "write nfoxhead:/path/to/heads_dir"
        )
    if from_flag:
        args.spec_model = None
        if "model" in spec:
            raise NFoxHeadError(
                "both --spec-model/--speculative-model and --speculative-config['model'] are set",
                "give the heads in one place only",
            )
    spec_tokens = getattr(args, "spec_tokens", None)
    if spec_tokens is not None:
        if "num_speculative_tokens" in spec:
            raise NFoxHeadError(
                "both --spec-tokens and --speculative-config['num_speculative_tokens'] are set",
                "give the number of speculative tokens in one place only",
            )
        spec["num_speculative_tokens"], args.spec_tokens = spec_tokens, None
    method = spec.pop("method", None)
    if method not in (None, "custom_class", "nfoxhead", "medusa"):
        raise NFoxHeadError(
            f"speculative method {method!r} cannot use NFoxHead heads",
            "drop 'method' from the speculative config",
        )
    plugin_opts = {k: spec.pop(k) for k in PLUGIN_KEYS if k in spec}
    spec.update(model=PROPOSER_PATH, method="custom_class")
    args.speculative_config = spec
    extra = dict(args.additional_config or {})
    extra[ADDITIONAL_CONFIG_KEY] = {
        **extra.get(ADDITIONAL_CONFIG_KEY, {}),
        **plugin_opts,
        "heads_dir": os.path.abspath(os.path.expanduser(heads_dir)),
    }
    args.additional_config = extra
    return True


def validate_for_target(args: Any, hidden_size: int, vocab_size: int, base: str,
                        target_model_config: Any = None) -> HeadsConfig:
    """Cheap checks of the heads against the served model, before any engine memory.

    Also fills in `num_speculative_tokens`: for a tree its size; for a chain, unless
    given, the longer of one token per head and the lookup length. A tree over a KV
    cache its verification cannot read falls back to a chain, with one warning.
    """
    opts = NFoxHeadOptions.from_additional_config(args.additional_config)
    check_option_values(opts)
    config = validate_heads_dir(opts.heads_dir)
    check_base_compat(config, hidden_size, vocab_size, base)
    check_feature_layers(args, config, target_model_config)
    plugin_config = args.additional_config[ADDITIONAL_CONFIG_KEY]
    if opts.cost_table is not None:
        plugin_config["cost_table"] = load_cost_table(opts.cost_table)
    spec = args.speculative_config
    tree = tree_for_engine(args, opts, config, target_model_config)
    plugin_config["tree"] = tree
    if tree is not None:
        spec["num_speculative_tokens"] = len(tree)
        gpu_tree_settings(args)
        return config
    num_tokens = chain_num_tokens(spec.get("num_speculative_tokens"), config, opts)
    # num_tokens bounds every draft (vLLM's budget); the heads draft at most one token each.
    plugin_config["chain_tokens"] = min(num_tokens, config.num_heads)
    spec["num_speculative_tokens"] = num_tokens
    return config


def check_feature_layers(args: Any, config: HeadsConfig, target_model_config: Any = None) -> None:
    """A draft layer fed several base layers (vLLM's aux hidden states) needs those layers
    in the served model, and one pipeline stage: vLLM builds the drafter on the last
    stage only, so earlier stages would not pass their layers' states on."""
    layers = config.layer_spec.feature_layers if config.is_draft_layer else ()
    if not layers:
        return
    if int(getattr(args, "pipeline_parallel_size", 1) or 1) > 1:
        raise NFoxHeadError(f"the draft layer reads base layers {list(layers)}, which pipeline parallelism "
                            "does not pass to the last stage here",
                            "serve it with --pipeline-parallel-size 1 (tensor parallelism works), or use a "
                            "draft layer trained without --feature-layers")
    depth = getattr(getattr(target_model_config, "hf_text_config", None), "num_hidden_layers", None)
    if depth is not None and max(layers) > depth:
        raise NFoxHeadError(f"the draft layer reads base layer {max(layers)}, but the served model has {depth} layers",
                            "serve the base model the layer was trained for")


def check_option_values(opts: NFoxHeadOptions) -> None:
    """The plugin keys of --speculative-config that take a fixed set or range of values."""
    if opts.acceptance not in ACCEPTANCE_MODES:
        raise NFoxHeadError(f"unknown acceptance {opts.acceptance!r}",
                            f"use one of {', '.join(ACCEPTANCE_MODES)} ('exact' is lossless)")
    if opts.load_policy not in LOAD_POLICIES:
        raise NFoxHeadError(f"unknown load_policy {opts.load_policy!r}",
                            f"use one of {', '.join(LOAD_POLICIES)} ('auto' shrinks drafts under load)")
    if not isinstance(opts.lookup, int) or isinstance(opts.lookup, bool) or not 0 <= opts.lookup <= MAX_LOOKUP:
        raise NFoxHeadError(f"lookup must be an integer 0..{MAX_LOOKUP}, got {opts.lookup!r}",
                            f"use the most prompt-lookup tokens to draft per step (default {DEFAULT_LOOKUP}; 0 = off)")
    if not isinstance(opts.rank_check_interval, int) or isinstance(opts.rank_check_interval, bool) \
            or opts.rank_check_interval < 0:
        raise NFoxHeadError(f"rank_check_interval must be a non-negative integer, got {opts.rank_check_interval!r}",
                            "use the number of steps between tensor-parallel draft checks (0 = off)")


def tree_for_engine(args: Any, opts: NFoxHeadOptions, config: HeadsConfig,
                    target_model_config: Any = None) -> list[list[int]] | None:
    """The tree this engine drafts (rank paths: the option's tree, else the heads' default),
    or None for a chain. A tree this engine cannot verify exactly (tree_problem) becomes a
    chain with one warning, and the num_speculative_tokens that followed it is dropped."""
    spec = args.speculative_config
    tree = resolve_tree(opts.tree if opts.tree is not None else config.tree, config.num_heads)
    num_tokens = spec.get("num_speculative_tokens")
    if tree is not None and num_tokens is not None and num_tokens != len(tree):
        raise NFoxHeadError(
            f"num_speculative_tokens={num_tokens} but the tree has {len(tree)} nodes",
            "leave num_speculative_tokens out (it follows the tree) or set it to the tree size",
        )
    if tree is not None and (problem := tree_problem(args, target_model_config)):
        logger.warning("NFoxHead: tree verification does not support %s; drafting a chain instead. Fix: %s",
                       *problem)
        spec.pop("num_speculative_tokens", None)  # it followed the tree; the chain takes its own default
        return None
    return tree


def chain_num_tokens(num_tokens: Any, config: HeadsConfig, opts: NFoxHeadOptions) -> int:
    """num_speculative_tokens of a chain: the user's value (None: one token per head, or a
    full lookup draft if that is longer), checked against what heads and lookup can draft."""
    most = max(config.num_heads, opts.lookup)
    if num_tokens is None:
        return most
    if not isinstance(num_tokens, int) or num_tokens < 1:
        raise NFoxHeadError(
            f"num_speculative_tokens must be a positive integer, got {num_tokens!r}",
            f"use 1..{most}",
        )
    if num_tokens > most:
        raise NFoxHeadError(
            f"num_speculative_tokens={num_tokens} but {opts.heads_dir} has only {config.num_heads} heads "
            f"(a chain drafts one token per head) and lookup drafts at most {opts.lookup}",
            f"use num_speculative_tokens <= {most}, or raise \"lookup\"",
        )
    return num_tokens


def kv_cache_dtype(args: Any, target_model_config: Any = None) -> str:
    """The KV cache dtype the engine will use: the user's kv_cache_dtype, or for 'auto'
    the one a checkpoint declares (vLLM resolves it the same way when it builds CacheConfig)."""
    dtype = str(getattr(args, "kv_cache_dtype", None) or "auto")
    if dtype == "auto" and target_model_config is not None:
        from vllm.utils.torch_utils import resolve_kv_cache_dtype_string

        dtype = str(resolve_kv_cache_dtype_string(dtype, target_model_config))
    return dtype


def tree_problem(args: Any, target_model_config: Any = None) -> tuple[str, str] | None:
    """(problem, fix) when this engine cannot verify trees exactly (its drafts are then a
    chain), else None."""
    return (tree_kv_problem(kv_cache_dtype(args, target_model_config))
            or tree_quantization_problem(target_model_config))


# Quantization methods (vLLM names) whose linear layers read activations in the model
# dtype: weight-only. Anything else may quantize activations.
WEIGHT_ONLY_QUANTIZATION = ("gptq", "gptq_marlin", "auto_gptq", "awq", "awq_marlin", "auto_awq",
                            "inc", "moe_wna16", "experts_int8", "int8_per_channel_weight_only")


def activation_quantization(target_model_config: Any) -> str | None:
    """The base's quantization method if it may quantize activations (W8A8 and the like),
    None for an unquantized or weight-only quantized base."""
    method = getattr(target_model_config, "quantization", None)
    if not method or method in WEIGHT_ONLY_QUANTIZATION:
        return None
    if method == "compressed-tensors":
        qcfg = getattr(target_model_config.hf_config, "quantization_config", None) or {}
        groups = (qcfg.get("config_groups") or {}) if isinstance(qcfg, dict) else {}
        if groups and not any(g.get("input_activations") for g in groups.values() if isinstance(g, dict)):
            return None  # weights only
    return str(method)


def tree_quantization_problem(target_model_config: Any) -> tuple[str, str] | None:
    """Trees over a base that quantizes activations, on CPU: the tree rows' attention
    (recomputed in float32 by cpu_tree_attention) rounds differently from vLLM's kernel
    (about 1e-6), and quantizing the next layer's input turns that into logit changes of
    about 1e-3, enough to flip near-tied greedy choices (2 of 32 answers of the tiny
    model under W8A8 int8). Chains are verified by vLLM's own kernel and stay exact."""
    from vllm.platforms import current_platform

    method = activation_quantization(target_model_config) if target_model_config is not None else None
    if method is None or not current_platform.is_cpu():
        return None
    return (f"a base that quantizes activations ({method}) on CPU (tree rows would round differently "
            "from plain decoding)", "serve an unquantized or weight-only quantized base for trees")


KV_FIX = "leave kv_cache_dtype at 'auto' for trees"


def tree_kv_problem(cache_dtype: str) -> tuple[str, str] | None:
    """Why tree verification cannot run over a KV cache of `cache_dtype` here, or None.

    Both tree paths refuse such caches at run time, which would stop the engine:
    the CPU fix-up reads the cache in the model dtype (any dtype but 'auto'), the
    Triton one refuses quantized caches (cpu_tree_attention / triton_tree_attention
    .check_supported).
    """
    from vllm.platforms import current_platform

    if cache_dtype == "auto":
        return None
    if current_platform.is_cpu():
        return f"a KV cache of dtype {cache_dtype} on CPU", KV_FIX
    from vllm.v1.kv_cache_interface import is_quantized_kv_cache

    if is_quantized_kv_cache(cache_dtype):
        return f"a quantized KV cache ({cache_dtype}) on {current_platform.device_name}", KV_FIX
    return None


def gpu_tree_settings(args: Any) -> None:
    """On a GPU, a tree needs vLLM's Triton attention (its kernel takes the tree as
    qq_bias) and PIECEWISE CUDA graphs (FULL graphs replay attention without the
    plugin's tree rows). Set both unless the user chose otherwise; refuse a
    choice that would silently give wrong output."""
    from vllm.config.compilation import CUDAGraphMode
    from vllm.platforms import current_platform

    if current_platform.is_cpu():
        return
    backend = args.attention_backend or getattr(args.attention_config, "backend", None)
    if backend is None:
        args.attention_backend = "TRITON_ATTN"
    mode = args.compilation_config.cudagraph_mode
    if mode is None:
        args.compilation_config.cudagraph_mode = CUDAGraphMode.PIECEWISE
    elif mode.has_full_cudagraphs():
        raise NFoxHeadError(
            f"cudagraph_mode {mode.name} replays attention without the tree mask",
            "use compilation_config={'cudagraph_mode': 'PIECEWISE'}, or 'tree': 'chain'",
        )


def tree_backend_ok(vllm_config: Any) -> bool:
    """Whether this worker's attention backend can verify trees (else: chain, with a warning)."""
    from vllm.platforms import current_platform

    if current_platform.is_cpu():
        return True
    backend = getattr(vllm_config.attention_config, "backend", None)
    return getattr(backend, "name", str(backend)) == "TRITON_ATTN"


def load_cost_table(value: Any) -> dict[str, float]:
    """A cost_table option (a verify_cost JSON file path, or the mapping itself), checked."""
    import json

    from vllm_nfoxhead.core.tree_search import checked_costs

    if isinstance(value, str):
        try:
            with open(os.path.expanduser(value)) as f:
                value = json.load(f)
        except (OSError, json.JSONDecodeError) as exc:
            raise NFoxHeadError(f"cannot read cost_table {value} ({exc})",
                                "write it with `python -m vllm_nfoxhead.tools.verify_cost --model BASE --out cost.json`") from None
    return {str(n): c for n, c in checked_costs(value).items()}


def resolve_tree(tree: Any, num_heads: int) -> list[list[int]] | None:
    """A tree option (None or "chain" for chain drafting, a preset name, JSON text or a
    list of rank paths), checked against the heads."""
    if tree is None or tree == "chain":
        return None
    from vllm_nfoxhead.core.tree import parse_tree

    return parse_tree(tree, num_heads=num_heads).to_list()
