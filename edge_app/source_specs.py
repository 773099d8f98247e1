"""The `--source` values of the command line -> `SourceSpec`s (rlivs serve).

Each value is `[name=]URL` (`rlivs.runtime.sources.spec.parse_source`); across the values given, two sources may not
end up with the same stream name.
"""

from __future__ import annotations

from rlivs.runtime.errors import UserError
from rlivs.runtime.sources.spec import SourceSpec, parse_source


def parse_sources(specs: list[str]) -> list[SourceSpec]:
    """Parse several `--source` values; two sources may not share a stream name."""
    out = [parse_source(s) for s in specs]
    seen: dict[str, str] = {}
    for s in out:
        if s.name in seen:
            raise UserError(f"sources {seen[s.name]!r} and {s.url!r} would both be stream {s.name!r}: name them, "
                            f"e.g. --source {s.name}1={seen[s.name]} --source {s.name}2={s.url}")
        seen[s.name] = s.url
    return out


