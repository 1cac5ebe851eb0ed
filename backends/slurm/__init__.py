"""The Slurm backend (``--backend slurm``): one sbatch allocation per launch.

``backend`` (the Backend, registered through the ``runner`` entry point), ``options``,
``script`` (rendering), ``head_node`` (the program the batch script runs on the first
node), ``status`` (parsing the tools' output), ``classify`` (outcomes).
"""
