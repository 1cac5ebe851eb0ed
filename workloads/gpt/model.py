"""A GPT model in plain PyTorch, split into (virtual) pipeline stages like Megatron-LM's.

Megatron's GPT defaults: learned absolute position embeddings, pre-layernorm transformer
blocks (LN -> self-attention -> residual, LN -> GeLU MLP -> residual), a final layernorm, and
an output layer tied to the input word embeddings. Layout here is [batch, seq, hidden].

Pipeline split: with pp pipeline ranks and vp model chunks per rank, virtual stage
``v = chunk * pp + pp_rank`` holds layers ``[v * L, (v + 1) * L)`` (L = layers per virtual
stage); virtual stage 0 also holds the embeddings, the last one the final layernorm and the
output layer. When those two are on different ranks the output layer keeps its own copy of
the word embedding (``GPTChunk.output_weight``), initialised to the same values, and its
gradient is summed with the embedding's over the first/last-stage group every step — exactly
Megatron's "shared embedding" treatment — so the copies stay identical.

Initialisation is per module from generators seeded by (seed, module index), so any split
of the model (the full single-process model, a PP4xVP2 chunk) gets the same numbers: the
basis of the equivalence test against a single-process reference.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from workloads.gpt.config import GPTConfig

_EMBEDDING_STREAM = 0
_LAYER_STREAM_BASE = 1


def _generator(seed: int, stream: int) -> torch.Generator:
    g = torch.Generator(device="cpu")
    g.manual_seed(seed * 100003 + stream)
    return g


def _normal_(t: torch.Tensor, std: float, g: torch.Generator) -> None:
    with torch.no_grad():
        t.copy_(torch.empty(t.shape, dtype=torch.float32).normal_(0.0, std, generator=g))


class SelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig, g: torch.Generator) -> None:
        super().__init__()
        h = cfg.hidden_size
        self.num_heads = cfg.num_attention_heads
        self.head_dim = h // cfg.num_attention_heads
        self.qkv = nn.Linear(h, 3 * h)
        self.proj = nn.Linear(h, h)
        self.attention_dropout = cfg.attention_dropout
        _normal_(self.qkv.weight, cfg.init_method_std, g)
        # Megatron's scaled_init_method_normal for the output projections: std / sqrt(2 * layers)
        _normal_(self.proj.weight, cfg.init_method_std / math.sqrt(2.0 * cfg.num_layers), g)
        nn.init.zeros_(self.qkv.bias)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, h = x.shape
        q, k, v = self.qkv(x).view(b, s, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.head_dim)
        causal = torch.ones(s, s, dtype=torch.bool, device=x.device).triu_(1)
        # softmax in fp32 (Megatron's --attention-softmax-in-fp32)
        probs = torch.softmax(scores.float().masked_fill(causal, float("-inf")), dim=-1).to(x.dtype)
        probs = F.dropout(probs, self.attention_dropout, self.training)
        ctx = torch.matmul(probs, v).transpose(1, 2).reshape(b, s, h)
        return self.proj(ctx)


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig, g: torch.Generator) -> None:
        super().__init__()
        self.fc1 = nn.Linear(cfg.hidden_size, cfg.ffn_size)
        self.fc2 = nn.Linear(cfg.ffn_size, cfg.hidden_size)
        _normal_(self.fc1.weight, cfg.init_method_std, g)
        _normal_(self.fc2.weight, cfg.init_method_std / math.sqrt(2.0 * cfg.num_layers), g)
        nn.init.zeros_(self.fc1.bias)
        nn.init.zeros_(self.fc2.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class TransformerLayer(nn.Module):
    """Pre-LN block: x + drop(attn(ln1(x))), then x + drop(mlp(ln2(x)))."""

    def __init__(self, cfg: GPTConfig, layer_number: int) -> None:
        super().__init__()
        g = _generator(cfg.seed, _LAYER_STREAM_BASE + layer_number)
        self.layer_number = layer_number
        self.input_layernorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layernorm_epsilon)
        self.self_attention = SelfAttention(cfg, g)
        self.post_attention_layernorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layernorm_epsilon)
        self.mlp = MLP(cfg, g)
        self.hidden_dropout = cfg.hidden_dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + F.dropout(self.self_attention(self.input_layernorm(x)), self.hidden_dropout, self.training)
        return x + F.dropout(self.mlp(self.post_attention_layernorm(x)), self.hidden_dropout, self.training)


class Embedding(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        g = _generator(cfg.seed, _EMBEDDING_STREAM)
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.position_embeddings = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)
        _normal_(self.word_embeddings.weight, cfg.init_method_std, g)
        _normal_(self.position_embeddings.weight, cfg.init_method_std, g)
        self.dropout = cfg.hidden_dropout

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(tokens.shape[1], device=tokens.device)
        x = self.word_embeddings(tokens) + self.position_embeddings(pos)[None]
        return F.dropout(x, self.dropout, self.training)


def initial_word_embedding(cfg: GPTConfig) -> torch.Tensor:
    """The word-embedding values virtual stage 0 starts with (for the last stage's copy)."""
    return Embedding(cfg).word_embeddings.weight.detach().clone()


def lm_loss(logits: torch.Tensor, labels: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    """Megatron's lm loss of one microbatch: masked mean of the fp32 token cross entropy."""
    losses = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1), reduction="none")
    mask = loss_mask.reshape(-1).float()
    return (losses * mask).sum() / mask.sum().clamp(min=1.0)


