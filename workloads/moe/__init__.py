"""The MoE all-to-all overlap workload: a transformer layer with an expert-parallel token
dispatcher, its schedule nodes and the overlapped 1F1B step, and the ``a2a_overlap`` case kind.

Only ``workloads.moe.kind`` is imported by the runner outside ranks; it does not import torch.
"""
