"""NFoxHead heads as a vLLM module: core residual blocks + vLLM's parallel LM head.

The vocabulary projection uses vLLM's ParallelLMHead/LogitsProcessor (vocab
sharded under tensor parallelism); heads that share the base LM head call the
target model's own `compute_logits`, which also applies its logit scaling.

Heads with a draft vocabulary (format `draft_vocab`, FR-Spec's trick) project
token-conditioned head states onto those rows only: a `ParallelLMHead` of V'
rows copied from the (shared or own) LM head, run through vLLM's own GEMM path,
as are the residual blocks and token fusions (integration/vllm_linear.py).
Drafting is then about V/V' times cheaper; only ids in the draft vocabulary can
be proposed. Logit scaling and soft-capping are monotonic, so the top-k within
the subset match the full projection's ordering. A quantized shared LM head
(or one vLLM's CPU build repacked) holds no float rows: its rows are read back
through its own GEMM (`local_rows`).
"""

from __future__ import annotations

import torch
from torch import nn

from vllm_nfoxhead.core.format import DRAFT_VOCAB_KEY, HeadsConfig, head_key, read_heads_tensors
from vllm_nfoxhead.core.heads import ResidualStack
from vllm_nfoxhead.integration.vllm_linear import use_vllm_gemms


def load_projection(head: nn.Module, weight: torch.Tensor) -> None:
    """Load a ParallelLMHead's [V, H] weight the way vLLM's own loader does."""
    param = head.weight
    src = weight.to(param.dtype)
    loader = getattr(param, "weight_loader", None)
    if loader is None:
        param.data.copy_(src)
    else:
        loader(param, src)
    # vLLM's loader does this after loading (e.g. the CPU build binds its GEMM
    # kernel here: `cpu_linear`).
    head.quant_method.process_weights_after_loading(head)


