"""`mlflow models serve` on the registered model: answers as the model does in Python, refuses
each bad request with HTTP 400 that says why and keeps serving, and answers 50 requests at once
as it answers them one by one."""

from __future__ import annotations

import dataclasses
import json
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd
import pytest

from dmae_pipeline.serving import SmoothedClassifier

from .tiny import DEFAULTS, LIMITS, SPEC, images, tiny_checkpoint

pytestmark = pytest.mark.slow


def post(url: str, body: dict | bytes) -> tuple[int, dict]:
    """POST a JSON body (or raw bytes) to /invocations: (status, the answer's JSON)."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(
        f"{url}/invocations", data=data, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def rows(answer: dict) -> pd.DataFrame:
    return pd.DataFrame(answer["predictions"])


def with_pixel(value: float) -> list:
    x = images(2).tolist()
    x[1][0][3][4] = value
    return x


def test_a_request_is_answered_as_the_model_answers_in_python(server):
    x = images(3, seed=2)
    status, answer = post(server, {"inputs": x.tolist(), "params": {"n": 200, "seed": 9}})
    assert status == 200
    classifier = SmoothedClassifier.from_checkpoint(tiny_checkpoint(), SPEC)
    expected = classifier.certify(x, dataclasses.replace(DEFAULTS, n=200, seed=9))
    pd.testing.assert_frame_equal(rows(answer), expected, check_exact=True)


BAD_REQUESTS = {
    "wrong resolution": ({"inputs": images(1)[:, :, :8].tolist()}, "does not match expected shape"),
    "no channel axis": ({"inputs": images(1)[:, 0].tolist()}, "does not match expected shape"),
    "NaN": ({"inputs": with_pixel(float("nan"))}, "NaN or infinite pixels in image(s) [1]"),
    "infinity": ({"inputs": with_pixel(float("inf"))}, "NaN or infinite pixels in image(s) [1]"),
    "above 1": ({"inputs": with_pixel(1.01)}, "pixels must be in [0, 1]"),
    "below 0": ({"inputs": with_pixel(-0.5)}, "pixels must be in [0, 1]"),
    "n over the limit": (
        {"inputs": images(1).tolist(), "params": {"n": LIMITS.max_n + 1}},
        "n=1001 exceeds this model's limit max_n=1000",
    ),
    "n0 over the limit": (
        {"inputs": images(1).tolist(), "params": {"n0": 10**6}},
        "n0=1000000 exceeds this model's limit max_n=1000",
    ),
    "too many images": (
        {"inputs": images(LIMITS.max_images + 1).tolist()},
        "9 images exceed this model's limit max_images=8 per request",
    ),
    "n zero": ({"inputs": images(1).tolist(), "params": {"n": 0}}, "n must be a positive integer"),
    "unknown mode": (
        {"inputs": images(1).tolist(), "params": {"mode": "fast"}},
        "mode: expected 'fixed' or 'sequential', got 'fast'",
    ),
    "n not an integer": ({"inputs": images(1).tolist(), "params": {"n": "many"}}, "'n'"),
    "alpha out of range": (
        {"inputs": images(1).tolist(), "params": {"alpha": 1.5}},
        "alpha must be in (0, 1)",
    ),
    "encoded image": ({"inputs": ["iVBORw0KGgo="]}, "could not convert string to float"),
    "no inputs": ({"images": images(1).tolist()}, "inputs"),
    "not JSON": (b'{"inputs": [[[', "Invalid input"),
}


@pytest.mark.parametrize("case", BAD_REQUESTS)
def test_a_bad_request_gets_400_saying_why_and_the_server_keeps_serving(server, case):
    body, reason = BAD_REQUESTS[case]
    status, answer = post(server, body)
    assert status == 400
    assert reason in answer["message"]
    status, _ = post(server, {"inputs": images(1).tolist(), "params": {"n": 20}})
    assert status == 200


def test_50_concurrent_requests_are_each_answered_as_alone(server):
    requests = [
        {"inputs": images(2, seed=i).tolist(), "params": {"n": 100, "seed": 1000 + i}}
        for i in range(50)
    ]
    alone = [post(server, body) for body in requests]
    with ThreadPoolExecutor(max_workers=50) as pool:
        together = list(pool.map(lambda body: post(server, body), requests))
    assert [status for status, _ in together] == [200] * 50
    assert together == alone
    answers = [rows(answer) for _, answer in alone]
    assert len({tuple(a["p_a_lower"]) for a in answers}) > 1  # the requests differ
    assert all(np.isfinite(a["radius"]).all() for a in answers)
