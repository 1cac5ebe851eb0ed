"""The model: a transformer layer with an expert-parallel MoE MLP, and model chunks.

A layer is written as the four pieces the schedule runs as nodes, so the reference (one
autograd graph) and the overlapped schedule (one graph per node) run the very same ops:

* ``pre_dispatch``  attention, layernorm, router (fp32 logits, top-k), permutation of the
  (token, k) rows by expert — compute;
* dispatch          all-to-all of the rows to the experts' ranks — communication;
* ``mlp``           the local experts (a grouped MLP) and the shared expert / dense MLP — compute;
* combine           all-to-all back, then ``combine_post``: unpermute, weight by the router
  probabilities, sum the k rows, add the shared expert and the residual.

Bitwise equality of the two runs also needs every gradient sum to happen in the same order.
Autograd adds two contributions in either order with the same result (addition is
commutative), but not three. The one tensor with three consumers (the layernorm output:
router, routed experts, shared expert) goes through ``Fanout``, whose backward adds its
gradients in a fixed order.

A model chunk is embedding (first chunk only) + layers + output layer and per-token loss
(last chunk only), like a virtual-pipeline stage. Expert weights are drawn for all experts
from one generator and sliced per rank, so the model is the same for every expert-parallel size.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from workloads.moe.dispatcher import Routing, TokenDispatcher, local_expert_order, make_routing

VARIANTS = ("dense", "moe", "moe_shared_expert")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class MoEConfig:
    variant: str = "moe"
    hidden: int = 64
    heads: int = 4
    seq_len: int = 32
    num_experts: int = 8
    topk: int = 2
    ffn_hidden: int = 128
    vocab_size: int = 256
    dtype: str = "float32"
    ep_size: int = 1
    seed: int = 1234

    @property
    def is_moe(self) -> bool:
        return self.variant != "dense"

    @property
    def shared_expert(self) -> bool:
        return self.variant == "moe_shared_expert"

    @property
    def local_experts(self) -> int:
        return self.num_experts // self.ep_size

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]


class Fanout(torch.autograd.Function):
    """Hands out ``n`` copies of a tensor; backward sums the copies' gradients left to right."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, n: int) -> tuple[torch.Tensor, ...]:
        return tuple(x.clone() for _ in range(n))

    @staticmethod
    def backward(ctx: Any, *grads: torch.Tensor | None) -> tuple[torch.Tensor | None, None]:
        total: torch.Tensor | None = None
        for g in grads:
            if g is not None:
                total = g if total is None else total + g
        return total, None


def _init(gen: torch.Generator, *shape: int, std: float = 0.02) -> torch.Tensor:
    return torch.randn(*shape, generator=gen) * std


class SelfAttention(nn.Module):
    """Causal multi-head self-attention on one sequence [S, H] (softmax in fp32)."""

    def __init__(self, cfg: MoEConfig, gen: torch.Generator) -> None:
        super().__init__()
        h = cfg.hidden
        self.heads = cfg.heads
        self.qkv = nn.Linear(h, 3 * h)
        self.proj = nn.Linear(h, h)
        with torch.no_grad():
            self.qkv.weight.copy_(_init(gen, 3 * h, h))
            self.qkv.bias.zero_()
            self.proj.weight.copy_(_init(gen, h, h))
            self.proj.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s, h = x.shape
        d = h // self.heads
        q, k, v = self.qkv(x).view(s, 3, self.heads, d).permute(1, 2, 0, 3).unbind(0)
        scores = (q @ k.transpose(-1, -2)).float() / math.sqrt(d)
        mask = torch.ones(s, s, dtype=torch.bool, device=x.device).triu(1)
        probs = scores.masked_fill(mask, float("-inf")).softmax(-1).to(x.dtype)
        return self.proj((probs @ v).permute(1, 0, 2).reshape(s, h))


class DenseMLP(nn.Module):
    def __init__(self, hidden: int, ffn: int, gen: torch.Generator) -> None:
        super().__init__()
        self.fc1 = nn.Linear(hidden, ffn)
        self.fc2 = nn.Linear(ffn, hidden)
        with torch.no_grad():
            self.fc1.weight.copy_(_init(gen, ffn, hidden))
            self.fc1.bias.zero_()
            self.fc2.weight.copy_(_init(gen, hidden, ffn))
            self.fc2.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Router(nn.Module):
    """Top-k router; logits are computed in fp32 whatever the model dtype."""

    def __init__(self, cfg: MoEConfig, gen: torch.Generator) -> None:
        super().__init__()
        self.topk = cfg.topk
        self.weight = nn.Parameter(_init(gen, cfg.num_experts, cfg.hidden))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = F.linear(x.float(), self.weight.float())
        probs, idx = logits.softmax(-1).topk(self.topk, dim=-1)
        return probs, idx


