"""Where articles come from: articles files (YAML, CSV) and templates, parsed and checked into a Manifest.

May import only core; saved templates reach the store through the `templates.Shelf` protocol
(design.md, "Layers").
"""
