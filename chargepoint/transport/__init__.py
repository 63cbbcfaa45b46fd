"""The secure link to the central system: TLS context (tls), reconnect back-off
(backoff) and the websocket connection manager (link.Link)."""
