"""NFoxHeadProposer: vLLM's `custom_class` speculative proposer for NFoxHead heads.

vLLM builds it in the model runner (`create_custom_proposer(vllm_config)`),
calls `load_model(target_model)` once weights are loaded, and calls `propose`
after each step's bookkeeping. The runner patch (patches.patch_model_runner)
hands it the step's hidden states first, since vLLM's call does not.

Drafts are a chain (top-1 of each head) or, with a tree configured, the tree's
nodes in parent-first order; requests whose sampling needs a chain
(penalties, logprobs, allowed/bad words, pending min_tokens, custom logits
processors, structured output) get a chain. A
request whose last tokens occurred before drafts the prompt-lookup continuation
instead (lookup.py). How much to draft for the step's batch size comes from the
load policy, corrected at run time by measured step times and acceptance
(rate_tuner.py).
"""

from __future__ import annotations

import functools
import logging
import time
from typing import Any

import numpy as np
import torch
from torch import nn

from vllm_nfoxhead.core.drafting import ChainDrafter, HeadStep
from vllm_nfoxhead.core.layer_drafting import LayerStep, Windows
from vllm_nfoxhead.core.tree import Tree, TreeDrafter, parse_tree
from vllm_nfoxhead.core.errors import NFoxHeadError
from vllm_nfoxhead.core.format import validate_heads_dir
from vllm_nfoxhead.core.lookup import lookup_draft
from vllm_nfoxhead.core.dtype_choice import cpu_bf16_native
from vllm_nfoxhead.core.load_policy import DraftShape, LoadPolicy, cpu_defaults
from vllm_nfoxhead.core.rate_tuner import HEADS, LOOKUP, TREE, RateTuner
from vllm_nfoxhead.integration import logger
from vllm_nfoxhead.integration.options import NFoxHeadOptions, tree_backend_ok
from vllm_nfoxhead.integration.patches import patch_model_runner
from vllm_nfoxhead.integration.rank_sync import RankSync
from vllm_nfoxhead.integration.tree_step import current_step, set_current_step


