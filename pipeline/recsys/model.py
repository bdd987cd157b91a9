"""Sequential recommender: SASRec-style causal self-attention over a user's last items.

One file, no I/O (nanoGPT / gSASRec style). Training lives in `pipeline/recsys/train.py`.

Index convention: items are dense ints 1..n_items, 0 is padding. Sequences are left-padded with 0.

Item representation (`item_repr`):
- "id":      a learned ID embedding per item.
- "text":    an adapter (MLP) over a frozen text embedding; items never seen in training still get a vector.
- "id+text": text adapter + ID embedding. The ID part is switched off for items without training
             interactions (their ID rows would only ever receive negative gradient under the full softmax and
             would drown the text part) and randomly dropped for warm items during training (`id_dropout`),
             so the text path alone must rank well and cold items stay recommendable.

Scoring: cosine similarity between the last hidden state and every item vector, divided by a temperature
(`normalize=True`), or a plain dot product. Training: cross-entropy over the full catalog at every prefix
position (Klenitskiy & Vasilev 2023), or sampled softmax with log-Q correction for very large catalogs.
The contract the rest of the package relies on: `score = user_states(seqs) @ item_representations().T`.
Inference can also branch off a cached history (`branched_user_states`: every block's keys and values), so
that histories that share their older items compute only the newer ones (recsys.explain).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from pipeline.recsys.ranking import top_k_unseen
from pipeline.recsys.text_space import fit_whitening

ITEM_REPRS = ("id", "text", "id+text")
KeysValues = tuple[Tensor, Tensor]  # an attention layer's keys and values, each (B, H, P, Dh)


@dataclass
class ModelConfig:
    n_items: int                            # real items, indices 1..n_items (0 = padding)
    max_len: int = 50                       # history length the model attends over (last items kept)
    d_model: int = 64                       # width of item vectors and hidden states
    n_heads: int = 1                        # attention heads per block
    n_layers: int = 2                       # transformer blocks
    dropout: float = 0.2                    # dropout on embeddings, attention and MLP outputs
    ffn_mult: int = 4                       # MLP hidden width = ffn_mult * d_model
    item_repr: str = "id+text"              # "id" | "text" | "id+text"
    text_dim: int = 0                       # width of the frozen text embeddings; 0 = no text embeddings
    text_hidden: int = 256                  # hidden width of the text adapter MLP; 0 = a single Linear
    id_dropout: float = 0.25                # id+text: prob. of dropping a warm item's ID part per training step
    normalize: bool = True                  # cosine scores (L2-normalised user and item vectors) / temperature
    temperature: float = 0.1                # softmax temperature for cosine scores (ignored if not normalize)
    label_smoothing: float = 0.0            # cross-entropy label smoothing
    sampled_softmax_above: int = 50_000     # sampled softmax with log-Q correction when n_items exceeds this
    n_negatives: int = 1024                 # negatives per batch for the sampled softmax
    text_whiten: bool = False               # whiten the frozen text embeddings (WhitenRec, Zhang et al. 2024)
    text_prior: bool = False                # add a learned weight x cosine(text of the last item, text of the item)

    def __post_init__(self) -> None:
        assert self.n_items >= 1, f"n_items must be >= 1, got {self.n_items}"
        assert self.item_repr in ITEM_REPRS, f"item_repr must be one of {ITEM_REPRS}, got {self.item_repr!r}"
        assert self.item_repr == "id" or self.text_dim > 0, f"item_repr={self.item_repr!r} needs text_dim > 0"
        assert self.d_model % self.n_heads == 0, f"d_model {self.d_model} not divisible by n_heads {self.n_heads}"
        assert 0.0 <= self.id_dropout < 1.0, f"id_dropout must be in [0, 1), got {self.id_dropout}"
        assert self.temperature > 0, f"temperature must be > 0, got {self.temperature}"
        assert not self.text_prior or self.item_repr != "id", "text_prior needs a text item_repr (text, id+text)"


@dataclass
class Prefix:
    """A history's cached keys and values, which branched_user_states continues from (inference)."""

    keys_values: list[KeysValues]  # per block, the attention's keys and values, each (B, H, P, Dh)
    key_ok: Tensor                 # (B, P) which positions hold an item (padding is never attended to)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.n_heads = config.n_heads
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model)
        self.proj = nn.Linear(config.d_model, config.d_model)
        self.dropout = config.dropout
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(
        self, x: Tensor, attn_mask: Tensor, past: KeysValues | None = None, queries: Tensor | None = None
    ) -> tuple[Tensor, KeysValues]:
        """x (B, S, D) positions that follow the cached keys/values `past` (each (B, H, P, Dh); None = none).
        Returns the outputs at the positions `queries` (Q,) of x (all by default), (B, Q, D), and the
        keys/values of all P + S positions. attn_mask: (B, 1, Q, P + S), True = may attend."""
        B, S, D = x.shape
        q, k, v = self.qkv(x).split(D, dim=2)  # 3 x (B, S, D)
        q, k, v = (t.view(B, S, self.n_heads, D // self.n_heads).transpose(1, 2) for t in (q, k, v))  # (B, H, S, Dh)
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)  # (B, H, P + S, Dh)
        q = q if queries is None else q[:, :, queries]  # (B, H, Q, Dh)
        dropout_p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p)  # (B, H, Q, Dh)
        y = y.transpose(1, 2).reshape(B, q.shape[2], D)  # (B, Q, D)
        return self.resid_dropout(self.proj(y)), (k, v)


