"""The stream gateway: where clients' long-lived SSE connections to agent runs end."""
