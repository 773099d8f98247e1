"""The `rlivs` commands, one module per family; each exposes `register(app)` (edge_app/cli.py calls them in order).

| module         | commands                                                        |
|----------------|-----------------------------------------------------------------|
| `ingest.py`    | `ingest`, `ask`, `captions`, `demo`                             |
| `memory.py`    | `memory info|export|import`, `forget`, `reindex`                |
| `export.py`    | `export`, `build-engines`                                       |
| `eval.py`      | `eval`                                                          |
| `serve.py`     | `serve`                                                         |
| `calibrate.py` | `calibrate collect|layers|quantize|report`                      |
| `doctor.py`    | `doctor`                                                        |
| `check.py`     | `check`                                                         |

Shared options (each setting declared once: name, default, help, check), the error exit and flags -> PipelineConfig
are in edge_app/options.py.
"""