class MLP(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.fc = nn.Linear(config.d_model, config.ffn_mult * config.d_model)
        self.proj = nn.Linear(config.ffn_mult * config.d_model, config.d_model)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.proj(F.gelu(self.fc(x))))


class Block(nn.Module):
    """Pre-norm transformer block."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.d_model)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.d_model)
        self.mlp = MLP(config)

    def forward(
        self, x: Tensor, attn_mask: Tensor, past: KeysValues | None = None, queries: Tensor | None = None
    ) -> tuple[Tensor, KeysValues]:
        """(B, S, D) -> (B, Q, D) at the positions `queries` (all by default), and the attention's keys/values
        (see CausalSelfAttention)."""
        attended, keys_values = self.attn(self.ln_1(x), attn_mask, past, queries)  # (B, Q, D)
        x = (x if queries is None else x[:, queries]) + attended
        return x + self.mlp(self.ln_2(x)), keys_values


class TextAdapter(nn.Module):
    """Frozen text embedding -> model space (UniSRec / LLM-ESR style MLP adapter)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if config.text_hidden > 0:
            self.net = nn.Sequential(nn.Linear(config.text_dim, config.text_hidden), nn.GELU(),
                                     nn.Dropout(config.dropout), nn.Linear(config.text_hidden, config.d_model))
        else:
            self.net = nn.Linear(config.text_dim, config.d_model)

    def forward(self, text: Tensor) -> Tensor:
        return self.net(text)