class GPTChunk(nn.Module):
    """One virtual pipeline stage: [embedding] + layers + [final LN + tied output layer + loss].

    ``forward(x, labels, loss_mask)``: ``x`` is the token ids on the first stage, the hidden
    states [b, s, h] otherwise; returns the hidden states, or the scalar lm loss on the last stage.
    """

    def __init__(self, cfg: GPTConfig, layer_numbers: Sequence[int], *, pre_process: bool,
                 post_process: bool, virtual_stage: int = 0) -> None:
        super().__init__()
        self.cfg = cfg
        self.virtual_stage = virtual_stage
        self.pre_process = pre_process
        self.post_process = post_process
        self.embedding = Embedding(cfg) if pre_process else None
        self.layers = nn.ModuleList(TransformerLayer(cfg, n) for n in layer_numbers)
        self.final_layernorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layernorm_epsilon) if post_process else None
        self.output_weight: nn.Parameter | None = None
        if post_process and not pre_process:
            # Megatron's shared embedding copy on the last stage, kept equal by the grad all-reduce
            self.output_weight = nn.Parameter(initial_word_embedding(cfg))

    def _word_embedding_weight(self) -> nn.Parameter:
        if self.embedding is None:
            raise RuntimeError(f"virtual stage {self.virtual_stage} has no embedding (not the first stage)")
        weight = self.embedding.word_embeddings.weight
        assert isinstance(weight, nn.Parameter), "nn.Embedding registers its weight as a Parameter"
        return weight

    def shared_embedding_weight(self) -> nn.Parameter | None:
        """The parameter tied across first and last stage when they are on different ranks."""
        if self.pre_process and self.post_process:
            return None
        if self.pre_process:
            return self._word_embedding_weight()
        return self.output_weight

    def output_layer_weight(self) -> torch.Tensor:
        if self.pre_process:
            return self._word_embedding_weight()
        if self.output_weight is None:
            raise RuntimeError(f"virtual stage {self.virtual_stage} has no output layer (not the last stage)")
        return self.output_weight

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None,
                loss_mask: torch.Tensor | None = None) -> torch.Tensor:
        if self.embedding is not None:
            x = self.embedding(x)
        for layer in self.layers:
            x = layer(x)
        if self.final_layernorm is None:
            return x
        x = self.final_layernorm(x)
        logits = torch.matmul(x, self.output_layer_weight().t())
        if labels is None:
            return logits
        if loss_mask is None:
            raise ValueError("GPTChunk.forward: labels given without a loss_mask (pass ones to count every token)")
        return lm_loss(logits, labels, loss_mask)


def virtual_stage_layers(cfg: GPTConfig, pp_rank: int, chunk: int) -> tuple[int, list[int]]:
    """(virtual stage index, global layer numbers) of ``chunk`` on pipeline rank ``pp_rank``."""
    v = chunk * cfg.pp + pp_rank
    per = cfg.layers_per_virtual_stage
    return v, list(range(v * per, (v + 1) * per))


def build_chunks(cfg: GPTConfig, pp_rank: int, *, device: torch.device | str = "cpu") -> list[GPTChunk]:
    """This pipeline rank's model chunks in forward order, on ``device`` in the run's dtype."""
    dtype = torch.bfloat16 if cfg.bf16 else torch.float32
    n_virtual = cfg.pp * cfg.vp
    chunks = []
    for c in range(cfg.vp):
        v, layers = virtual_stage_layers(cfg, pp_rank, c)
        chunk = GPTChunk(cfg, layers, pre_process=v == 0, post_process=v == n_virtual - 1, virtual_stage=v)
        chunks.append(chunk.to(device=device, dtype=dtype))
    return chunks


def build_full_model(cfg: GPTConfig, *, device: torch.device | str = "cpu") -> GPTChunk:
    """The whole model as one chunk (the single-process reference; tied embedding is one tensor)."""
    dtype = torch.bfloat16 if cfg.bf16 else torch.float32
    chunk = GPTChunk(cfg, list(range(cfg.num_layers)), pre_process=True, post_process=True)
    return chunk.to(device=device, dtype=dtype)
