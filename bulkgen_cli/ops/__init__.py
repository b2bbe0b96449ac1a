"""What a user does, as a library: submit, pause, items, schedules, tokens, results."""
