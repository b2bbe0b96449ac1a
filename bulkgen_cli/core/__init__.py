"""The foundations: the records and statuses (model), errors with their exit codes, text helpers, settings
(flags > environment > defaults), the processor's events and steps, notification channels as values.

Imports nothing of bulkgen but itself (design.md, "Layers").
"""
