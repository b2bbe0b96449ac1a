"""The command line (front end): the Typer commands, their Rich rendering, and the wiring of the layers below
(the notifier's settings, the runner and its schedules' ticker). `main` holds the app, `common` the options and
helpers every command module shares; each other module adds its commands with `register(app)`.

May import every layer: core, input, store, content, delivery, engine, ops, and server (`bulkgen serve`).
The only layer with `server/` that imports typer and rich (design.md, "Layers").

Cold start: every command module is loaded for `bulkgen --help`, so each imports core and `cli.common` at
module top, and the layers below the CLI (ops, store, engine, input, delivery, server), `cli.render` and rich
in the command that uses them. Imported at module top they would add about 170 ms to `--help` (measured
with `python -X importtime`: engine.runner with httpx about 100 ms, input and export with yaml about 30 ms,
store.sqlite 14 ms, ops about 20 ms) to a start of about 120 ms.
"""
