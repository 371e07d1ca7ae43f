"""Schemathesis hooks for `cargo xtask test`'s API-contract step.

The fuzzed user's token is fetched by logging in, and fetched again whenever
an answer is 401: the run calls `POST /api/auth/logout` too, which revokes
the token it was given.
"""

import json
import os
import urllib.request

import schemathesis


def _log_in() -> str:
    body = json.dumps({
        "username": os.environ["NATTER_CONTRACT_USER"],
        "password": os.environ["NATTER_CONTRACT_PASSWORD"],
    }).encode()
    request = urllib.request.Request(
        os.environ["NATTER_CONTRACT_BASE"] + "/api/auth/login",
        data=body,
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)["token"]


@schemathesis.auth(refresh_interval=None, retry_on=[401])
class NatterToken:
    def get(self, case, ctx):
        return _log_in()

    def set(self, case, data, ctx):
        case.headers = case.headers or {}
        case.headers["Authorization"] = f"Bearer {data}"
