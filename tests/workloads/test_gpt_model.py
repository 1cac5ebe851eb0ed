"""GPT model, config checks, LR schedule, faults and the CPU memory metric (single process, fast)."""
from __future__ import annotations

import math

import pytest
import torch

from workloads.gpt.config import ConfigError, GPTConfig
from workloads.gpt.faults import FAULTS, RESUME_FAULTS, Fault
from workloads.gpt.lr_schedule import OptimizerParamScheduler, ScheduleParams
from workloads.gpt.model import build_chunks, build_full_model, lm_loss, virtual_stage_layers
from workloads.gpt.pipeline import ActivationTracker

SMALL = dict(num_layers=8, hidden_size=32, num_attention_heads=4, seq_length=16, max_position_embeddings=16,
             vocab_size=64, hidden_dropout=0.0, attention_dropout=0.0)


def _batch(cfg: GPTConfig, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    text = torch.randint(0, cfg.vocab_size, (2, cfg.seq_length + 1), generator=g)
    return text[:, :-1], text[:, 1:], torch.ones(2, cfg.seq_length)


@pytest.mark.parametrize("pp,lpvs", [(4, 1), (4, 2), (2, 1), (2, None)])
def test_stage_chunks_compose_to_the_full_model(pp: int, lpvs) -> None:
    cfg = GPTConfig(**SMALL, pipeline_model_parallel_size=pp, num_layers_per_virtual_pipeline_stage=lpvs)
    full = build_full_model(cfg)
    tokens, labels, mask = _batch(cfg)
    ref = full(tokens, labels, mask)
    chunks = {r: build_chunks(cfg, r) for r in range(pp)}
    n_virtual = pp * cfg.vp
    x = tokens
    covered = []
    for v in range(n_virtual):
        chunk = chunks[v % pp][v // pp]
        assert chunk.virtual_stage == v
        covered += [layer.layer_number for layer in chunk.layers]
        x = chunk(x, labels, mask) if v == n_virtual - 1 else chunk(x)
    assert covered == list(range(cfg.num_layers))
    assert torch.equal(x, ref)  # same init, same ops: bitwise


def test_virtual_stage_layout_matches_megatron() -> None:
    cfg = GPTConfig(**SMALL, pipeline_model_parallel_size=4, num_layers_per_virtual_pipeline_stage=1)
    assert cfg.vp == 2
    # rank 0 holds layers 0 and 4, rank 3 layers 3 and 7 (virtual stage = chunk * pp + rank)
    assert [virtual_stage_layers(cfg, 0, c)[1] for c in range(2)] == [[0], [4]]
    assert [virtual_stage_layers(cfg, 3, c)[1] for c in range(2)] == [[3], [7]]
    first, last = build_chunks(cfg, 0)[0], build_chunks(cfg, 3)[1]
    assert first.pre_process and not first.post_process and first.shared_embedding_weight() is not None
    assert last.post_process and last.output_weight is not None
    # the last stage's copy of the tied embedding starts equal to the first stage's weight
    assert torch.equal(last.output_weight, first.embedding.word_embeddings.weight)


def test_full_model_ties_input_and_output_embedding() -> None:
    cfg = GPTConfig(**SMALL)
    model = build_full_model(cfg)
    assert model.output_weight is None and model.shared_embedding_weight() is None
    tokens, labels, mask = _batch(cfg)
    model(tokens, labels, mask).backward()
    # the one weight gets gradient from both uses: the embedding rows of unused tokens still
    # get output-layer gradient (softmax over the whole vocabulary)
    unused = sorted(set(range(cfg.vocab_size)) - set(tokens.flatten().tolist()))
    assert unused and model.embedding.word_embeddings.weight.grad[unused].abs().sum() > 0


def test_labels_without_a_loss_mask_are_rejected_by_name() -> None:
    cfg = GPTConfig(**SMALL)
    model = build_full_model(cfg)
    tokens, labels, mask = _batch(cfg)
    with pytest.raises(ValueError, match="loss_mask"):
        model(tokens, labels)
    assert torch.isfinite(model(tokens, labels, mask))


def test_stage_chunks_without_embedding_or_output_layer_say_so() -> None:
    cfg = GPTConfig(**SMALL, pipeline_model_parallel_size=4)
    first, middle, last = (build_chunks(cfg, r)[0] for r in (0, 1, 3))
    assert first.shared_embedding_weight() is first.embedding.word_embeddings.weight
    assert last.shared_embedding_weight() is last.output_weight is not None
    with pytest.raises(RuntimeError, match="no output layer"):
        middle.output_layer_weight()
    with pytest.raises(RuntimeError, match="no embedding"):
        last._word_embedding_weight()


def test_attention_is_causal() -> None:
    cfg = GPTConfig(**SMALL)
    model = build_full_model(cfg).eval()
    tokens, _, _ = _batch(cfg)
    changed = tokens.clone()
    changed[:, -1] = (changed[:, -1] + 1) % cfg.vocab_size
    a, b = model(tokens), model(changed)
    assert torch.equal(a[:, :-1], b[:, :-1])
    assert not torch.equal(a[:, -1], b[:, -1])


def test_lm_loss_is_the_masked_mean() -> None:
    logits = torch.randn(2, 3, 5)
    labels = torch.randint(0, 5, (2, 3))
    mask = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    per = torch.nn.functional.cross_entropy(logits.reshape(-1, 5), labels.reshape(-1), reduction="none")
    assert torch.allclose(lm_loss(logits, labels, mask), per[mask.reshape(-1) > 0].mean())


def test_dropout_follows_the_global_rng() -> None:
    cfg = GPTConfig(**dict(SMALL, hidden_dropout=0.1, attention_dropout=0.1))
    model = build_full_model(cfg).train()
    tokens, labels, mask = _batch(cfg)
    torch.manual_seed(5)
    a = model(tokens, labels, mask)
    torch.manual_seed(5)
    b = model(tokens, labels, mask)
    c = model(tokens, labels, mask)
    assert torch.equal(a, b) and not torch.equal(b, c)


def test_bf16_chunks() -> None:
    cfg = GPTConfig(**SMALL, bf16=True)
    model = build_full_model(cfg)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    loss = model(*_batch(cfg))
    assert loss.dtype == torch.float32 and math.isfinite(loss.item())


@pytest.mark.parametrize("kwargs,world,key", [
    (dict(num_layers=6, pipeline_model_parallel_size=4), 8, "num_layers"),
    (dict(num_layers=8, pipeline_model_parallel_size=4, num_layers_per_virtual_pipeline_stage=3), 8,
     "num_layers_per_virtual_pipeline_stage"),
    (dict(global_batch_size=12, micro_batch_size=4), 2, "global_batch_size"),
    (dict(pipeline_model_parallel_size=4), 6, "pipeline_model_parallel_size"),
    (dict(tensor_model_parallel_size=2), 8, "tensor_model_parallel_size"),
    (dict(pipeline_model_parallel_size=4, num_layers_per_virtual_pipeline_stage=1, global_batch_size=12,
          micro_batch_size=2), 8, "global_batch_size"),   # 3 microbatches: not a multiple of pp for interleaving
    (dict(hidden_size=30, num_attention_heads=4), 1, "num_attention_heads"),
    (dict(seq_length=128, max_position_embeddings=64), 1, "seq_length"),
])
def test_config_rejects_impossible_layouts(kwargs, world, key) -> None:
    with pytest.raises(ConfigError) as exc:
        GPTConfig(**kwargs).check(world)
    assert exc.value.key == key


def test_config_rejects_unknown_args() -> None:
    with pytest.raises(ConfigError) as exc:
        GPTConfig.from_args({"num_layer": 4})
    assert exc.value.key == "num_layer"
    GPTConfig.from_args({"num_layers": 4, "test_type": "regular", "inject_fault": "rng_not_saved"})


def test_lr_schedule_megatron_semantics() -> None:
    cfg = GPTConfig(lr=1.0, min_lr=0.1, train_iters=10, global_batch_size=4, lr_warmup_fraction=0.2)
    p = ScheduleParams.from_config(cfg)
    assert (p.warmup_steps, p.decay_steps) == (8, 40)   # counted in samples, like Megatron
    s = OptimizerParamScheduler(p)
    lrs = [s.get_lr()]
    for _ in range(12):
        lrs.append(s.step(cfg.global_batch_size))
    assert lrs[0] == 0.0                      # iteration 1 trains with lr 0 (num_steps = 0)
    assert lrs[1] == 0.5 and lrs[2] == 1.0    # linear warmup over 8 samples = 2 iterations
    ratio = (12 - 8) / (40 - 8)
    assert lrs[3] == pytest.approx(0.1 + 0.9 * 0.5 * (math.cos(math.pi * ratio) + 1))
    assert lrs[10] == pytest.approx(0.1)       # end of decay
    assert lrs[12] == 0.1                     # past it: min_lr
    assert all(a >= b for a, b in zip(lrs[2:], lrs[3:]))
    # state round trip, and a checkpoint from a different schedule is refused
    t = OptimizerParamScheduler(p)
    t.load_state_dict(s.state_dict())
    assert t.get_lr() == s.get_lr()
    other = OptimizerParamScheduler(ScheduleParams.from_config(GPTConfig(lr=2.0, train_iters=10)))
    with pytest.raises(ValueError, match="max_lr"):
        other.load_state_dict(s.state_dict())


def test_faults_drop_exactly_their_state() -> None:
    state = {"model": 1, "optimizer": 2, "opt_param_scheduler": 3, "data": 4, "rng.rank0": 5, "iteration": 6}
    assert Fault.parse(None).checkpoint_state(state) == state
    assert "rng.rank0" not in Fault.parse("rng_not_saved").checkpoint_state(state)
    assert "data" not in Fault.parse("data_position_not_saved").checkpoint_state(state)
    assert "optimizer" not in Fault.parse("optimizer_state_not_saved").checkpoint_state(state)
    lr = Fault.parse("lr_scheduler_not_restored")
    assert lr.checkpoint_state(state) == state and not lr.restore_scheduler
    assert len(RESUME_FAULTS) == 4 and set(RESUME_FAULTS) < set(FAULTS)
    assert all(Fault.parse(f).checkpoint_state(state) == state for f in FAULTS if f not in RESUME_FAULTS[:3])
    with pytest.raises(ValueError):
        Fault.parse("bogus")


def test_memory_substitutes_count_real_bytes() -> None:
    from workloads.gpt.memory import tensor_storage_bytes

    cfg = GPTConfig(**SMALL)
    model = build_full_model(cfg)
    n_param_bytes = sum(p.numel() * 4 for p in model.parameters())
    assert tensor_storage_bytes(model) == n_param_bytes
    x = torch.zeros(10)
    extra = {"a": [x, x[2:]], "b": (torch.zeros(3, dtype=torch.float64),)}
    assert tensor_storage_bytes(model, extra) == n_param_bytes + 40 + 24   # the view is not counted twice

    tracker = ActivationTracker([p.untyped_storage().data_ptr() for p in model.parameters()])
    tokens, labels, mask = _batch(cfg)
    out = tracker.forward((0, 0), lambda: model(tokens, labels, mask))
    one = tracker.in_flight
    assert one > 0 and tracker.peak == one
    out2 = tracker.forward((0, 1), lambda: model(tokens, labels, mask))
    assert tracker.peak == 2 * one             # two microbatches' activations in flight
    tracker.released((0, 0))
    assert tracker.in_flight == one
    del out, out2
