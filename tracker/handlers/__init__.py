"""HTTP and WebSocket handlers: thin layers over the activity service and the live hub."""
