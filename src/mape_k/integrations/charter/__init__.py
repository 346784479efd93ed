"""Charter API clients: the Protocol, the HTTP client and the in-memory mock."""
