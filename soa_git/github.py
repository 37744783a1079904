"""A tiny client of GitHub's REST API (https://docs.github.com/rest): only what `soa-git pr`
and `soa-git pr-head` need, over the standard library. The token is sent in one header to the
API's own origin and nowhere else: a redirect elsewhere is followed without it; never printed,
never written, never part of an error message. Rate limits and server errors are retried,
honouring Retry-After."""

from __future__ import annotations

import email.utils
import json
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any, Mapping

from . import __version__
from .errors import ConfigError, SoaError

DEFAULT_API_URL = "https://api.github.com"
TOKEN_ENV = "GITHUB_TOKEN"
API_URL_ENV = "GITHUB_API_URL"     # GitHub Actions sets it; GitHub Enterprise has its own
API_VERSION = "2022-11-28"
_NAME = re.compile(r"[A-Za-z0-9_.-]+")
ATTEMPTS = 4
# The longest pause for a rate limit or a server error; a longer reset is reported, not waited.
MAX_WAIT_S = 60.0
_RETRIED = {429, 500, 502, 503, 504}
# https://github.com/o/r(.git), ssh://git@github.com/o/r.git, git@github.com:o/r.git
_REMOTE = re.compile(r"^(?:[a-z][a-z0-9+.-]*://(?:[^@/]*@)?[^/]+(?::\d+)?/|[^@/:]+@[^:/]+:)"
                     r"(?:.*/)?(?P<owner>[A-Za-z0-9_.-]+)/(?P<repo>[A-Za-z0-9_.-]+?)(?:\.git)?/?$")


class GitHubError(SoaError):
    """GitHub refused a request, or could not be reached."""


@dataclass(frozen=True)
class PullRequest:
    number: int
    url: str            # html_url: the page a person opens
    head: str
    base: str
    created: bool       # False: an open one was found and updated


def parse_repo(spec: str) -> tuple[str, str]:
    """`owner/name` -> (owner, name)."""
    owner, _, name = spec.strip().partition("/")
    if not (_NAME.fullmatch(owner or "") and _NAME.fullmatch(name or "")):
        raise GitHubError(f"{spec!r} is not a GitHub repository (expected OWNER/NAME)")
    return owner, name


def repo_from_url(url: str) -> tuple[str, str] | None:
    """(owner, name) from a remote's URL, https or ssh form; None for anything else."""
    match = _REMOTE.match(url.strip())
    return (match["owner"], match["repo"]) if match else None


