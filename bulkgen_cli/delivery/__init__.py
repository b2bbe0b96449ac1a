"""Notifications (webhook, e-mail, outbox) and the network policy for them. Imports core and store."""
