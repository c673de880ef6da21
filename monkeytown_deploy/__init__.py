"""monkeytown-deploy: committed trigger files in, staged and canary-gated deploys out."""

__version__ = "0.1.0"
