"""The one error type for user-facing refusals.

`UserError` is raised when input, settings, files or the environment cannot be used as given; its message says what
is wrong and what to do. It subclasses ValueError, so callers that catch ValueError keep working. The CLI turns it,
and only it, into exit status 2, and the REST API into a 4xx; any other exception is a bug in rlivs and is reported
as one (one line naming the component, exit 1; `rlivs --debug` shows the traceback; a JSON 500 from the API).
"""

from __future__ import annotations


class UserError(ValueError):
    """A refusal the user can act on: the message names the problem and the fix."""
