"""``python -m watcher``: the ``watch`` command without the CLI group (tests run it so)."""

from watcher.cli import watch

watch(prog_name="python -m watcher")
