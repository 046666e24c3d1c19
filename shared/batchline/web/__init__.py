"""The jobs page: a small read-only web page on the api function.

`GET /` lists jobs, `GET /jobs/{job_id}` shows one, `GET /assets/{name}` serves the page's
own script, style sheet and icon. Pages are rendered on the server (Jinja2, every value
escaped) from the same ports the API reads; a little script re-fetches the page's
content while a job it shows is running. Everything else on the api function (`/v1/...`
and any other path) is the JSON API of `batchline.edge`.

This module stays import-light: the edge asks `is_page` on every request.
"""

from __future__ import annotations

#: Paths the page answers, with its own HTML errors; every other path is the JSON API's.
PAGE_PREFIXES = ("/jobs/", "/assets/")


def is_page(path: str) -> bool:
    """Whether `path` is one of the page's routes (`/`, `/jobs/...`, `/assets/...`)."""
    return path == "/" or path.startswith(PAGE_PREFIXES)
