"""The Kubernetes backend (``--backend kubernetes``): an Indexed Job + headless Service per launch.

``backend`` (the Backend, registered through the ``runner`` entry point), ``options``,
``manifests`` (pure rendering), ``status`` (reading Job/Pod objects), ``classify``
(outcomes), ``logs`` (pod logs into the results dir).
"""
