"""The HTTP API of `rlivs serve`, one module per resource, each a `routes(service, ...) -> APIRouter`:

- `system.py`: the page `/`, `/favicon.ico`, `/healthz`, `/metrics`, POST /v1/tickets
- `streams.py`: GET /v1/streams, thumbnails, kept tokens
- `captions.py`: GET /v1/captions
- `ask.py`: POST /v1/ask, POST /v1/ask/stream
- `events.py`: GET /v1/events (server-sent events)
- `watches.py`: /v1/watches and their matches
- `errors.py`: the JSON error answers (exception handlers); `common.py`: size limits and text checks

`app.create_app` puts them together with the security middleware (security.py).
"""
