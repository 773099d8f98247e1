"""What runs on the robot: the `rlivs` command line (`cli.py`, `commands/`, `options.py`), the edge service behind
`rlivs serve` (`service/`), the benchmark harness (`eval/`) and robot-facing formats (`foxglove.py`, `source_specs.py`).
Only this package parses argv or owns a service."""
