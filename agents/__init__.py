"""agents: filled by its issue."""
