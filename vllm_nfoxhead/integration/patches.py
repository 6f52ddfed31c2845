"""Every change this plugin makes to vLLM internals, in one place.

Each patch names the vLLM function it wraps, is idempotent (vLLM loads general
plugins once per process, and several processes load them), and is applied
only on a vLLM version listed in SUPPORTED_VLLM.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any, Callable

from vllm_nfoxhead.core.errors import NFoxHeadError
from vllm_nfoxhead.integration.supported import SUPPORTED_VLLM, is_supported  # the one list of supported series

if TYPE_CHECKING:
    from vllm_nfoxhead.core.tree import Tree
    from vllm_nfoxhead.integration.options import NFoxHeadOptions

_MARK = "_nfoxhead_wrapped"


def vllm_version() -> str:
    """The installed vLLM's version string ("unknown" if it has none)."""
    import vllm

    return str(getattr(vllm, "__version__", "unknown"))


def check_supported_vllm() -> None:
    """Fail loudly on a vLLM whose internals these patches were not written for."""
    version = vllm_version()
    if not is_supported(version):
        raise NFoxHeadError(
            f"vLLM {version} is not supported (supported: {', '.join(v + '.x' for v in SUPPORTED_VLLM)})",
            "install a supported vLLM, e.g. `pip install 'vllm-nfoxhead[cuda]'` or `[cpu]`",
        )


def _wrap(owner: Any, name: str, make: Callable[[Callable[..., Any]], Callable[..., Any]],
          static: bool = False) -> None:
    """Replace `owner.name` (owner's own, not inherited) by `make(original)`, once per process.

    static: the attribute is a staticmethod and stays one.
    """
    original = owner.__dict__[name]
    inner = original.__func__ if isinstance(original, staticmethod) else original
    if getattr(inner, _MARK, False):
        return
    wrapped = functools.wraps(inner)(make(inner))
    setattr(wrapped, _MARK, True)
    setattr(owner, name, staticmethod(wrapped) if static else wrapped)


def patch_engine_args() -> None:
    """Config translation and the `--speculative-model` flag (front-end process)."""
    from vllm.engine.arg_utils import EngineArgs

    from vllm_nfoxhead.integration.options import translate_engine_args, validate_for_target
    from vllm_nfoxhead.integration.parallel import check_pipeline_parallel
    from vllm.platforms import current_platform

    # Wraps vllm.engine.arg_utils.EngineArgs.create_speculative_config: turn
    # `nfoxhead:DIR` into the custom_class proposer and check the heads against
    # the target model before the engine (and its KV cache) exists.
    def make_create(orig: Callable[..., Any]) -> Callable[..., Any]:
        def create_speculative_config(self, target_model_config, target_parallel_config):
            if translate_engine_args(self):
                check_supported_vllm()
                check_pipeline_parallel(
                    self, target_parallel_config.pipeline_parallel_size,
                    str(target_parallel_config.distributed_executor_backend or ""), vllm_version(),
                    on_cpu=current_platform.is_cpu())
                validate_for_target(
                    self,
                    hidden_size=target_model_config.get_hidden_size(),
                    vocab_size=target_model_config.get_vocab_size(),
                    base=str(target_model_config.model),
                    target_model_config=target_model_config,
                )
            return orig(self, target_model_config, target_parallel_config)

        return create_speculative_config

    # Wraps vllm.engine.arg_utils.EngineArgs.add_cli_args: older vLLM's flag names as aliases.
    def make_add(orig: Callable[..., Any]) -> Callable[..., Any]:
        def add_cli_args(parser):
            return add_alias_flags(orig(parser))

        return add_cli_args

    _wrap(EngineArgs, "create_speculative_config", make_create)
    _wrap(EngineArgs, "add_cli_args", make_add, static=True)


def add_alias_flags(parser: Any) -> Any:
    """Older vLLM's --speculative-model / --num-speculative-tokens as aliases of
    --spec-model / --spec-tokens, on vLLM's own parser (returned, as add_cli_args does)."""
    group = parser.add_argument_group("NFoxHead speculative decoding (vllm-nfoxhead)")
    group.add_argument(
        "--speculative-model", dest="spec_model", default=None,
        help="Alias of --spec-model. 'nfoxhead:HEADS_DIR' speculates with "
             "the NFoxHead heads in HEADS_DIR.",
    )
    group.add_argument(
        "--num-speculative-tokens", dest="spec_tokens", type=int, default=None,
        help="Alias of --spec-tokens: tokens drafted per step "
             "(NFoxHead default: one per head).",
    )
    return parser


