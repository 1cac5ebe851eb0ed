"""The built-in GPT functional-training workload (case kind ``gpt``).

Modules:
    config          GPTConfig: Megatron-named model/training arguments and layout checks
    model           GPT (learned positions, pre-LN, GeLU MLP, tied embeddings) split into
                    (virtual) pipeline stage chunks
    pipeline        interleaved 1F1B / 1F1B / no-pipeline schedules with p2p between stages
    lr_schedule     Megatron's OptimizerParamScheduler (linear warmup, cosine to min_lr)
    dist_optimizer  distributed optimizer: bucketed reduce-scatter, sharded AdamW, all-gather
    data            Megatron indexed dataset reader/writer, synthetic corpus, sample order
    checkpoint      torch_dist (torch.distributed.checkpoint) save/load with a latest marker
    train           the training loop, metrics, checkpoint save/resume
    faults          planted checkpoint bugs for the resume test's negative controls
    worker          in-rank entry ``workloads.gpt.worker:run``
    kind            the ``gpt`` case kind (imports without torch)
"""