class GroupedExperts(nn.Module):
    """This rank's experts as stacked weights: fc1 [E_local, H, F], fc2 [E_local, F, H]."""

    def __init__(self, cfg: MoEConfig, gen: torch.Generator, rank: int) -> None:
        super().__init__()
        fc1 = _init(gen, cfg.num_experts, cfg.hidden, cfg.ffn_hidden)
        fc2 = _init(gen, cfg.num_experts, cfg.ffn_hidden, cfg.hidden)
        lo, hi = rank * cfg.local_experts, (rank + 1) * cfg.local_experts
        self.fc1 = nn.Parameter(fc1[lo:hi].clone())
        self.fc2 = nn.Parameter(fc2[lo:hi].clone())

    def forward(self, rows: torch.Tensor, counts: list[int]) -> torch.Tensor:
        outs = []
        for e, part in enumerate(rows.split(counts, dim=0)):
            outs.append(F.gelu(part @ self.fc1[e]) @ self.fc2[e])
        return torch.cat(outs, dim=0) if outs else rows.new_empty((0, self.fc2.shape[-1]))


class MoEMLP(nn.Module):
    def __init__(self, cfg: MoEConfig, gen: torch.Generator, rank: int) -> None:
        super().__init__()
        self.router = Router(cfg, gen)
        self.experts = GroupedExperts(cfg, gen, rank)
        self.shared_expert = DenseMLP(cfg.hidden, cfg.ffn_hidden, gen) if cfg.shared_expert else None


