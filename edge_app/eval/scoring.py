"""Scores of `rlivs eval`: the judge-free metrics (exact match and token F1 over normalised answers) and the
aggregates of answered rows (judge accuracy and score, latency) per benchmark, per answer type and overall.
"""

from __future__ import annotations

import platform
import re
import string
import time
from collections import Counter

import numpy as np

from rlivs.edge_app.eval.annotations import Benchmark
from rlivs.edge_app.eval.judges import JUDGE_PROMPT_SHA256, JUDGE_PROMPT_VERSION


_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans({c: " " for c in string.punctuation})


def normalize_answer(text: str) -> str:
    """Lower case, punctuation -> spaces, articles (a, an, the) dropped, whitespace collapsed."""
    return " ".join(_ARTICLES.sub(" ", str(text).lower().translate(_PUNCT)).split())


def exact_match(prediction: str, reference: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(reference))


def token_f1(prediction: str, reference: str) -> float:
    """Harmonic mean of token precision and recall over the normalised texts' bags of tokens."""
    p, r = normalize_answer(prediction).split(), normalize_answer(reference).split()
    if not p or not r:
        return float(p == r)
    common = sum((Counter(p) & Counter(r)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(p), common / len(r)
    return 2 * precision * recall / (precision + recall)


def _mean(xs: list[float]) -> float | None:
    return float(np.mean(xs)) if xs else None


def aggregate(rows: list[dict]) -> dict:
    """Metrics of a set of rows. Accuracy = yes / (yes + no) over readable verdicts; score = mean readable score."""
    judged = [r["judge"] for r in rows if r.get("judge")]
    yes = sum(1 for j in judged if j.get("pred") == "yes")
    no = sum(1 for j in judged if j.get("pred") == "no")
    scores = [float(j["score"]) for j in judged if j.get("score") is not None]
    lat = [float(r["latency_s"]) for r in rows if not r.get("no_context")]
    return {
        "questions": len(rows),
        "no_context": sum(1 for r in rows if r.get("no_context")),
        "causal_violations": sum(1 for r in rows if r.get("causal") is False),
        "exact_match": _mean([r["em"] for r in rows]),
        "token_f1": _mean([r["f1"] for r in rows]),
        "judged": len(judged),
        "judge_yes": yes,
        "judge_no": no,
        "judge_accuracy": yes / (yes + no) if yes + no else None,
        "judge_score": _mean(scores),
        "judge_scored": len(scores),
        "judge_errors": sum(1 for j in judged if j.get("error")),
        "latency_s_mean": _mean(lat),
        "latency_s_p50": float(np.percentile(lat, 50)) if lat else None,
        "latency_s_p90": float(np.percentile(lat, 90)) if lat else None,
    }


def summarize(rows: list[dict], benches: list[Benchmark], ident: dict, wall_s: float, complete: bool,
              judge: dict) -> dict:
    import rlivs

    per = {}
    for b in benches:
        mine = [r for r in rows if r["benchmark"] == b.name]
        entry = aggregate(mine)
        entry["expected_questions"] = sum(len(v.questions) for v in b.videos)
        entry["videos"] = len(b.videos)
        entry["format"] = b.format
        types = sorted({str(r.get("answer_type")) for r in mine if r.get("answer_type") is not None})
        if types:
            entry["by_answer_type"] = {t: aggregate([r for r in mine if str(r.get("answer_type")) == t]) for t in types}
        per[b.name] = entry
    return {
        "complete": complete,
        "benchmarks": per,
        "all": aggregate(rows),
        "causal_violation_qids": [f"{r['benchmark']}/{r['qid']}" for r in rows if r.get("causal") is False][:10],
        "time_axes": {b.name: {"axis": b.time_axis, "reason": b.axis_reason} for b in benches},
        "model": ident.get("model"), "model_id": ident.get("model_id"),
        "backend": ident.get("backend"), "device": ident.get("device"), "dtype": ident.get("dtype"),
        "pipeline": ident.get("pipeline"), "data": ident.get("data"), "annotations": ident.get("annotations"),
        "judge": judge, "judge_prompt_version": JUDGE_PROMPT_VERSION, "judge_prompt_sha256": JUDGE_PROMPT_SHA256,
        "wall_s_this_run": wall_s,
        "versions": {"rlivs": getattr(rlivs, "__version__", None), "python": platform.python_version(),
                     "numpy": np.__version__},
        "written_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
