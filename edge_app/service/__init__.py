"""The service behind `rlivs serve` (the command itself is edge_app/commands/serve.py).

- `core.py`: `EdgeService` (questions, captions, watches, `publish_clip`, health), `ServiceConfig`, `NotFound` and
  `NotReady`, thumbnails and the caption JSON
- `workers.py`: `StreamWorker` (one ingest thread per source)
- `webhooks.py`: `WebhookSender` (watch matches POSTed with retries, one deadline and a circuit breaker) and
  `WebhookPolicy` (which addresses a webhook may reach)
- `mqtt.py`: `MqttPublisher` (captions and watch matches published to an MQTT broker), `MqttConfig`
- `connections.py`: `Limits` (open connections, request-head timeout)
- `app.py`: the FastAPI app (`create_app`: auth and body-size middleware, error bodies), `Server` (uvicorn),
  `is_loopback`
- `store.py`: the service's own SQLite file next to the memory: watches, matches, thumbnails
- `events.py`: fan-out of `caption` and `watch` events to server-sent-event clients
- `metrics.py`: a small Prometheus registry; `telemetry.py`: the families `GET /metrics` shows
- `page.py`: the web page served at `/` (`/favicon.ico` answers 204)

Importing this package imports nothing: FastAPI and uvicorn load with `app.py` only.
"""
