"""The GitHub client over loopback HTTP: the token never leaves the API's origin, and rate limits
and server errors are retried as GitHub asks."""

from __future__ import annotations

import time

import pytest

from soa_git.github import GitHub, GitHubError

TOKEN = "ghp-loopback-token-0f9e"


@pytest.mark.parametrize("status", [301, 302, 307, 308])
def test_a_redirect_to_another_host_does_not_carry_the_token(fake_github, status):
    elsewhere = fake_github((200, {"number": 1}))
    api = fake_github((status, {}, {"Location": f"{elsewhere.url}/repos/o/r/pulls"}))
    assert GitHub(TOKEN, api.url).request("GET", "/repos/o/r/pulls") == {"number": 1}
    assert api.requests[0]["headers"]["authorization"] == f"Bearer {TOKEN}"
    assert "authorization" not in elsewhere.requests[0]["headers"]


def test_a_redirect_within_the_api_keeps_the_token(fake_github):
    api = fake_github((301, {}, {"Location": "/repositories/42/pulls"}), (200, []))
    assert GitHub(TOKEN, api.url).request("GET", "/repos/o/old-name/pulls") == []
    assert [r["path"] for r in api.requests] == ["/repos/o/old-name/pulls",
                                                 "/repositories/42/pulls"]
    assert all(r["headers"]["authorization"] == f"Bearer {TOKEN}" for r in api.requests)


def test_server_errors_are_retried(fake_github):
    api = fake_github((502, {}), (503, {}), (200, {"number": 7}))
    assert GitHub(TOKEN, api.url, backoff_s=0.01).request("GET", "/x") == {"number": 7}
    assert len(api.requests) == 3


@pytest.mark.parametrize("headers", [{"Retry-After": "1"},
                                     {"x-ratelimit-remaining": "0", "x-ratelimit-reset": "+"}])
def test_rate_limits_wait_as_github_asks(fake_github, headers):
    status = 429 if "Retry-After" in headers else 403
    if "x-ratelimit-reset" in headers:
        headers = {**headers, "x-ratelimit-reset": str(int(time.time()) + 2)}
    api = fake_github((status, {"message": "API rate limit exceeded"}, headers), (200, {}))
    GitHub(TOKEN, api.url, backoff_s=0.01).request("GET", "/x")
    assert len(api.requests) == 2
    assert api.requests[1]["at"] - api.requests[0]["at"] >= 0.9


def test_a_long_rate_limit_is_reported_not_waited(fake_github):
    api = fake_github((429, {"message": "slow down"}, {"Retry-After": "3600"}))
    with pytest.raises(GitHubError, match="rate limit stopped GET /x.*try again later"):
        GitHub(TOKEN, api.url).request("GET", "/x")
    assert len(api.requests) == 1


def test_other_client_errors_are_not_retried(fake_github):
    api = fake_github((404, {"message": "Not Found"}))
    with pytest.raises(GitHubError, match="found nothing"):
        GitHub(TOKEN, api.url, backoff_s=0.01).request("GET", "/x")
    assert len(api.requests) == 1