class SeqRecModel(nn.Module):
    _input_table: Tensor | None = None  # set inside frozen_items(): every item's input vector, computed once

    def __init__(
        self, config: ModelConfig, text_emb: Tensor | None = None, item_counts: Tensor | None = None,
        text_whitening: tuple[Tensor, Tensor] | None = None,
    ) -> None:
        """text_emb: the raw frozen text embeddings (n_items+1, T); text_whitening: (shift (T,), map (T, T)) to
        whiten them with (a champion's, so that a warm start keeps its text space), else fitted on text_emb."""
        super().__init__()
        self.config = config
        n_rows = config.n_items + 1
        uses_text = config.item_repr in ("text", "id+text")
        if uses_text:
            if text_emb is None:  # placeholder, filled by load_state_dict when rebuilding from a checkpoint
                text_emb = torch.zeros(n_rows, config.text_dim)
            assert text_emb.shape == (n_rows, config.text_dim), (
                f"text_emb must be (n_items+1, text_dim) = {(n_rows, config.text_dim)}, got {tuple(text_emb.shape)}"
            )
            text_emb = text_emb.detach().float().clone()
            text_emb[0] = 0.0
            if config.text_whiten:
                shift, whiten = text_whitening if text_whitening is not None else fit_whitening(text_emb[1:])
                self.register_buffer("text_shift", shift.float().clone())  # (T,) carried over by warm start
                self.register_buffer("text_map", whiten.float().clone())  # (T, T)
                text_emb = (text_emb - shift) @ whiten
                text_emb[0] = 0.0
            self.register_buffer("text_emb", text_emb)  # (N+1, T) frozen (whitened if configured)
            self.text_adapter = TextAdapter(config)
        if config.item_repr in ("id", "id+text"):
            self.id_emb = nn.Embedding(n_rows, config.d_model, padding_idx=0)
        if item_counts is None:
            item_counts = torch.ones(n_rows)
        assert item_counts.shape == (n_rows,), f"item_counts must be (n_items+1,), got {tuple(item_counts.shape)}"
        item_counts = item_counts.detach().float().clone()
        item_counts[0] = 0.0
        self.register_buffer("item_counts", item_counts)  # (N+1,) training interactions per item
        if config.text_prior:  # in logit units; cosine logits of the model itself are scaled by 1 / temperature
            self.text_prior_weight = nn.Parameter(torch.tensor(0.5 * self._scale()))
        self.pos_emb = nn.Embedding(config.max_len, config.d_model)
        self.emb_dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList([Block(config) for _ in range(config.n_layers)])
        self.ln_f = nn.LayerNorm(config.d_model)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)
            if module.padding_idx is not None:
                module.weight.data[module.padding_idx].zero_()

    # ---- item side -------------------------------------------------------------------------------------------

    def _raw_item_vectors(self, ids: Tensor | None = None) -> Tensor:
        """Unnormalised item vectors for `ids` (any shape) or for all rows 0..n_items."""
        cfg = self.config
        parts = []
        if cfg.item_repr in ("text", "id+text"):
            text = self.text_emb if ids is None else self.text_emb[ids]
            parts.append(self.text_adapter(text))  # (..., D)
        if cfg.item_repr in ("id", "id+text"):
            id_vec = self.id_emb.weight if ids is None else self.id_emb(ids)  # (..., D)
            if cfg.item_repr == "id+text":
                counts = self.item_counts if ids is None else self.item_counts[ids]
                keep = (counts > 0).to(id_vec.dtype)  # cold items: text only
                if self.training and cfg.id_dropout > 0:
                    keep = keep * (torch.rand_like(keep) >= cfg.id_dropout).to(id_vec.dtype)
                id_vec = id_vec * keep.unsqueeze(-1)
            parts.append(id_vec)
        vec = parts[0] if len(parts) == 1 else parts[0] + parts[1]
        if ids is None:
            vec = vec * (torch.arange(vec.shape[0], device=vec.device) > 0).unsqueeze(-1).to(vec.dtype)
        else:
            vec = vec * (ids > 0).unsqueeze(-1).to(vec.dtype)
        return vec

    @contextlib.contextmanager
    def frozen_items(self) -> Iterator[None]:
        """Inference over many histories: inside, a position reads its item's input vector from a table computed
        once for the catalog, instead of running the text adapter again (eval mode; weights unchanged inside)."""
        assert not self.training, "frozen_items is for inference: call model.eval() first"
        with torch.no_grad():
            self._input_table = self._raw_item_vectors()
        try:
            yield
        finally:
            self._input_table = None

    def _output_vectors(self, vec: Tensor) -> Tensor:
        return F.normalize(vec, dim=-1) if self.config.normalize else vec

    def _item_side(self, ids: Tensor | None = None) -> Tensor:
        """Scored item vectors (..., D') for `ids` or all rows: the model's, then (text prior) the unit text."""
        vec = self._output_vectors(self._raw_item_vectors(ids))
        if not self.config.text_prior:
            return vec
        text = self.text_emb if ids is None else self.text_emb[ids]
        return torch.cat([vec, F.normalize(text, dim=-1).to(vec.dtype)], dim=-1)

    def _user_side(self, h: Tensor, last: Tensor) -> Tensor:
        """Query vectors (..., D') from hidden states (..., D) and the history's last item ids (...), so that
        query . item = model score (+ text prior weight x cosine of the last item's text and the item's)."""
        q = self._output_vectors(h) * self._scale()
        if not self.config.text_prior:
            return q
        text = F.normalize(self.text_emb[last], dim=-1).to(q.dtype) * self.text_prior_weight
        return torch.cat([q, text], dim=-1)

    def item_representations(self) -> Tensor:
        """(n_items+1, D') item vectors used for scoring; row 0 (padding) is zero."""
        return self._item_side()

    # ---- user side -------------------------------------------------------------------------------------------

    def _hidden(self, seq: Tensor) -> Tensor:
        """(B, L) left-padded item ids -> (B, L, D) hidden states (causal, padding ignored)."""
        return self._transform(seq, *self._causal(seq))[0]

    def _causal(self, seq: Tensor) -> tuple[Tensor, Tensor]:
        """Positions (L,) and what each may read (L, L) for (B, L) left-padded histories."""
        L = seq.shape[1]
        assert L <= self.config.max_len, f"sequence length {L} exceeds max_len {self.config.max_len}"
        # positions counted from the end, so extra left padding changes nothing
        pos = torch.arange(L - 1, -1, -1, device=seq.device)  # (L,)
        return pos, torch.ones(L, L, dtype=torch.bool, device=seq.device).tril()

    def _transform(
        self, seq: Tensor, pos: Tensor, reads: Tensor, past: Prefix | None = None, outputs: Tensor | None = None
    ) -> tuple[Tensor, Prefix]:
        """(B, S) item ids at positions `pos` (S,), after the cached `past` (P positions; None = none) ->
        (B, S, D) hidden states, or (B, Q, D) at the positions `outputs` (Q,) only (the last block then runs
        its attention output and MLP there only), and the Prefix of past + seq. reads (S, P + S): which
        positions each may read, of those holding an item; a padding position reads itself only."""
        S = seq.shape[1]
        vec = self._raw_item_vectors(seq) if self._input_table is None else self._input_table[seq]  # (B, S, D)
        x = vec * math.sqrt(self.config.d_model) + self.pos_emb(pos)
        x = self.emb_dropout(x)
        key_ok = seq > 0 if past is None else torch.cat([past.key_ok, seq > 0], dim=1)  # (B, P + S)
        itself = F.pad(torch.eye(S, dtype=torch.bool, device=seq.device), (key_ok.shape[1] - S, 0))  # (S, P + S)
        attn_mask = ((reads & key_ok.unsqueeze(1)) | itself).unsqueeze(1)  # (B, 1, S, P + S)
        keys_values = []
        for n, block in enumerate(self.blocks):
            queries = outputs if n == len(self.blocks) - 1 else None
            mask = attn_mask if queries is None else attn_mask[:, :, queries]
            x, kv = block(x, mask, None if past is None else past.keys_values[n], queries)  # (B, S or Q, D)
            keys_values.append(kv)
        return self.ln_f(x), Prefix(keys_values, key_ok)

    def _scale(self) -> float:
        return 1.0 / self.config.temperature if self.config.normalize else 1.0

    def user_states(self, seqs: Tensor) -> Tensor:
        """(B, L) -> (B, D) query vectors such that scores = user_states @ item_representations().T."""
        seqs = seqs[:, -self.config.max_len :]
        h = self._hidden(seqs)[:, -1, :]  # (B, D)
        return self._user_side(h, seqs[:, -1])  # (B, D')

    def user_states_and_prefix(self, seqs: Tensor) -> tuple[Tensor, Prefix]:
        """user_states of (B, L) histories (inference: the last block at the final position only) and their
        Prefix, which branched_user_states continues from."""
        last = torch.tensor([seqs.shape[1] - 1], device=seqs.device)
        h, prefix = self._transform(seqs, *self._causal(seqs), outputs=last)  # (B, 1, D)
        return self._user_side(h[:, 0], seqs[:, -1]), prefix  # (B, D')

    def branched_user_states(self, past: Prefix, branches: Tensor, lengths: Tensor) -> Tensor:
        """(B, G, D) user states of the prefix's histories with their last lengths[g] items replaced by branch
        g's: branches (B, sum(lengths)) holds the G branches one after the other, each oldest first. Only the
        branches' positions are computed, against the cached keys and values of the positions they keep."""
        P, K = past.key_ok.shape[1], branches.shape[1]
        assert int(lengths.sum()) == K and int(lengths.min()) >= 1 and int(lengths.max()) <= P, (
            f"branch lengths {lengths.tolist()} must be in 1..{P} and add up to {K}")
        device = branches.device
        ends = lengths.cumsum(0)  # (G,)
        branch = torch.repeat_interleave(torch.arange(len(lengths), device=device), lengths)  # (K,)
        step = torch.arange(K, device=device) - (ends - lengths)[branch]  # (K,) position within the branch
        reads_prefix = torch.arange(P, device=device) < (P - lengths)[branch].unsqueeze(1)  # (K, P)
        reads_branch = (branch.unsqueeze(1) == branch) & (step <= step.unsqueeze(1))  # (K, K) causal
        h, _ = self._transform(branches, lengths[branch] - 1 - step, torch.cat([reads_prefix, reads_branch], dim=1),
                               past, outputs=ends - 1)  # (B, G, D)
        return self._user_side(h, branches[:, ends - 1])  # (B, G, D')

    # ---- training contract -----------------------------------------------------------------------------------

    def forward(self, seq: Tensor, targets: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """seq (B, L) left-padded; targets (B, L) next item at each position, 0 = ignore.

        With targets: (logits at the N target positions (N, n_items+1), loss). Computing the softmax only
        where there is a target keeps memory at N x n_items instead of B x L x n_items.
        Without targets: (logits of the last position (B, n_items+1), None).
        """
        h = self._hidden(seq)  # (B, L, D)
        if targets is None:
            q = self._user_side(h[:, -1, :], seq[:, -1])  # (B, D')
            logits = q @ self.item_representations().T  # (B, N+1)
            logits[:, 0] = float("-inf")
            return logits, None
        assert targets.shape == seq.shape, f"targets {tuple(targets.shape)} must match seq {tuple(seq.shape)}"
        where = targets > 0  # (B, L)
        q = self._user_side(h[where], seq[where])  # (N, D')
        y = targets[where]  # (N,)
        if self.config.n_items > self.config.sampled_softmax_above:
            return self._sampled_softmax(q, y)
        logits = q @ self.item_representations().T  # (N, N_items+1)
        logits[:, 0] = float("-inf")
        loss = F.cross_entropy(logits.float(), y, label_smoothing=self.config.label_smoothing)
        return logits, loss

    def _sampled_softmax(self, q: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """Shared negatives drawn from popularity^0.75, scores corrected by log Q (Yi et al. 2019)."""
        probs = (self.item_counts + 1.0).pow(0.75)
        probs[0] = 0.0
        probs = probs / probs.sum()  # (N+1,)
        neg = torch.multinomial(probs, self.config.n_negatives, replacement=True)  # (K,)
        cand = torch.cat([y, neg])  # (N + K,) in-batch positives double as negatives
        cand_vec = self._item_side(cand)  # (N + K, D')
        logits = q @ cand_vec.T - torch.log(probs[cand] * cand.numel()).unsqueeze(0)  # (N, N + K)
        accidental = cand.unsqueeze(0) == y.unsqueeze(1)  # (N, N + K)
        own = torch.zeros_like(accidental)
        own[torch.arange(len(y)), torch.arange(len(y))] = True
        logits = logits.masked_fill(accidental & ~own, float("-inf"))
        labels = torch.arange(len(y), device=y.device)
        loss = F.cross_entropy(logits.float(), labels, label_smoothing=self.config.label_smoothing)
        return logits, loss

    # ---- inference -------------------------------------------------------------------------------------------

    @torch.no_grad()
    def recommend(
        self, seqs: Tensor, k: int, exclude_seen: bool = True, exclude: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Top-k (ids (B, k) long, scores (B, k) float); never padding, seen items excluded when asked.
        `exclude`: optional bool mask (B, n_items+1) or (n_items+1,) of further items to drop. If fewer than k
        items remain for a user, the tail of that row has score -inf: drop those entries."""
        n_rows = self.config.n_items + 1
        assert 1 <= k <= self.config.n_items, f"k must be in [1, n_items={self.config.n_items}], got {k}"
        scores = self.user_states(seqs) @ self.item_representations().T  # (B, N+1)
        scores[:, 0] = float("-inf")
        if exclude is not None:
            assert exclude.shape[-1] == n_rows, f"exclude must end in n_items+1={n_rows}, got {tuple(exclude.shape)}"
            scores = scores.masked_fill(exclude.to(torch.bool), float("-inf"))
        top_scores, top_ids = top_k_unseen(scores, seqs.long() if exclude_seen else None, k)  # (B, k)
        return top_ids, top_scores
