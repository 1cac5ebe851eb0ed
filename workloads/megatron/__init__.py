"""megatron-core's own code under the ``equivalence`` kind (adapters, CPU compatibility layer,
planted faults). Importing this package does not import megatron-core."""
