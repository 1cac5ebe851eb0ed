"""``python -m runner.worker <results_dir>/launch.json``: the entry point of every rank."""
from runner.worker.main import main

raise SystemExit(main())
