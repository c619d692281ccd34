"""tallyproxy: an OpenAI-compatible reverse proxy that meters tokens and cost."""

__version__ = "0.1.0"
