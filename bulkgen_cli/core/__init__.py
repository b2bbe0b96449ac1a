"""The foundations: plain values (model), errors, text safety, settings, events. Imports nothing of bulkgen."""
