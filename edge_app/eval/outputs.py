"""The files of an eval run in its --out folder: predictions.jsonl (one row per answered question, appended and
fsynced as it is answered; read back on resume), summary.json and results.md (the markdown table), run.json (what a
resume must match) and memory.db (the per-run memory).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from rlivs.runtime.errors import UserError

log = logging.getLogger("rlivs.eval")

PREDICTIONS = "predictions.jsonl"
SUMMARY = "summary.json"
TABLE = "results.md"
RUN = "run.json"
MEMORY = "memory.db"


def read_predictions(path: Path) -> list[dict]:
    """Rows of predictions.jsonl. A last line cut short by a crash (no final newline, not valid JSON) is dropped and
    the file truncated to the last complete row, so that question is answered again on resume; a bad line anywhere
    else means a damaged file and is an error."""
    path = Path(path)
    if not path.exists():
        return []
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        cut = data.rfind(b"\n") + 1  # start of the unterminated last line
        try:
            json.loads(data[cut:])
            repair = data + b"\n"  # a complete row whose newline was lost: keep it
        except json.JSONDecodeError:
            log.warning("%s: dropping an incomplete last row (an interrupted write); it will be redone", path)
            repair = data[:cut]
        with open(path, "wb") as f:
            f.write(repair)
        data = repair
    rows = []
    for n, line in enumerate(data.decode("utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            raise UserError(f"{path}: line {n} is not valid JSON; the results file is damaged (restore it or start "
                            f"a new --out)") from None
    return rows


def fmt_pct(x) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


def fmt_num(x, nd=2) -> str:
    return "–" if x is None else f"{x:.{nd}f}"


def settings_line(p: dict) -> str:
    s, f, pr, r, c = p["selection"], p["fifo"], p["probe"], p["retrieval"], p["clip"]
    keep = f"keep {s['keep']}" if s.get("keep") is not None else f"keep ratio {s['keep_ratio']:g}"
    layers = ",".join(map(str, pr["layers"])) if pr.get("layers") else f"auto({pr['num_layers']})"
    fifo = f"{f['capacity_clips']} clips" + (f" / {f['capacity_tokens']} tokens" if f.get("capacity_tokens") else "")
    return (f"strategy {s['strategy']}, {keep}, FIFO {fifo}, probe layers {layers}, {c['frames_per_clip']} frames "
            f"per clip at {c['fps']:g} fps, top-k {r['top_k']}, token budget {r['token_budget']}, MMR lambda "
            f"{r['mmr_lambda']:g}, caption tokens {p['caption']['max_new_tokens']}, answer tokens "
            f"{p['answer']['max_new_tokens']}")


def judge_line(j: dict) -> str:
    if j.get("kind") == "openai":
        served = f" (served as {j['served_model']})" if j.get("served_model") else ""
        return f"endpoint {j['url']}, model {j['model']}{served}"
    if j.get("kind") == "local":
        return f"local {j['model']} (rlivs {j.get('backend')} backend, weights {j.get('weights')}), greedy"
    return "none (judge-free metrics only)"


def markdown_table(summary: dict) -> str:
    head = ("| benchmark | questions | no context | EM % | token F1 % | judge acc % | judge score (0-5) | "
            "judge errors | latency s (mean) |\n|---|---|---|---|---|---|---|---|---|\n")
    lines = []
    for name, m in summary["benchmarks"].items():
        q = f"{m['questions']}" + ("" if m["questions"] == m["expected_questions"] else f"/{m['expected_questions']}")
        lines.append(f"| {name} | {q} | {m['no_context']} | {fmt_pct(m['exact_match'])} | "
                     f"{fmt_pct(m['token_f1'])} | {fmt_pct(m['judge_accuracy'])} | {fmt_num(m['judge_score'])} | "
                     f"{m['judge_errors'] if m['judged'] else '–'} | {fmt_num(m['latency_s_mean'], 3)} |")
    text = [
        f"# rlivs eval results{'' if summary['complete'] else ' (INCOMPLETE: resume with --resume)'}",
        "",
        f"- model: `{summary['model']}` ({summary['backend']}, {summary['device']}, {summary['dtype']})",
        f"- settings: {settings_line(summary['pipeline'])}",
        f"- judge: {judge_line(summary['judge'])}; prompt {summary['judge_prompt_version']} "
        f"sha256 `{summary['judge_prompt_sha256'][:16]}`",
        f"- causal audit: {summary['all'].get('causal_violations', 0)} answer(s) used video from after their "
        f"question's end time" + "".join(f"; {n}: times on the {a['axis']} axis" for n, a in
                                          summary.get("time_axes", {}).items()),
        "",
        head + "\n".join(lines),
        "",
        "Accuracy = yes / (yes + no) over readable verdicts; score = mean of readable 0-5 scores; judge errors = "
        "outputs without a readable verdict or score. Compare systems only under the same judge and prompt hash.",
    ]
    return "\n".join(text) + "\n"


def write_outputs(out: Path, summary: dict) -> None:
    out = Path(out)
    for name, text in ((SUMMARY, json.dumps(summary, indent=2, sort_keys=True)), (TABLE, markdown_table(summary))):
        tmp = out / (name + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, out / name)
