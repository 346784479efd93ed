"""The MAPE-K loop: Monitor, Analyze, Plan, Guards, Execute, Knowledge, and the orchestrator."""