class NFoxHeadProposer:
    """Drafts tokens from the target's last hidden state with NFoxHead heads."""

    def __init__(self, vllm_config: Any) -> None:
        spec = vllm_config.speculative_config
        self.options = NFoxHeadOptions.from_additional_config(vllm_config.additional_config)
        self.heads_config = readable_heads(self.options.heads_dir)
        self.max_model_len: int = vllm_config.model_config.max_model_len
        self.dtype: torch.dtype = vllm_config.model_config.dtype
        chain_tokens = self.options.chain_tokens or spec.num_speculative_tokens
        self.chain = ChainDrafter(min(chain_tokens, self.heads_config.num_heads))
        self.lookup = min(self.options.lookup, spec.num_speculative_tokens)  # 0: heads only
        self.tree: TreeDrafter | None = None
        if self.options.tree is not None:
            self.tree = self._tree_if_supported(vllm_config, self.options.tree)
        self.policy = self._load_policy()
        self.tuner = (RateTuner(self.policy.shapes, self.policy.choose, lookup_cap=self.lookup_cap,
                                on_switch=report_switch)
                      if self.policy is not None and self.options.load_policy == "auto" else None)
        # The previous propose call, for the tuner: (batch, shape, request ids, start time).
        self._last_step: tuple[int, DraftShape, tuple[str, ...], float] | None = None
        self._drafted: dict[str, tuple[str, int]] = {}  # req_id -> (source, tokens) of the last call
        self.heads: nn.Module | None = None
        self.sync: RankSync | None = None  # the TP group, known once the model is loaded
        # Per step, set by the runner patch before `propose`.
        self._hidden: torch.Tensor | None = None  # [B, H]
        # Draft layer only: the step's logit-row hidden states [R, H] and, per request,
        # the rows of its accepted positions (their entries join the request's window).
        self.windows: Windows | None = None
        # A layer fed several of the base's layers (EAGLE-3): vLLM's aux hidden states of
        # these layers, and the step's logit rows' token indices (set by the runner patch).
        self.feature_layers: tuple[int, ...] = (self.heads_config.layer_spec.feature_layers
                                                if self.heads_config.is_draft_layer else ())
        self.logits_indices: torch.Tensor | None = None  # [R] int64
        self._step_aux: list[torch.Tensor] | None = None  # per feature layer [num_tokens, H]
        self._step_rows: torch.Tensor | None = None
        self._entry_rows: list[list[int]] = []
        self._has_token: list[bool] = []
        self._wants_tree: list[bool] = []
        self._req_ids: list[str] = []
        self.tree_of: dict[str, Tree] = {}  # req_id -> tree of its last draft (absent: chain)
        patch_model_runner(NFoxHeadProposer)

    @staticmethod
    def _tree_if_supported(vllm_config: Any, paths: list[list[int]]) -> TreeDrafter | None:
        from vllm.platforms import current_platform

        if not tree_backend_ok(vllm_config):
            logger.warning("NFoxHead: tree verification needs the TRITON_ATTN attention backend on %s; "
                           "drafting a chain instead", current_platform.device_name)
            return None
        return TreeDrafter(parse_tree(paths))

    def _load_policy(self) -> LoadPolicy | None:
        """Shrink drafts under load (load_policy.py) when accuracies and costs are known."""
        from vllm.platforms import current_platform

        accuracy = self.heads_config.extra.get("rank_accuracy")
        # On CPU the defaults measured on the project's CPU of the same kind: bf16 native
        # (served in bf16) or not (served in float32). A user's own table is taken as
        # complete (no tree overhead added).
        cpu_cost, cpu_overhead = cpu_defaults(cpu_bf16_native() or self.dtype != torch.float32)
        costs = self.options.cost_table or (cpu_cost if current_platform.is_cpu() else None)
        if self.options.load_policy == "off" or accuracy is None or costs is None:
            return None
        paths = self.tree.tree.paths if self.tree else None
        overhead = cpu_overhead if current_platform.is_cpu() and not self.options.cost_table else 0.0
        return LoadPolicy(accuracy, costs, self.chain.num_heads_used, paths, tree_overhead=overhead,
                          lookup=self.lookup > 0 and self.options.load_policy == "auto")

    def load_model(self, target_model: nn.Module) -> None:
        """Build the heads next to the loaded target model (its device) and read their weights."""
        from vllm_nfoxhead.integration.draft_layer_vllm import VllmDraftLayer
        from vllm_nfoxhead.integration.heads_vllm import VllmNFoxHeads

        device = next(target_model.parameters()).device
        cls = VllmDraftLayer if self.heads_config.is_draft_layer else VllmNFoxHeads
        heads = cls(self.heads_config, target_model, self.dtype).to(device)
        heads.load_weights(self.options.heads_dir)
        self.heads = heads.eval()
        if self.heads_config.is_draft_layer:
            self.windows = Windows(self.heads_config.layer_spec.window)
        self.sync = RankSync()
        logger.info(
            "NFoxHead: %s from %s (%s LM head), drafting %s",
            f"a draft layer (window {self.windows.window})" if self.windows else f"{self.heads_config.num_heads} heads",
            self.options.heads_dir, "shared" if self.heads_config.shared_lm_head else "own",
            f"a tree of {self.tree.tree.num_nodes} nodes" if self.tree else
            f"a chain of {self.chain.num_heads_used}",
        )
        if self.policy is not None:
            logger.info("NFoxHead load policy: %s", self.policy.describe())

    def set_step_inputs(self, runner: Any, scheduler_output: Any, sample_hidden_states: torch.Tensor,
                        sampled_token_ids: list[list[int]], spec_decode_metadata: Any,
                        aux_hidden_states: list[torch.Tensor] | None = None) -> None:
        """Pick each request's hidden state at its last accepted token, and its draft kind.

        sample_hidden_states [num_logit_rows, H] holds, per request, one row per
        drafted token plus one (or a single row when nothing was drafted).
        aux_hidden_states: per feature layer [num_tokens, H] (a layer with feature
        layers only; vLLM computes them because the runner patch asked for them).
        """
        step, batch = current_step(), runner.input_batch
        accepted = {r.batch_index: r.accepted for r in step.requests} if step else {}
        if sample_hidden_states.shape[0] == len(sampled_token_ids):
            entry_rows = [[i] for i in range(len(sampled_token_ids))]
        else:
            entry_rows, offset = [], 0
            for i, (num_draft, tokens) in enumerate(
                    zip(spec_decode_metadata.num_draft_tokens, sampled_token_ids)):
                # Rows of the accepted positions: the root, then the accepted tree nodes
                # (row = node + 1) or the accepted chain prefix.
                path = [0, *(n + 1 for n in accepted[i])] if accepted.get(i) else list(range(max(len(tokens), 1)))
                entry_rows.append([offset + r for r in path])
                offset += num_draft + 1
        index = torch.tensor([r[-1] for r in entry_rows], device=sample_hidden_states.device)  # [B] int64
        self._hidden = sample_hidden_states.index_select(0, index)  # [B, H]
        if self.windows is not None:
            self._step_rows, self._entry_rows = sample_hidden_states, entry_rows
            self._step_aux = aux_hidden_states if self.feature_layers else None
        self._has_token = [len(t) > 0 for t in sampled_token_ids]
        self._req_ids = list(batch.req_ids[: len(sampled_token_ids)])
        structured = bool(getattr(scheduler_output, "has_structured_output_requests", False))
        self._wants_tree = [self.tree is not None and not structured and tree_eligible(batch, i)
                            for i in range(len(sampled_token_ids))]
        set_current_step(None)

    def _measure(self, sampled_token_ids: list[list[int]]) -> None:
        """Tell the tuner what the previous call's drafts yielded and how long the step took.

        Acceptance counts for every request that drafted. Step time counts only
        when the batch is the same decoding requests as before: a step with a
        new prefill or an idle gap says nothing about the shape.
        """
        now, last, drafted = time.perf_counter(), self._last_step, self._drafted
        self._last_step, self._drafted = None, {}
        if self.tuner is None or last is None:
            return
        batch, shape, req_ids, started = last
        for i, req_id in enumerate(self._req_ids):
            if req_id in drafted and sampled_token_ids[i]:
                source, num = drafted[req_id]
                self.tuner.record_request(shape, source, num, len(sampled_token_ids[i]) - 1)
        if all(self._has_token) and tuple(self._req_ids) == req_ids:
            self.tuner.record_time(batch, shape, self.sync.skew(now - started, shape.kind))

    def _plan(self) -> tuple[DraftShape | None, bool, int]:
        """(shape, draft the tree?, chain length) for this step's batch; shape None: no policy.

        Decided on TP rank 0 and shared: the tuner learns from each rank's own
        clock, and ranks that drafted different shapes would hang in collectives.
        """
        batch = sum(self._has_token)
        chooser = self.tuner or self.policy
        shape = self.sync.share(chooser.choose(batch) if chooser else None)
        if shape is not None:
            self._last_step = (batch, shape, tuple(self._req_ids), time.perf_counter())
        use_tree = self.tree is not None and any(self._wants_tree) and (shape is None or shape.kind == "tree")
        chain_len = shape.nodes if shape is not None and shape.kind == "chain" else self.chain.num_heads_used
        return shape, use_tree, chain_len

    def lookup_cap(self, shape: DraftShape | None) -> int:
        """Most lookup tokens under `shape`: all of them with the full chain or the tree,
        the plan's chain length when load shortened it, none without drafts."""
        if shape is None or shape.kind in ("tree", "lookup") or (
                shape.kind == "chain" and shape.nodes == self.chain.num_heads_used):
            return self.lookup
        return min(shape.nodes, self.lookup) if shape.kind == "chain" else 0

    def propose(
        self,
        sampled_token_ids: list[list[int]],
        num_tokens_no_spec: np.ndarray,
        token_ids_cpu: np.ndarray,
        slot_mappings: Any = None,
    ) -> list[list[int]]:
        """Draft tokens per request; [] for requests that produced no token."""
        hidden, self._hidden = self._hidden, None
        self._measure(sampled_token_ids)
        if self.windows is not None and hidden is not None:
            self._update_windows(sampled_token_ids, num_tokens_no_spec)
        if hidden is None or self.heads is None or not any(self._has_token):
            return [[] for _ in sampled_token_ids]
        self.tree_of = {}
        shape, use_tree, chain_len = self._plan()
        if shape is not None and shape.kind == "none":
            return [[] for _ in sampled_token_ids]  # speculation would cost more than it gains
        drafts = self._draft_lookup(num_tokens_no_spec, token_ids_cpu, self.lookup_cap(shape))
        from_lookup = set(drafts)
        active = [i for i, ok in enumerate(self._has_token) if ok and i not in drafts]
        if shape is not None and shape.kind == "lookup":  # heads do not pay: copied tokens only
            for _ in active:
                self.tuner.record_miss()
            active = []
        tree_rows = [i for i in active if use_tree and self._wants_tree[i]]
        in_tree = set(tree_rows)
        chain_rows = [i for i in active if i not in in_tree]
        if tree_rows or chain_rows:  # else every request drafts from lookup
            draft_heads = self._draft_conditioned if self.heads_config.token_conditioned else self._draft_medusa
            drafts.update(draft_heads(hidden, sampled_token_ids, tree_rows, chain_rows, chain_len))
        out: list[list[int]] = []
        for i, req_id in enumerate(self._req_ids):
            room = max(self.max_model_len - int(num_tokens_no_spec[i]), 0)
            out.append(drafts.get(i, [])[:room])
            if i in in_tree:
                self.tree_of[req_id] = self.tree.tree
            if out[-1]:
                source = LOOKUP if i in from_lookup else TREE if i in in_tree else HEADS
                self._drafted[req_id] = (source, len(out[-1]))
        self.sync.check_same(self.options.rank_check_interval, out, self.tree_of)
        return out

    def _update_windows(self, sampled_token_ids: list[list[int]], num_tokens: np.ndarray) -> None:
        """Add each request's accepted positions to its draft-layer window; forget requests
        that left the batch (finished, aborted, preempted).

        Request i's last entry sits at position num_tokens[i] - 2: the position
        whose output is its newest token.
        """
        rows_h, self._step_rows = self._step_rows, None
        self.windows.keep_only(set(self._req_ids))
        live = [i for i, t in enumerate(sampled_token_ids) if t]
        if rows_h is None or not live:
            return
        # Each accepted row pairs with the token it sampled (equal counts by construction).
        count = [min(len(self._entry_rows[i]), len(sampled_token_ids[i])) for i in live]
        rows = [r for i, n in zip(live, count) for r in self._entry_rows[i][:n]]
        ids = [t for i, n in zip(live, count) for t in sampled_token_ids[i][:n]]
        device = rows_h.device
        index = torch.tensor(rows, device=device)  # [R] int64
        with torch.inference_mode():
            z = self.heads.entries(rows_h.index_select(0, index), torch.tensor(ids, device=device),
                                   self._feature_rows(index))  # [R, H]
            self.windows.extend(self.heads.served, [(self._req_ids[i], part, int(num_tokens[i]) - 1 - len(part))
                                                   for i, part in zip(live, z.split(count))])

    def _feature_rows(self, rows: torch.Tensor) -> torch.Tensor | None:
        """The aux hidden states of logit rows `rows` [R]: [R, (P - 1) * H], their feature
        layers side by side (None for a layer without feature layers)."""
        aux, self._step_aux = self._step_aux, None
        if not self.feature_layers:
            return None
        if aux is None or self.logits_indices is None or len(aux) != len(self.feature_layers):
            raise NFoxHeadError(f"the draft layer reads base layers {list(self.feature_layers)}, but vLLM handed "
                                f"over {0 if aux is None else len(aux)} aux hidden states",
                                "report this with the vLLM version and model: the runner patch did not apply")
        tokens = self.logits_indices.index_select(0, rows)  # [R] token rows of the step
        return torch.cat([a.index_select(0, tokens) for a in aux], dim=-1)

    def _draft_lookup(self, num_tokens: np.ndarray, token_ids: np.ndarray, cap: int) -> dict[int, list[int]]:
        """Prompt-lookup chains of up to `cap` tokens for requests whose last tokens occurred before.

        token_ids [max_num_reqs, max_model_len] holds each request's tokens, the
        one sampled this step included (num_tokens of them).
        """
        if not cap:
            return {}
        drafts = {}
        for i, ok in enumerate(self._has_token):
            if ok:
                draft = lookup_draft(token_ids[i, : int(num_tokens[i])], cap)
                if len(draft):
                    drafts[i] = draft.tolist()
        return drafts

    def _draft_medusa(self, hidden: torch.Tensor, sampled_token_ids: list[list[int]], tree_rows: list[int],
                      chain_rows: list[int], chain_len: int) -> dict[int, list[int]]:
        """Medusa heads: every head runs once on every request's hidden state [B, H]."""
        num_heads = max(self.tree.num_heads_used if tree_rows else 0, chain_len if chain_rows else 0)
        logits = self.heads.logits(hidden, num_heads)  # [K, B, V]
        drafts: dict[int, list[int]] = {}
        if tree_rows:
            tree_drafts = self.tree.draft(logits).tolist()
            drafts.update({i: tree_drafts[i] for i in tree_rows})
        if chain_rows:
            chain_drafts = ChainDrafter(chain_len).draft(logits).tolist()
            drafts.update({i: chain_drafts[i] for i in chain_rows})
        return drafts

    def _draft_conditioned(self, hidden: torch.Tensor, sampled_token_ids: list[list[int]],
                           tree_rows: list[int], chain_rows: list[int], chain_len: int) -> dict[int, list[int]]:
        """Token-conditioned heads: head by head, from each request's sampled token."""
        first = torch.tensor([t[-1] if t else 0 for t in sampled_token_ids], device=hidden.device)  # [B] int64
        vocab = self.heads.draft_vocab  # [V'] or None
        drafts: dict[int, list[int]] = {}
        for rows, draft in ((tree_rows, functools.partial(self.tree.draft_conditioned, vocab=vocab)
                             if self.tree else None),
                            (chain_rows, functools.partial(self.chain.draft_conditioned, num_tokens=chain_len,
                                                           vocab=vocab))):
            if not rows:
                continue
            index = torch.tensor(rows, device=hidden.device)  # [R] int64
            with torch.inference_mode():
                tokens = draft(self._head_step(hidden, rows, index), first.index_select(0, index))
            drafts.update(zip(rows, tokens.tolist()))
        return drafts

    def _head_step(self, hidden: torch.Tensor, rows: list[int], index: torch.Tensor) -> HeadStep:
        """What drafts depth k for requests `rows`: the draft layer over their windows, or
        token-conditioned head k on their hidden states."""
        if self.windows is not None:
            return LayerStep(self.heads.served, self.windows, [self._req_ids[i] for i in rows],
                             self.heads.project, self.heads.embed)
        h = hidden.index_select(0, index)  # [R, H]

        def step(k: int, r: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
            return self.heads.head_logits(k, h.index_select(0, r), context)

        return step


def readable_heads(heads_dir: str) -> Any:
    """The heads' config, read on this worker; the front end read it on its own machine,
    so a failure here means this node lacks the directory."""
    import socket

    try:
        return validate_heads_dir(heads_dir)
    except NFoxHeadError as exc:
        raise NFoxHeadError(
            f"{exc.problem} (on worker host {socket.gethostname()})",
            "the heads directory must be readable at the same path on every node of the engine: "
            "copy it there or put it on a shared file system") from None


def report_switch(old: DraftShape, new: DraftShape, message: str) -> None:
    """Log the tuner's switches: a change of kind (none, chain, tree) at INFO, a
    change of chain length, frequent between shapes of nearly equal rate, at DEBUG."""
    level = logging.INFO if old.kind != new.kind else logging.DEBUG
    logger.log(level, "NFoxHead load policy: %s", message)


def tree_eligible(batch: Any, i: int) -> bool:
    """Whether request i's sampling is exact under tree verification."""
    req_id = batch.req_ids[i]
    return (
        batch.frequency_penalties_cpu[i] == 0.0
        and batch.presence_penalties_cpu[i] == 0.0
        and batch.repetition_penalties_cpu[i] == 1.0
        and req_id not in batch.num_logprobs
        and req_id not in batch.has_allowed_token_ids
        and i not in batch.bad_words_token_ids
        and not changed_by_logits_processors(batch.logitsprocs, i)
    )


def changed_by_logits_processors(logitsprocs: Any, i: int) -> bool:
    """Whether a logits processor edits request i's target distribution.

    vLLM's rejection sampler applies them to chain targets; the tree walk reads
    raw logits, so such requests draft a chain. vLLM refuses min-p and logit
    bias with speculative decoding, and min-p never moves the argmax; min
    tokens (stop tokens masked while pending) is read per request. A custom
    processor may touch any request, so it sends every request to a chain.
    """
    from vllm.v1.sample.logits_processor.builtin import (
        LogitBiasLogitsProcessor,
        MinPLogitsProcessor,
        MinTokensLogitsProcessor,
    )

    for proc in logitsprocs.all:
        if isinstance(proc, MinTokensLogitsProcessor):
            if i in proc.min_toks:
                return True
        elif not isinstance(proc, (LogitBiasLogitsProcessor, MinPLogitsProcessor)):
            return True
    return False
