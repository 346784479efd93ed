"""The operator console at /ui: server-side pages, live decisions, one-click control."""
