"""The processor: its loop, one attempt, leases and fencing, the runner, the quality gate."""
