"""The command line (front end): the Typer commands, their Rich rendering, and the wiring of the layers below
(the notifier's settings, the runner and its schedules' ticker). `main` holds the app, `common` the options and
helpers every command module shares; each other module adds its commands with `register(app)`.

May import every layer: core, input, store, content, delivery, engine, ops, and server (`bulkgen serve`).
The only layer with `server/` that imports typer and rich (design.md, "Layers").
"""
