"""The operations, as a library: submit, status and list, pause/resume/cancel/retry-failed, single items,
schedules, API tokens, following a job, results as files. Plain values in, plain data out; none prints,
reads flags or builds a notifier (one is passed in).

May import core, input, store, content and delivery; never engine nor a front end (design.md, "Layers").
"""
