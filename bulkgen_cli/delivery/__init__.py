"""Delivery of notifications: the outbox's deliverers (webhook, e-mail, `--on-complete`) and the network
policy that jobs submitted over HTTP follow.

May import core, input and store (the outbox lives in the store) (design.md, "Layers").
"""
