"""`rlivs eval`, the library part: streaming video QA benchmarks (RVS-Ego / RVS-Movie protocol, docs/evaluation.md).

Modules: `annotations` (both annotation formats -> benchmarks of videos and questions), `runner` (the causal runner,
resume, re-judging: `run_eval`), `judges` (the pinned judge prompt and the judges), `scoring` (judge-free metrics and
aggregates), `outputs` (the files of a run). The command itself (flags, progress bar) is `edge_app/commands/eval.py`.
"""
