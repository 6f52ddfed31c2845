"""Drafting with the draft layer at serving time (no vLLM import).

Per request the proposer keeps the draft layer's keys and values of its last W
true entries (`Windows`): bounded memory, freed when the request finishes, is
aborted or is preempted (a resumed request starts a fresh window, as it does
after its prompt). Each step it appends the entries of the newly accepted
positions, z_j = Fuse([f_j ; e(x_{j+1})]); the last one (the position that
sampled this step's token) is the first query. Drafting then feeds the
layer's output back, depth by depth (`LayerStep`, called by the chain and tree
drafters as any `HeadStep`).

Visibility is the training mask (training/draft_layer_train.py): a query at
position p sees true entries at positions > p - W, and its own drafted
ancestors. The two are checked to agree in tests/test_draft_layer.py.
Both run the layer's serving form (`ServedLayer`: fused GEMMs, the engine's
kernels); keys and values are kept head-major for its attention.

Shapes: B requests, L longest window, nh heads of hd, H hidden size.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from vllm_nfoxhead.core.served_layer import ServedLayer, attend


class Windows:
    """Per request: keys, values [nh, n <= W, hd], the position of its last entry, that
    entry z [H] and its rotated query [nh, hd] (the first query of the next draft)."""

    def __init__(self, window: int) -> None:
        self.window = window
        self.keys: dict[str, torch.Tensor] = {}
        self.values: dict[str, torch.Tensor] = {}
        self.last_pos: dict[str, int] = {}
        self.last_entry: dict[str, torch.Tensor] = {}
        self.last_query: dict[str, torch.Tensor] = {}

    def __contains__(self, req_id: str) -> bool:
        return req_id in self.keys

    def __len__(self) -> int:
        return len(self.keys)

    def append(self, req_id: str, layer: ServedLayer, z: torch.Tensor, start: int | None = None) -> None:
        """Add entries z [n, H] at positions start.. (default: after the request's last entry).

        A start that does not follow the last entry (the request was preempted
        and recomputed, or entries were missed) begins a fresh window.
        """
        self.extend(layer, [(req_id, z, start)])

    def extend(self, layer: ServedLayer, entries: list[tuple[str, torch.Tensor, int | None]]) -> None:
        """`append` for several requests at once: (req_id, z [n_i, H], start) each, with one
        q/k/v projection over all sum(n_i) entries."""
        starts = []
        for req_id, z, start in entries:
            if start is None:
                start = self.last_pos.get(req_id, -1) + 1
            elif self.last_pos.get(req_id, start - 1) != start - 1:
                self.drop(req_id)
            starts.append(start)
        z_all = torch.cat([z for _, z, _ in entries])  # [R, H]
        pos = torch.cat([torch.arange(s, s + len(z), device=z_all.device) for s, (_, z, _) in zip(starts, entries)])
        q_all, k_all, v_all = layer.qkv_heads(z_all, pos)  # [R, nh, hd] each
        counts = [len(z) for _, z, _ in entries]
        parts = zip(entries, starts, q_all.split(counts), k_all.split(counts), v_all.split(counts))
        for (req_id, z, _), start, q, k, v in parts:
            k, v = k.transpose(0, 1), v.transpose(0, 1)  # [nh, n, hd]
            if req_id in self.keys:
                k, v = torch.cat([self.keys[req_id], k], dim=1), torch.cat([self.values[req_id], v], dim=1)
            self.keys[req_id], self.values[req_id] = k[:, -self.window:], v[:, -self.window:]
            self.last_pos[req_id] = start + len(z) - 1
            self.last_entry[req_id], self.last_query[req_id] = z[-1], q[-1]

    def drop(self, req_id: str) -> None:
        """Forget a request (finished, aborted, preempted)."""
        for store in (self.keys, self.values, self.last_pos, self.last_entry, self.last_query):
            store.pop(req_id, None)

    def keep_only(self, live: set[str]) -> None:
        """Drop every request not in `live`."""
        for req_id in [r for r in self.keys if r not in live]:
            self.drop(req_id)

    def padded(self, req_ids: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """keys, values [B, nh, L, hd] (left-padded), key positions [B, L] int64 (-huge on padding),
        last positions [B] int64."""
        longest = max(self.keys[r].shape[1] for r in req_ids)
        k0 = self.keys[req_ids[0]]
        keys = k0.new_zeros(len(req_ids), k0.shape[0], longest, k0.shape[2])
        values = torch.zeros_like(keys)
        pos = torch.full((len(req_ids), longest), -(1 << 40), dtype=torch.long, device=k0.device)
        for b, r in enumerate(req_ids):
            n = self.keys[r].shape[1]
            keys[b, :, longest - n:], values[b, :, longest - n:] = self.keys[r], self.values[r]
            pos[b, longest - n:] = torch.arange(self.last_pos[r] - n + 1, self.last_pos[r] + 1, device=k0.device)
        last = torch.tensor([self.last_pos[r] for r in req_ids], dtype=torch.long, device=k0.device)
        return keys, values, pos, last


Project = Callable[[torch.Tensor], torch.Tensor]  # g [M, H] -> logits [M, V']
Embed = Callable[[torch.Tensor], torch.Tensor]  # token ids [M] -> input embeddings [M, H]


class LayerStep:
    """A `drafting.HeadStep` for the draft layer: step(k, rows, context) -> logits [M, V'].

    Depth k's candidate (row, context [k+1 tokens]) continues its parent
    (row, context[:k]) from the previous call: its query entry is
    Fuse([g_parent ; e(context[k])]) at position last + k, and it sees its
    request's window plus its ancestors' drafted entries. Depth 0's query is
    the window's last entry. ChainDrafter and TreeDrafter call depths in order,
    each with its parents among the previous call's candidates.
    """

    def __init__(self, layer: ServedLayer, windows: Windows, req_ids: list[str],
                 project: Project, embed: Embed) -> None:
        self.layer, self.project, self.embed, self.w = layer, project, embed, windows.window
        self.keys, self.values, self.kpos, self.last = windows.padded(req_ids)  # [B, nh, L, hd], [B, L], [B]
        self.root = torch.stack([windows.last_entry[r] for r in req_ids])  # [B, H]
        self.root_q = torch.stack([windows.last_query[r] for r in req_ids])  # [B, nh, hd]
        self.g: list[torch.Tensor] = []  # per depth: outputs [M_k, H]
        self.extra: list[tuple[torch.Tensor, torch.Tensor]] = []  # per depth: own+ancestor K, V [M_k, nh, k, hd]
        self.index: list[dict[tuple[int, ...], int]] = []  # per depth: (row, *context) -> candidate

    def __call__(self, k: int, rows: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        row_list = rows.tolist()
        keys = [(r, *c) for r, c in zip(row_list, context.tolist())]
        per_row = self._per_row(rows, row_list)
        win_k, win_v, kpos, last = per_row(self.keys), per_row(self.values), per_row(self.kpos), per_row(self.last)
        qpos = last + k  # [M]
        if k == 0:
            z, q = per_row(self.root), per_row(self.root_q)  # [M, H], [M, nh, hd]
            ek = self.keys.new_zeros(len(rows), self.keys.shape[1], 0, self.keys.shape[3])
            ev = ek
        else:
            parent = torch.tensor([self.index[k - 1][c[:-1]] for c in keys], device=rows.device)
            z = self.layer.entry(self.g[k - 1][parent], self.embed(context[:, k]))
            q, nk, nv = self.layer.qkv_heads(z, qpos)  # [M, nh, hd] each
            ek = torch.cat([self.extra[k - 1][0][parent], nk.unsqueeze(2)], dim=2)
            ev = torch.cat([self.extra[k - 1][1][parent], nv.unsqueeze(2)], dim=2)
        visible = qpos.unsqueeze(1) - kpos < self.w  # [M, L]
        mask = torch.cat([visible, visible.new_ones(len(rows), ek.shape[2])], dim=1)
        g = self.layer.finish(z, attend(q, torch.cat([win_k, ek], 2), torch.cat([win_v, ev], 2), mask))  # [M, H]
        del self.g[k:], self.extra[k:], self.index[k:]
        self.g.append(g)
        self.extra.append((ek, ev))
        self.index.append({c: m for m, c in enumerate(keys)})
        return self.project(g)

    def _per_row(self, rows: torch.Tensor, row_list: list[int]) -> Callable[[torch.Tensor], torch.Tensor]:
        """x [B, ...] -> x[rows] [M, ...]; x itself when rows are every request in order (a chain),
        which saves copying every window at every depth."""
        if row_list == list(range(len(self.root))):
            return lambda x: x
        return lambda x: x[rows]
