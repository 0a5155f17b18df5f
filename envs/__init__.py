"""envs: filled by its issue."""
