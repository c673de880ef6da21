"""The workers: RQ jobs that roll an approved trigger out, stage by stage.

``workers.jobs.run_trigger`` is the job the watcher enqueues (by name, never by import);
``workers.jobs.run_rollback`` is the operator's explicit rollback. Everything else here
serves those two: rendering overlays at the trigger SHA, talking to Kubernetes, waiting for
rollouts, gates, the production canary and its metric analysis, checkpoints and leases.
"""
