"""The watcher: committed trigger files in, exactly one RQ job per approved trigger out.

``reconcile`` reads the tip of the tracked branch and decides what is new (``decide``),
``state`` remembers every decision in Redis, ``events`` wakes the loop on inotify events,
``daemon`` runs the loop as leader of the "watcher" lease, ``http`` serves health,
readiness, metrics and the push webhook, ``cli`` is the ``watch`` command.
"""