class TransformerLayer(nn.Module):
    def __init__(self, cfg: MoEConfig, gen: torch.Generator, rank: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.ln1 = nn.LayerNorm(cfg.hidden)
        self.attn = SelfAttention(cfg, gen)
        self.ln2 = nn.LayerNorm(cfg.hidden)
        self.mlp: MoEMLP | DenseMLP = MoEMLP(cfg, gen, rank) if cfg.is_moe else DenseMLP(cfg.hidden, cfg.ffn_hidden, gen)

    @property
    def moe_mlp(self) -> MoEMLP:
        """The MoE MLP of a MoE variant's layer (router, experts, shared expert)."""
        assert isinstance(self.mlp, MoEMLP), "a dense layer has no router or experts"
        return self.mlp


def transformer_layers(modules: Iterable[nn.Module]) -> list[TransformerLayer]:
    """The layers of a ``ModuleList`` as what they are (``ModuleList`` items are typed ``Module``)."""
    layers = []
    for m in modules:
        assert isinstance(m, TransformerLayer), type(m).__name__
        layers.append(m)
    return layers


# -- the layer as node computations ------------------------------------------------------------
# Each function takes and returns dicts of tensors so the schedule can detach them at node
# boundaries; routing metadata (not differentiable) travels separately.

def pre_dispatch(layer: TransformerLayer, x: torch.Tensor) -> tuple[dict[str, torch.Tensor], Routing | None, torch.Tensor | None]:
    """Attention + layernorm (+ router and permutation). Returns tensors, routing, expert counts."""
    cfg = layer.cfg
    a = x + layer.attn(layer.ln1(x))
    t = layer.ln2(a)
    if not cfg.is_moe:
        return {"residual": a, "tokens": t}, None, None
    copies = Fanout.apply(t, 3 if cfg.shared_expert else 2)
    probs, idx = layer.moe_mlp.router(copies[0])
    routing, counts = make_routing(idx, cfg.num_experts, cfg.ep_size)
    out = {
        "residual": a,
        "rows": TokenDispatcher.permute(copies[1], routing),
        "row_probs": probs.reshape(-1).index_select(0, routing.order),
    }
    if cfg.shared_expert:
        out["shared_in"] = copies[2]
    return out, routing, counts


def mlp(layer: TransformerLayer, inputs: Mapping[str, torch.Tensor], routing: Routing | None) -> dict[str, torch.Tensor]:
    """Dense MLP, or the local experts on the received rows (+ the shared expert)."""
    cfg = layer.cfg
    if not cfg.is_moe:
        return {"mlp_out": layer.mlp(inputs["tokens"])}
    assert routing is not None and routing.recv_counts is not None
    rows = inputs["recv_rows"]
    perm, counts = local_expert_order(routing.recv_counts, rows.device)
    inverse = torch.empty_like(perm)
    inverse[perm] = torch.arange(perm.numel(), device=perm.device)
    moe = layer.moe_mlp
    grouped = moe.experts(rows.index_select(0, perm), counts)
    out = {"expert_rows": grouped.index_select(0, inverse)}
    if moe.shared_expert is not None:   # cfg.shared_expert
        out["shared_out"] = moe.shared_expert(inputs["shared_in"])
    return out


def combine_post(layer: TransformerLayer, inputs: Mapping[str, torch.Tensor], routing: Routing | None) -> torch.Tensor:
    """After the combine all-to-all: unpermute, weight by router probabilities, sum over k,
    add the shared expert and the residual."""
    cfg = layer.cfg
    if not cfg.is_moe:
        return inputs["residual"] + inputs["mlp_out"]
    assert routing is not None
    weighted = (inputs["back_rows"].float() * inputs["row_probs"].unsqueeze(-1)).to(inputs["back_rows"].dtype)
    routed = TokenDispatcher.unpermute(weighted, routing).sum(dim=1)
    out = inputs["residual"] + routed
    if cfg.shared_expert:
        out = out + inputs["shared_out"]
    return out


def layer_reference_forward(layer: TransformerLayer, x: torch.Tensor, group: dist.ProcessGroup | None = None) -> torch.Tensor:
    """The whole layer as one autograd graph with synchronous all-to-alls."""
    from workloads.moe.dispatcher import all_to_all, exchange_counts

    pre, routing, counts = pre_dispatch(layer, x)
    if routing is None:
        mid = mlp(layer, pre, None)
        return combine_post(layer, {**pre, **mid}, None)
    assert counts is not None   # pre_dispatch returns routing and counts together
    routing = exchange_counts(routing, counts, group)
    recv = all_to_all(pre["rows"], routing.output_splits, routing.input_splits, group)
    mid = mlp(layer, {"recv_rows": recv, **({"shared_in": pre["shared_in"]} if "shared_in" in pre else {})}, routing)
    back = all_to_all(mid["expert_rows"], routing.input_splits, routing.output_splits, group)
    post_in = {"back_rows": back, "row_probs": pre["row_probs"], "residual": pre["residual"]}
    if "shared_out" in mid:
        post_in["shared_out"] = mid["shared_out"]
    return combine_post(layer, post_in, routing)


# -- model chunks ---------------------------------------------------------------------------------

class ModelChunk(nn.Module):
    """Embedding (first chunk) + layers + output layer with per-token loss (last chunk)."""

    def __init__(self, cfg: MoEConfig, gen: torch.Generator, rank: int, num_layers: int, *,
                 first: bool, last: bool) -> None:
        super().__init__()
        self.cfg = cfg
        self.embedding: nn.Embedding | None = None
        self.final_ln: nn.LayerNorm | None = None
        self.output: nn.Linear | None = None
        if first:
            self.embedding = nn.Embedding(cfg.vocab_size, cfg.hidden)
            with torch.no_grad():
                self.embedding.weight.copy_(_init(gen, cfg.vocab_size, cfg.hidden))
        self.layers = nn.ModuleList(TransformerLayer(cfg, gen, rank) for _ in range(num_layers))
        if last:
            self.final_ln = nn.LayerNorm(cfg.hidden)
            self.output = nn.Linear(cfg.hidden, cfg.vocab_size, bias=False)
            with torch.no_grad():
                self.output.weight.copy_(_init(gen, cfg.vocab_size, cfg.hidden))

    def transformer_layers(self) -> list[TransformerLayer]:
        return transformer_layers(self.layers)

    def pre_process(self, tokens: torch.Tensor) -> torch.Tensor:
        assert self.embedding is not None
        return self.embedding(tokens)

    def post_process(self, hidden: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Per-token cross-entropy loss [S] (fp32 logits)."""
        assert self.output is not None and self.final_ln is not None
        logits = self.output(self.final_ln(hidden)).float()
        return F.cross_entropy(logits, labels, reduction="none")


class LayerModel(nn.Module):
    """Layer level: a single transformer layer (parameter names ``layers.0.*``)."""

    def __init__(self, cfg: MoEConfig, rank: int) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(cfg.seed)
        self.layers = nn.ModuleList([TransformerLayer(cfg, gen, rank)])

    @property
    def layer(self) -> TransformerLayer:
        (layer,) = transformer_layers(self.layers)
        return layer


class ChunkedModel(nn.Module):
    """Chunk level: model chunks with ``layers[c]`` layers each (parameter names ``chunks.C.*``)."""

    def __init__(self, cfg: MoEConfig, rank: int, layers: list[int]) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(cfg.seed)
        n = len(layers)
        self.chunks = nn.ModuleList(
            ModelChunk(cfg, gen, rank, count, first=(c == 0), last=(c == n - 1)) for c, count in enumerate(layers))

    def model_chunks(self) -> list[ModelChunk]:
        """The chunks as what they are (``ModuleList`` items are typed ``Module``)."""
        chunks = []
        for m in self.chunks:
            assert isinstance(m, ModelChunk), type(m).__name__
            chunks.append(m)
        return chunks


def chunk_reference_forward(chunk: ModelChunk, x: torch.Tensor, labels: torch.Tensor | None,
                            group: dist.ProcessGroup | None = None) -> torch.Tensor:
    """One model chunk as one autograd graph: hidden states out, or per-token losses for the last chunk."""
    h = chunk.pre_process(x) if chunk.embedding is not None else x
    for layer in chunk.transformer_layers():
        h = layer_reference_forward(layer, h, group)
    if chunk.output is not None:
        assert labels is not None
        return chunk.post_process(h, labels)
    return h
