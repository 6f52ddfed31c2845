"""NFoxHead heads as a vLLM module: core residual blocks + vLLM's parallel LM head.

The vocabulary projection uses vLLM's ParallelLMHead/LogitsProcessor (vocab
sharded under tensor parallelism); heads that share the base LM head call the
target model's own `compute_logits`, which also applies its logit scaling.
"""

from __future__ import annotations

import torch
from torch import nn

from ..format import HeadsConfig, head_key, read_heads_tensors
from ..heads import ResidualStack


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
        self.to(dtype)

    def load_weights(self, heads_dir: str) -> None:
        """Load a validated heads directory; call after moving to the target device."""
        tensors = read_heads_tensors(heads_dir, self.config)
        self.residual.load_from(tensors)
        if self.lm_heads is not None:
            for k, lm_head in enumerate(self.lm_heads):
                param = lm_head.weight
                loader = getattr(param, "weight_loader", None)
                src = tensors[head_key(k, None, "weight")].to(param.dtype)
                if loader is None:
                    param.data.copy_(src)
                else:
                    loader(param, src)
                # vLLM's own loader does this after loading (e.g. the CPU build
                # binds its GEMM kernel here: `cpu_linear`).
                lm_head.quant_method.process_weights_after_loading(lm_head)

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
        """Token-conditioned head k: hidden [M, H], context token ids [M, k+1] -> logits [M, V].

        The context embeddings come from the target model's own embedding layer
        (`embed_input_ids`), as in training.
        """
        m, j = context.shape
        embeds = self.target_model[0].embed_input_ids(context.reshape(-1)).view(m, j, -1)  # [M, k+1, H]
        state = self.residual.head_state(k, hidden, embeds.to(hidden.dtype))  # [M, H]
        if self.lm_heads is None:
            return self.target_model[0].compute_logits(state)
        return self.logits_processor(self.lm_heads[k], state)
