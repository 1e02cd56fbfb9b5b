"""Throughput and latency of the served smoothed classifier against ``Smooth.certify`` itself.

Starts ``mlflow models serve --env-manager local`` on the registered model (run from the project
root after ``kedro run``: the default is the embedded default's model at sigma 0.25, from the
project's ``mlflow.db``), sends ``--requests`` requests one after the other with 1 image each, then
with 16, all with ``n`` estimation samples, and reports requests/s, p50 and p95 latency (as the
client sees it: JSON encoding, HTTP and decoding included) and the noisy samples/s the server
reaches, (n0 + n) per image. In the same run, on the same test images and with the model's own
settings (n0, alpha, batch size), it times ``Smooth.certify`` in this process on the model the
server loads, and prints the ratio (the goal: serving keeps at least 0.9 of it). The server and
this process use the same number of threads; the server is idle while ``Smooth.certify`` runs.

    python bench/bench_serve.py [--model-uri models:/dmae_digits_sigma_0.25/latest] [--n 1000]
        [--requests 20] [--sizes 1 16] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import torch

from dmae_pipeline.data import SplitDataset, build_transform
from dmae_pipeline.io import safe_torch_load

MODEL_INPUT = Path("data/05_model_input")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url: str, body: bytes) -> dict:
    request = urllib.request.Request(
        f"{url}/invocations", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=600) as response:
        return json.loads(response.read())


def test_images(count: int) -> np.ndarray:
    """The first ``count`` test images of the prepared dataset (cycled if fewer), float32."""
    spec = json.loads((MODEL_INPUT / "dataset_spec.json").read_text())
    dataset = SplitDataset(
        safe_torch_load(MODEL_INPUT / "test.pt"), build_transform(spec, train=False)
    )
    return np.stack([dataset[i % len(dataset)][0].numpy() for i in range(count)])


def start_server(model_uri: str, threads: int) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    command = [Path(sys.executable).with_name("mlflow"), "models", "serve", "-m", model_uri,
               "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)]  # fmt: skip
    server = subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while True:
        try:
            with urllib.request.urlopen(f"{url}/ping", timeout=5):
                return server, url
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                stop(server)
                raise RuntimeError(f"mlflow models serve -m {model_uri} did not start") from None
            time.sleep(0.5)


def stop(server: subprocess.Popen) -> None:
    os.killpg(server.pid, signal.SIGTERM)
    server.wait(timeout=60)


def serve(url: str, batches: list[np.ndarray], n: int) -> list[float]:
    """Each batch as one request, one after the other; the latencies in seconds."""
    post(url, json.dumps({"inputs": batches[0].tolist(), "params": {"n": n}}).encode())  # warm
    latencies = []
    for i, batch in enumerate(batches):
        started = time.perf_counter()
        body = json.dumps({"inputs": batch.tolist(), "params": {"n": n, "seed": i}}).encode()
        answer = post(url, body)
        latencies.append(time.perf_counter() - started)
        assert len(answer["predictions"]) == len(batch)
    return latencies


def certify_directly(smooth, images: np.ndarray, settings, n: int) -> float:
    """Seconds ``Smooth.certify`` takes on ``images``, one after the other."""
    x = torch.from_numpy(images)
    smooth.certify(x[0], settings.n0, n, settings.alpha, settings.batch_size)  # warm
    started = time.perf_counter()
    for image in x:
        smooth.certify(image, settings.n0, n, settings.alpha, settings.batch_size)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-uri", default="models:/dmae_digits_sigma_0.25/latest")
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--requests", type=int, default=20, help="per request size")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 16], help="images/request")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model = mlflow.pyfunc.load_model(args.model_uri).unwrap_python_model()
    settings, smooth = model.defaults, model.classifier.smooth
    per_image = settings.n0 + args.n
    print(
        f"{args.model_uri}: sigma {smooth.sigma}, n0 {settings.n0}, n {args.n}, alpha "
        f"{settings.alpha}, batch {settings.batch_size}, {args.threads} threads, torch "
        f"{torch.__version__}"
    )
    images = test_images(args.requests * max(args.sizes))
    server, url = start_server(args.model_uri, args.threads)
    try:
        served = {}
        for size in args.sizes:
            batches = [images[i * size : (i + 1) * size] for i in range(args.requests)]
            served[size] = serve(url, batches, args.n)
    finally:
        stop(server)
    print(
        f"{'images/request':>14} {'requests/s':>10} {'p50 ms':>8} {'p95 ms':>8} "
        f"{'served samples/s':>16} {'certify samples/s':>17} {'ratio':>6}"
    )
    for size, latencies in served.items():
        count = args.requests * size
        direct = certify_directly(smooth, images[:count], settings, args.n)
        served_rate = count * per_image / sum(latencies)
        direct_rate = count * per_image / direct
        p50, p95 = np.percentile(latencies, [50, 95]) * 1000
        print(
            f"{size:>14} {args.requests / sum(latencies):>10.2f} {p50:>8.1f} {p95:>8.1f} "
            f"{served_rate:>16,.0f} {direct_rate:>17,.0f} {served_rate / direct_rate:>6.3f}"
        )


if __name__ == "__main__":
    main()