class GitHub:
    """`request` does one call; the other methods are the few endpoints soa-git uses."""

    @classmethod
    def from_environ(cls, environ: Mapping[str, str], needs: str) -> GitHub:
        """The client of GITHUB_API_URL with GITHUB_TOKEN; `needs` says what the token must
        allow, for the error when there is none."""
        token = environ.get(TOKEN_ENV, "")
        if not token:
            raise ConfigError(f"no GitHub token: set {TOKEN_ENV} to a token that may {needs}")
        return cls(token, environ.get(API_URL_ENV) or DEFAULT_API_URL)

    def __init__(self, token: str, api_url: str = DEFAULT_API_URL, *, timeout: float = 30.0,
                 backoff_s: float = 1.0):
        if not token:
            raise GitHubError("no GitHub token: set GITHUB_TOKEN")
        self._token = token
        self.api_url = (api_url or DEFAULT_API_URL).rstrip("/")
        self.timeout = timeout
        self._backoff_s = backoff_s
        self._opener = urllib.request.build_opener(_TokenStaysHome(_origin(self.api_url)))

    def __repr__(self) -> str:          # never the token
        return f"GitHub({self.api_url!r})"

    def request(self, method: str, path: str, *, query: Mapping[str, str] | None = None,
                body: Mapping[str, Any] | None = None) -> Any:
        url = self.api_url + path + (f"?{urllib.parse.urlencode(query)}" if query else "")
        data = json.dumps(body).encode("utf-8") if body is not None else None
        headers = {"Accept": "application/vnd.github+json",
                   "Authorization": f"Bearer {self._token}",
                   "X-GitHub-Api-Version": API_VERSION,
                   "User-Agent": f"soa-git/{__version__}"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        for attempt in range(ATTEMPTS):
            request = urllib.request.Request(url, data=data, headers=headers, method=method)
            try:
                with self._opener.open(request, timeout=self.timeout) as response:
                    raw = response.read()
                break
            except urllib.error.HTTPError as error:
                wait = self._wait_s(error, attempt)
                if wait is None or attempt + 1 == ATTEMPTS:
                    raise GitHubError(_explain(method, path, error.code, _read_error(error),
                                               wait)) from None
                error.close()
            except (urllib.error.URLError, OSError) as error:
                reason = getattr(error, "reason", error)
                raise GitHubError(f"cannot reach GitHub at {self.api_url}: {reason}") from None
            time.sleep(wait)
        try:
            return json.loads(raw) if raw.strip() else None
        except ValueError:
            raise GitHubError(f"GitHub answered {method} {path} with something that is not "
                              "JSON") from None

    def _wait_s(self, error: urllib.error.HTTPError, attempt: int) -> float | None:
        """How long to wait before trying `error`'s request again; None: do not."""
        limited = error.code == 403 and (error.headers.get("x-ratelimit-remaining") == "0"
                                         or "retry-after" in error.headers)
        if error.code not in _RETRIED and not limited:
            return None
        wait = _retry_after_s(error.headers)
        if wait is None and error.headers.get("x-ratelimit-remaining") == "0":
            reset = error.headers.get("x-ratelimit-reset", "")
            wait = max(0.0, float(reset) - time.time()) if reset.isdigit() else None
        if wait is None:
            wait = self._backoff_s * 2 ** attempt
        return wait if wait <= MAX_WAIT_S else None

    def pull(self, owner: str, repo: str, number: int) -> dict:
        found = self.request("GET", f"/repos/{owner}/{repo}/pulls/{number}")
        return found if isinstance(found, dict) else {}

    def last_change(self, owner: str, repo: str, branch: str) -> dict | None:
        """The newest change of `branch` (a push, force push, creation, deletion or merge) as
        GitHub recorded it, with its own `timestamp` and the `after` commit (the repository
        activity API); None if it recorded none."""
        found = self.request("GET", f"/repos/{owner}/{repo}/activity",
                             query={"ref": f"refs/heads/{branch}", "direction": "desc",
                                    "per_page": "1"})
        return found[0] if isinstance(found, list) and found and isinstance(found[0], dict) \
            else None

    def open_pull(self, owner: str, repo: str, head: str) -> dict | None:
        """The open pull request whose head is `head` (`owner:branch`), if any."""
        found = self.request("GET", f"/repos/{owner}/{repo}/pulls",
                             query={"head": head, "state": "open"})
        return found[0] if isinstance(found, list) and found else None

    def create_pull(self, owner: str, repo: str, *, title: str, head: str, base: str,
                    body: str) -> dict:
        return self.request("POST", f"/repos/{owner}/{repo}/pulls",
                            body={"title": title, "head": head, "base": base, "body": body})

    def update_pull(self, owner: str, repo: str, number: int, *, body: str) -> dict:
        return self.request("PATCH", f"/repos/{owner}/{repo}/pulls/{number}", body={"body": body})

    def upsert_pull(self, owner: str, repo: str, *, title: str, branch: str, base: str,
                    body: str) -> PullRequest:
        """Update the body of the open pull request of `branch`, or open one against `base`."""
        found = self.open_pull(owner, repo, f"{owner}:{branch}")
        if found is not None:
            done = self.update_pull(owner, repo, int(found["number"]), body=body)
            created = False
        else:
            done = self.create_pull(owner, repo, title=title, head=branch, base=base, body=body)
            created = True
        done = done if isinstance(done, dict) else {}
        return PullRequest(number=int(done.get("number") or (found or {}).get("number") or 0),
                           url=str(done.get("html_url") or ""), head=branch,
                           base=str((done.get("base") or {}).get("ref") or base), created=created)


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urllib.parse.urlsplit(url)
    default = {"https": 443, "http": 80}.get(parts.scheme)
    return parts.scheme, (parts.hostname or ""), parts.port or default


class _TokenStaysHome(urllib.request.HTTPRedirectHandler):
    """Follows GitHub's redirects (a renamed repository answers 301), but the Authorization
    header only ever goes to the API's own origin: a redirect elsewhere goes without it."""

    def __init__(self, origin: tuple[str, str, int | None]) -> None:
        self._home = origin

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # type: ignore[no-untyped-def]
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None and _origin(newurl) != self._home:
            new.remove_header("Authorization")
        return new


def _retry_after_s(headers: Any) -> float | None:
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            return None


def _read_error(error: urllib.error.HTTPError) -> dict:
    try:
        data = json.loads(error.read() or b"{}")
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _explain(method: str, path: str, status: int, data: dict, wait: float | None = None) -> str:
    """One sentence from GitHub's status and its error body (`message`, `errors`)."""
    said = str(data.get("message") or "").strip().rstrip(".")
    details = []
    for item in data.get("errors") or []:
        if isinstance(item, dict):
            text = item.get("message") or " ".join(
                str(item[k]) for k in ("resource", "field", "code") if item.get(k))
            details.append(str(text).strip())
        elif item:
            details.append(str(item).strip())
    told = "; ".join(filter(None, [said, *details])) or "no reason given"
    if status == 429 or (status == 403 and "rate limit" in told.lower()):
        return (f"GitHub's rate limit stopped {method} {path} ({status}: {told}); try again "
                "later" + (f" (it lifts in {wait:.0f} s)" if wait else ""))
    if status == 401:
        return f"GitHub refused the token ({status}: {told}); check GITHUB_TOKEN"
    if status == 403:
        return (f"GitHub forbade {method} {path} ({status}: {told}); the token may lack the "
                "pull-requests write permission, or a rate limit was hit")
    if status == 404:
        return (f"GitHub found nothing at {path} ({status}: {told}); check the repository name "
                "and that the token can see it")
    if status == 422:
        hint = ("; push the run first with `soa-git push RUN`"
                if "head" in told.lower() or "field: head" in told.lower() else "")
        return f"GitHub rejected {method} {path} ({status}: {told}){hint}"
    return f"GitHub answered {method} {path} with {status}: {told}"
