"""mape-k: an asyncio daemon that keeps a Charter service healthy through the MAPE-K loop."""

__version__ = "0.1.0"