def patch_model_runner(proposer_cls: type) -> None:
    """Runner hooks for NFoxHead (worker process); applied when the proposer is built.

    `proposer_cls` is the proposer class whose instances the hooks serve (passed in
    by the proposer itself, so this module does not import it).
    """
    check_supported_vllm()
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    # Wraps GPUModelRunner.propose_draft_token_ids (CPUModelRunner inherits it):
    # vLLM's custom_class call passes no hidden states, so the proposer first gets,
    # per request, the post-norm hidden state of its last accepted token (the row
    # 0.32's Medusa used for chains; the accepted tree node for trees).
    def make_propose(orig: Callable[..., Any]) -> Callable[..., Any]:
        def propose_draft_token_ids(self, scheduler_output, sampled_token_ids, sampling_metadata,
                                    hidden_states, sample_hidden_states, aux_hidden_states,
                                    spec_decode_metadata, *args, **kwargs):
            drafter = getattr(self, "drafter", None)
            if isinstance(drafter, proposer_cls) and isinstance(sampled_token_ids, list):
                drafter.set_step_inputs(self, scheduler_output, sample_hidden_states,
                                        sampled_token_ids, spec_decode_metadata, aux_hidden_states)
            return orig(self, scheduler_output, sampled_token_ids, sampling_metadata,
                        hidden_states, sample_hidden_states, aux_hidden_states,
                        spec_decode_metadata, *args, **kwargs)

        return propose_draft_token_ids

    # Wraps GPUModelRunner._prepare_inputs: after vLLM assigned consecutive
    # positions and KV slots, tree requests get RoPE positions ctx + depth, and
    # the step's tree layout is published to the attention override and sampler.
    # A draft layer fed several base layers keeps the logit rows' token indices
    # (the first of the returned tuple), to pick its aux hidden states' rows.
    def make_prepare(orig: Callable[..., Any]) -> Callable[..., Any]:
        def _prepare_inputs(self, scheduler_output, *args, **kwargs):
            result = orig(self, scheduler_output, *args, **kwargs)
            drafter = getattr(self, "drafter", None)
            if isinstance(drafter, proposer_cls):
                if drafter.tree is not None:
                    start_tree_step(self, scheduler_output, drafter.tree_of, drafter.options)
                if drafter.feature_layers:
                    drafter.logits_indices = result[0]
            return result

        return _prepare_inputs

    # Wraps GPUModelRunner._setup_eagle3_aux_hidden_state_outputs (called by the GPU
    # and CPU runners' load_model after the drafter is loaded): a draft layer fed
    # several base layers turns on vLLM's aux hidden states of exactly those layers,
    # as EAGLE-3 does; a model that cannot return them is refused here, at start-up.
    def make_setup_aux(orig: Callable[..., Any]) -> Callable[..., Any]:
        def _setup_eagle3_aux_hidden_state_outputs(self):
            drafter = getattr(self, "drafter", None)
            layers = drafter.feature_layers if isinstance(drafter, proposer_cls) else ()
            if not layers:
                return orig(self)
            from vllm.model_executor.models.interfaces import supports_eagle3

            model = self.get_model()
            if not supports_eagle3(model):
                raise NFoxHeadError(
                    f"the draft layer reads base layers {list(layers)}, but vLLM's {type(model).__name__} cannot "
                    "return them (no EAGLE-3 aux hidden states)",
                    "serve a model whose vLLM class supports EAGLE-3 (e.g. Llama, Qwen), or a draft layer "
                    "trained without --feature-layers")
            self.use_aux_hidden_state_outputs = True
            model.set_aux_hidden_state_layers(tuple(layers))

        return _setup_eagle3_aux_hidden_state_outputs

    _wrap(GPUModelRunner, "propose_draft_token_ids", make_propose)
    _wrap(GPUModelRunner, "_prepare_inputs", make_prepare)
    _wrap(GPUModelRunner, "_setup_eagle3_aux_hidden_state_outputs", make_setup_aux)
    patch_cpu_attention()
    patch_cpu_expand()
    patch_triton_attention()


def start_tree_step(runner: Any, scheduler_output: Any, tree_of: dict[str, Tree],
                    options: NFoxHeadOptions) -> None:
    """Publish this step's tree layout (tree_step.build_step) to the attention override and the
    sampler, installing the tree sampler on first use; after vLLM's _prepare_inputs.

    tree_of: req_id -> the tree its last draft filled (absent: a chain).
    """
    from vllm_nfoxhead.integration.tree_sampler import TreeRejectionSampler
    from vllm_nfoxhead.integration.tree_step import build_step, set_current_step

    if not isinstance(runner.rejection_sampler, TreeRejectionSampler):
        runner.rejection_sampler = TreeRejectionSampler(runner.rejection_sampler, options)
    step = build_step(runner, scheduler_output, tree_of)
    if step.requests and runner.compilation_config.cudagraph_mode.has_full_cudagraphs():
        raise RuntimeError(
            "NFoxHead: tree verification needs cudagraph_mode PIECEWISE (FULL CUDA graphs "
            "replay attention without the tree mask). Fix: pass "
            "compilation_config={'cudagraph_mode': 'PIECEWISE'}, or drop 'tree' to use "
            "chain drafting.")
    set_current_step(step)


