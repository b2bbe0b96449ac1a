"""The processor: its loop, one claimed item's attempt, leases and fencing, the runner (threads, signals,
grace), the attached observer, the quality gate.

May import core, input, store, content and delivery; never ops (what joins them, the schedules' ticker, is
wired by a front end) nor a front end (design.md, "Layers").
"""
