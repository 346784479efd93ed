"""The Charter simulator: one committee model shared by the mock client and the service."""
