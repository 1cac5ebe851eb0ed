"""The ``local`` backend: torchrun on this machine, with the process-tree and port helpers it uses."""
