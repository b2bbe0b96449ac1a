"""bulkgen: queue 10-50 articles as one bulk job and generate them one at a time."""

__version__ = "0.1.0"
