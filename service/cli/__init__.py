"""The service's commands: serve, predict, demo, api-key."""