def vocab_rows(lm_head: nn.Module, ids: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Rows `ids` [V'] (global token ids) of a vocab-parallel LM head -> [V', H] on every rank.

    Under tensor parallelism each rank holds rows org_vocab_start..end of the
    vocabulary; each fills the requested rows it holds, zeros elsewhere, and an
    all-reduce over the TP group assembles them (V' x H moved, never the whole
    head). Without TP this is a plain index_select.
    """
    from vllm.distributed import tensor_model_parallel_all_reduce

    shard = lm_head.shard_indices
    local = (ids >= shard.org_vocab_start_index) & (ids < shard.org_vocab_end_index)  # [V']
    device = ids.device
    rows = torch.zeros(ids.shape[0], lm_head.embedding_dim, dtype=dtype, device=device)
    rows[local] = local_rows(lm_head, ids[local] - shard.org_vocab_start_index, dtype)
    return tensor_model_parallel_all_reduce(rows)


def plain_weight(lm_head: nn.Module) -> torch.Tensor | None:
    """The LM head's float [V/tp, H] weight when it holds one, else None.

    A quantized head (a quantized base's `lm_head`, or a tied head whose embedding is
    quantized) stores packed or integer weights, and vLLM's CPU build repacks even an
    unquantized head left out of a quantization config (UnquantizedLinearMethod) for
    its GEMM and empties `weight`: such rows must not be read as float rows.
    """
    from vllm.model_executor.layers.vocab_parallel_embedding import UnquantizedEmbeddingMethod

    weight = getattr(lm_head, "weight", None)
    if (isinstance(lm_head.quant_method, UnquantizedEmbeddingMethod) and isinstance(weight, torch.Tensor)
            and weight.dim() == 2 and weight.shape[1] == lm_head.embedding_dim and weight.is_floating_point()):
        return weight
    return None


# Identity rows per GEMM when a quantized LM head is read back (bounds the [c, V/tp] output).
DEQUANT_CHUNK = 64


def local_rows(lm_head: nn.Module, local_ids: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Rows `local_ids` (this rank's row indices) of an LM head as float rows [n, H].

    A plain head: its weight rows. Any other head: its own GEMM (the quant method
    vLLM's LogitsProcessor calls) applied to the identity, which returns W^T one
    block of hidden dimensions at a time: exact for weight-only quantization and
    for activations quantized per token (a one-hot row quantizes exactly); a
    static activation scale at most scales every row by the same positive factor,
    which keeps each draft's ranking.
    """
    weight = plain_weight(lm_head)
    if weight is not None:
        return weight.index_select(0, local_ids).to(dtype)
    hidden = lm_head.embedding_dim
    eye = torch.eye(hidden, dtype=dtype, device=local_ids.device)
    cols = [lm_head.quant_method.apply(lm_head, eye[i: i + DEQUANT_CHUNK]).index_select(1, local_ids)
            for i in range(0, hidden, DEQUANT_CHUNK)]  # [c, n] each
    return torch.cat(cols).t().contiguous()  # [n, H]


class VllmNFoxHeads(nn.Module):
    """Heads next to a loaded vLLM target model (same device and dtype)."""

    def __init__(self, config: HeadsConfig, target_model: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        from vllm.model_executor.layers.logits_processor import LogitsProcessor
        from vllm.model_executor.layers.vocab_parallel_embedding import ParallelLMHead

        self.config = config
        self.target_model = [target_model]  # a list: not registered as a submodule
        self.residual = ResidualStack(config.num_heads, config.num_layers, config.hidden_size,
                                      config.token_conditioned)
        self.lm_heads: nn.ModuleList | None = None
        if not config.shared_lm_head:
            self.lm_heads = nn.ModuleList(
                ParallelLMHead(config.vocab_size, config.hidden_size, params_dtype=dtype,
                               prefix=f"nfoxhead.lm_heads.{k}")
                for k in range(config.num_heads)
            )
            self.logits_processor = LogitsProcessor(config.vocab_size)
        self.draft_heads: nn.ModuleList | None = None
        if config.draft_vocab_size and config.token_conditioned:
            n = 1 if config.shared_lm_head else config.num_heads
            self.draft_heads = nn.ModuleList(
                ParallelLMHead(config.draft_vocab_size, config.hidden_size, params_dtype=dtype,
                               prefix=f"nfoxhead.draft_heads.{k}") for k in range(n))
            self.draft_logits = LogitsProcessor(config.draft_vocab_size)
        self.register_buffer("draft_vocab", None, persistent=False)  # [V'] int64 on the device
        self.to(dtype)

    def load_weights(self, heads_dir: str) -> None:
        """Load a validated heads directory; call after moving to the target device."""
        tensors = read_heads_tensors(heads_dir, self.config)
        self.residual.load_from(tensors)
        if self.lm_heads is not None:
            for k, lm_head in enumerate(self.lm_heads):
                load_projection(lm_head, tensors[head_key(k, None, "weight")])
        if self.draft_heads is not None:
            self._load_draft_heads(tensors)
        use_vllm_gemms(self.residual)  # last: it replaces the blocks' weights by vLLM's layers

    def _load_draft_heads(self, tensors: dict[str, torch.Tensor]) -> None:
        """Copy the draft-vocabulary rows of the LM head(s) into the draft heads."""
        param = next(self.residual.parameters())
        ids = tensors[DRAFT_VOCAB_KEY].to(param.device)
        self.draft_vocab = ids
        for k, draft in enumerate(self.draft_heads):
            with torch.no_grad():
                rows = (vocab_rows(self.target_model[0].lm_head, ids, param.dtype) if self.lm_heads is None
                        else tensors[head_key(k, None, "weight")].to(param.device).index_select(0, ids))
            load_projection(draft, rows)  # [V', H]

    @torch.inference_mode()
    def logits(self, hidden: torch.Tensor, num_heads: int) -> torch.Tensor:
        """Medusa heads: hidden [B, H] -> logits of the first `num_heads` heads [K, B, V]."""
        heads = self.residual.heads[:num_heads]
        states = torch.stack([head(hidden) for head in heads])  # [K, B, H]
        if self.lm_heads is None:
            k, b, h = states.shape
            flat = self.target_model[0].compute_logits(states.reshape(k * b, h))
            return flat.reshape(k, b, -1)
        return torch.stack(
            [self.logits_processor(self.lm_heads[i], states[i]) for i in range(num_heads)]
        )

    @torch.inference_mode()
    def head_logits(self, k: int, hidden: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """Token-conditioned head k: hidden [M, H], context token ids [M, k+1] -> logits [M, V]
        (or [M, V'] over `draft_vocab` when the heads have one).

        The context embeddings come from the target model's own embedding layer
        (`embed_input_ids`), as in training.
        """
        m, j = context.shape
        embeds = self.target_model[0].embed_input_ids(context.reshape(-1)).view(m, j, -1)  # [M, k+1, H]
        state = self.residual.head_state(k, hidden, embeds.to(hidden.dtype))  # [M, H]
        if self.draft_heads is not None:  # [M, V'] over self.draft_vocab
            return self.draft_logits(self.draft_heads[0 if self.lm_heads is None else k], state)
        if self.lm_heads is None:
            return self.target_model[0].compute_logits(state)
        return self.logits_processor(self.lm_heads[k], state)