def patch_cpu_attention() -> None:
    """Tree mask on vLLM's CPU attention backend.

    Wraps vllm.v1.attention.backends.cpu_attn.CPUAttentionBackendImpl.forward:
    the kernel runs as usual, then the rows of tree requests are recomputed with
    the tree mask (cpu_tree_attention.fix_tree_rows). No-op without a tree step.
    """
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return
    from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackendImpl

    from vllm_nfoxhead.integration.cpu_tree_attention import fix_tree_rows
    from vllm_nfoxhead.integration.tree_step import current_step

    def make(orig: Callable[..., Any]) -> Callable[..., Any]:
        def forward(self, layer, query, key, value, kv_cache, attn_metadata, output, *args, **kwargs):
            result = orig(self, layer, query, key, value, kv_cache, attn_metadata, output, *args, **kwargs)
            step = current_step()
            if step is not None and step.requests and attn_metadata is not None:
                fix_tree_rows(self, layer, query, key, value, kv_cache, attn_metadata, output, step)
            return result

        return forward

    _wrap(CPUAttentionBackendImpl, "forward", make)


def expand_batch_to_tokens(x: Any, cu_num_tokens: Any, num_tokens: int,
                           replace_from: int = 0, replace_to: int = 0) -> Any:
    """Per-request values x [B] repeated over each request's tokens -> [num_tokens],
    values equal to `replace_from` replaced by `replace_to` (vLLM's semantics).

    cu_num_tokens [B]: cumulative token counts. Plain torch, any device and dtype.
    """
    import torch

    counts = torch.diff(cu_num_tokens.long(), prepend=cu_num_tokens.new_zeros(1).long())
    expanded = x.repeat_interleave(counts, output_size=num_tokens)
    if replace_from != replace_to:
        expanded = expanded.masked_fill(expanded == replace_from, replace_to)
    return expanded


def patch_cpu_expand() -> None:
    """Correct per-token sampling parameters for speculative sampling on vLLM's CPU build.

    Wraps vllm.v1.sample.rejection_sampler.expand_batch_to_tokens (CPU only, 0.32
    and 0.33): the CPU build replaces its Triton `expand_kernel` with a C++ stand-in
    (vllm.utils.cpu_triton_utils._expand_kernel_impl) that converts the output
    and input to int64 copies and never copies the result back, so the rejection
    sampler divides by uninitialised temperatures and applies garbage top-k/top-p.
    Chain drafts sampled at temperature 0.25 were then far from plain sampling
    (chi-square p < 1e-200, tests/test_engine_sampling.py). Replaced by a torch
    expansion; the rejection sampler looks the name up at call time.
    """
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return
    from vllm.v1.sample import rejection_sampler

    def make(orig: Callable[..., Any]) -> Callable[..., Any]:
        def expand(x, cu_num_tokens, num_tokens, replace_from=0, replace_to=0):
            return expand_batch_to_tokens(x, cu_num_tokens, num_tokens, replace_from, replace_to)

        return expand

    _wrap(rejection_sampler, "expand_batch_to_tokens", make)


def patch_triton_attention() -> None:
    """Tree mask on vLLM's Triton attention backend (GPU).

    Wraps vllm.v1.attention.backends.triton_attn.TritonAttentionImpl.forward:
    the kernel runs as usual, then the rows of tree requests are recomputed by
    one more unified_attention call per tree mask, the tree as qq_bias
    (triton_tree_attention.fix_tree_rows_triton). No-op without a tree step.
    Needs cudagraph_mode PIECEWISE or NONE: FULL graphs replay without this code
    (options.gpu_tree_settings sets PIECEWISE; the runner patch checks it).
    """
    from vllm.platforms import current_platform

    if current_platform.is_cpu():
        return
    from vllm.v1.attention.backends.triton_attn import TritonAttentionImpl
    # Names the tree step imports lazily, resolved now: a vLLM that moved one fails
    # at start-up with an ImportError, not at the first tree step inside the engine.
    from vllm.v1.attention.ops.triton_unified_attention import unified_attention  # noqa: F401
    from vllm.v1.kv_cache_interface import is_quantized_kv_cache  # noqa: F401
    from vllm.v1.sample.ops.topk_topp_sampler import apply_top_k_top_p  # noqa: F401

    from vllm_nfoxhead.integration.tree_step import current_step
    from vllm_nfoxhead.integration.triton_tree_attention import fix_tree_rows_triton

    def make(orig: Callable[..., Any]) -> Callable[..., Any]:
        def forward(self, layer, query, key, value, kv_cache, attn_metadata, output,
                    output_scale=None, output_block_scale=None):
            result = orig(self, layer, query, key, value, kv_cache, attn_metadata, output,
                          output_scale=output_scale, output_block_scale=output_block_scale)
            step = current_step()
            if step is not None and step.requests and attn_metadata is not None:
                fix_tree_rows_triton(self, layer, query, key, value, kv_cache, attn_metadata,
                                     output, step, output_scale=output_scale)
            return result

        return forward

    _wrap(TritonAttentionImpl, "forward", make)
