"""Settings module for plain ``rq worker -c workers.rq_settings``.

RQ forks a work-horse for every job. A module the worker process never imported is
imported again in each horse, and the job module pulls in the kubernetes client: about a
second per job, which is what a burst of superseded triggers costs most. Importing the
jobs here, in the worker process, lets every horse inherit them from the fork.
"""

from __future__ import annotations

import workers.jobs  # noqa: F401 - imported for the fork to inherit

QUEUES = ["deployments"]
