"""megatron-core's fine-grained a2a overlap (combined 1F1B) vs its sequential forward/backward.

Layer level (``params.level: layer``), as megatron-core's own ``a2a_overlap`` tests do it:
the reference runs one ``TransformerLayer`` forward and backward per microbatch; the candidate
runs ``TransformerLayerSchedulePlan.run`` over the same microbatches — forward of microbatch i
interleaved with backward of microbatch i-1, split into the attn / dispatch / mlp / combine
nodes of ``models/gpt/fine_grained_callables.py``. Model-chunk level (``level: chunk``): one
GPTModel per entry of ``params.layers`` (e.g. [2, 1]); the reference runs each model's forward
and backward, the candidate runs ``TransformerModelChunkSchedulePlan.run`` as forward chunk 0,
forward chunk 1 + backward chunk 0, backward chunk 1. Captures: outputs, input gradients
(layer level) and every parameter gradient.
"""
from __future__ import annotations

from types import SimpleNamespace
from typing import Any, Mapping

from runner.equivalence import grads
from workloads.megatron import plants
from workloads.megatron.session import init_parallel, layer_spec, megatron, seed_all, transformer_config

VOCAB = 64


class ChunkState:
    """The model-chunk state a layer-level plan reads (unset attributes read as None)."""

    def __init__(self, model: Any) -> None:
        self.model = model

    def __getattr__(self, name: str) -> Any:
        return None


def _gpt(config: Any, seq_len: int) -> Any:
    from megatron.core.models.gpt.gpt_model import GPTModel

    return GPTModel(config=config, transformer_layer_spec=layer_spec(config), vocab_size=VOCAB,
                    max_sequence_length=seq_len, pre_process=True, post_process=True)


def setup(ctx: Any, params: Mapping[str, Any]) -> dict[str, Any]:
    import torch

    with megatron(ctx):
        ep = int(params.get("ep", ctx.world_size))
        init_parallel(ctx, ep=ep)
        seed_all(int(params.get("seed", 1234)))
        seq = int(params.get("seq_len", 8))
        mbs = int(params.get("microbatches", 3))
        gen = torch.Generator().manual_seed(int(params.get("seed", 1234)) * 7919 + ctx.rank)
        if params.get("level", "layer") == "layer":
            config = transformer_config(params, num_layers=1, ep=ep)
            model = _gpt(config, seq)
            dtype = config.params_dtype
            inputs = [(torch.randn(seq, 1, config.hidden_size, generator=gen) * 4).to(dtype) for _ in range(mbs)]
            return {"layer": model.decoder.layers[0], "inputs": inputs, "keep": SimpleNamespace(model=model),
                    "params": dict(params)}
        models = []
        for n in params.get("layers", [2, 1]):
            models.append(_gpt(transformer_config(params, num_layers=int(n), ep=ep), seq))
        data = []
        for _ in models:
            ids = torch.randint(VOCAB, (1, seq), generator=gen)
            data.append({"input_ids": ids, "labels": torch.randint(VOCAB, (1, seq), generator=gen),
                         "position_ids": torch.arange(seq).unsqueeze(0),
                         "attention_mask": torch.ones((1, 1, seq, seq), dtype=torch.bool)})
        return {"chunks": torch.nn.ModuleList(models), "data": data, "params": dict(params)}


def _leaf(x: Any) -> Any:
    return x.detach().clone().requires_grad_(True)


def reference(ctx: Any, state: dict[str, Any]) -> dict[str, Any]:
    import torch

    with megatron(ctx):
        if "layer" in state:
            layer = state["layer"]
            outputs, input_grads = [], []
            for x in state["inputs"]:
                x = _leaf(x)
                out = layer(x)[0]
                out.backward(torch.ones_like(out))
                outputs.append(out.detach())
                input_grads.append(x.grad.detach())
            return {"outputs": outputs, "input_grads": input_grads, "grads": grads(state)}
        losses = []
        for model, data in zip(state["chunks"], state["data"]):
            loss = model(**data).float()
            loss.backward(torch.ones_like(loss))
            losses.append(loss.detach())
        return {"outputs": losses, "grads": grads(state)}


def candidate(ctx: Any, state: dict[str, Any]) -> dict[str, Any]:
    import torch
    from megatron.core.models.common.model_chunk_schedule_plan import (
        TransformerLayerSchedulePlan,
        TransformerModelChunkSchedulePlan,
    )
    from megatron.core.pipeline_parallel.utils import get_comm_stream, get_comp_stream, set_streams

    with megatron(ctx), plants.planted(state["params"].get("plant")):
        set_streams()
        if "layer" in state:
            layer = state["layer"]
            xs = [_leaf(x) for x in state["inputs"]]
            event = torch.cuda.Event()
            chunk_state = ChunkState(state["keep"].model)
            plans = [TransformerLayerSchedulePlan(layer, event, chunk_state, get_comp_stream(), get_comm_stream(),
                                                  extra_args={}) for _ in xs]
            outputs, input_grads = [], []
            out, _ = TransformerLayerSchedulePlan.run(plans[0], None, f_input=xs[0])
            outputs.append(out.detach())
            for i in range(1, len(xs)):
                nxt, b_grad = TransformerLayerSchedulePlan.run(plans[i], plans[i - 1], f_input=xs[i],
                                                               b_grad=torch.ones_like(out))
                input_grads.append(b_grad.detach())
                out = nxt
                outputs.append(out.detach())
            _, b_grad = TransformerLayerSchedulePlan.run(None, plans[-1], b_grad=torch.ones_like(out))
            input_grads.append(b_grad.detach())
            return {"outputs": outputs, "input_grads": input_grads, "grads": grads(state)}
        models, data = list(state["chunks"]), state["data"]
        plans = [m.build_schedule_plan(**d) for m, d in zip(models, data)]
        losses = []
        prev = TransformerModelChunkSchedulePlan.run(plans[0], None)
        losses.append(prev.detach().float())
        for i in range(1, len(plans)):
            cur = TransformerModelChunkSchedulePlan.run(plans[i], plans[i - 1], b_grad=torch.ones_like(prev))
            losses.append(cur.detach().float())
            prev = cur
        TransformerModelChunkSchedulePlan.run(None, plans[-1], b_grad=torch.ones_like(prev))
        return {"outputs": losses, "grads": grads(state)}
