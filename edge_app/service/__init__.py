"""The service behind `rlivs serve` (the command itself is edge_app/commands/serve.py), a pipeline:

- `core.py`: `EdgeService`, the wiring (one model for ingest and questions, the workers, the clip bus and its
  listeners, the question gate) and the queries the API answers; `ServiceConfig`, `NotReady`
- `workers.py`: `StreamWorker` (one ingest thread per source: gate, model turn, caption, commit, publish)
- `scheduler.py`: `ModelTurns` (where ready clips meet the model: active cameras first, a forced caption's wait
  bounded by --max-lag)
- `bus.py`: `ClipBus`, `ClipEvent`, `MatchEvent`, `Listener`; `listeners.py`: thumbnails, metrics, server-sent
  events, webhooks, retention; `watches.py`: `WatchMatcher` (watches, marks, catch-up); `mqtt.py`: `MqttPublisher`
  (captions and watch matches to an MQTT broker), `MqttConfig`
- `questions.py`: `QuestionGate` (questions take turns), `Busy`, `QuestionCancelled`; `payloads.py`: the JSON of a
  caption and a match, thumbnails
- `webhooks.py`: `WebhookSender` (watch matches POSTed with retries, one deadline and a circuit breaker) and
  `WebhookPolicy` (which addresses a webhook may reach)
- `app.py`: `create_app` and `Server`; `api/`: the routes, one module per resource; `security.py`: Host check,
  token, body cap, tickets; `transport.py`: uvicorn; `connections.py`: `Limits` and the guarded h11 protocol
- `store.py`: the service's own SQLite file next to the memory: watches, matches, thumbnails
- `events.py`: fan-out of `caption` and `watch` events to server-sent-event clients
- `metrics.py`: a small Prometheus registry; `telemetry.py`: the families `GET /metrics` shows
- `page.py`: the web page served at `/` (`/favicon.ico` answers 204)

Importing this package imports nothing: FastAPI and uvicorn load with `app.py` only.
"""
