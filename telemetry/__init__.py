"""telemetry: filled by its issue."""
