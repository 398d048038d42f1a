"""Benchmark: the served champion under load. Starts `mlflow models serve` on loopback with a
registered model, sends a bounded number of requests from concurrent clients (single images and
batches, as tensors in the JSON the server takes), then a list of malformed requests, and stops
the server. Reports requests/s, images/s, p50/p99 latency and error counts per phase, and the
HTTP status of each malformed request (a 5xx or a timeout there is a bug: the client sent
something wrong, the server must say so with a 4xx and keep answering).

    MLFLOW_TRACKING_URI=sqlite:///mlflow.db .venv/bin/python benchmarks/serve_load.py
    .venv/bin/python benchmarks/serve_load.py --model-uri models:/fashion-mnist-classifier@champion \
        --workers 1,2 --requests 2000

Images are real Fashion-MNIST test images. Run on a quiet machine: the server and the clients
share its cores, as they would on one host.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

from study import data, predict  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model_uri: str, workers: int) -> tuple[subprocess.Popen, str]:
    port = free_port()
    mlflow_bin = shutil.which("mlflow", path=f"{Path(sys.executable).parent}{os.pathsep}"
                                             f"{os.environ['PATH']}")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    server = subprocess.Popen(
        [mlflow_bin, "models", "serve", "-m", model_uri, "--host", "127.0.0.1", "--port",
         str(port), "--env-manager", "local", "--workers", str(workers)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 300
    while True:
        try:
            if urllib.request.urlopen(url + "/ping", timeout=2).status == 200:
                return server, url
        except OSError:
            pass
        if server.poll() is not None or time.time() > deadline:
            raise SystemExit(f"the server did not start: {server.stderr.read().decode()[-2000:]}")
        time.sleep(1)


def stop_server(server: subprocess.Popen) -> None:
    os.killpg(server.pid, signal.SIGTERM)
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)


def post(url: str, body: bytes, timeout: float = 60) -> tuple[int, float]:
    """(HTTP status, seconds); status 0 for no answer in time or a broken connection."""
    request = urllib.request.Request(url + "/invocations", data=body,
                                     headers={"Content-Type": "application/json"})
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            response.read()
            status = response.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    except OSError:
        status = 0
    return status, time.perf_counter() - started


def phase(url: str, bodies: list[bytes], images_per_request: int, clients: int) -> dict:
    """Send every body once, `clients` at a time; throughput and latency of the lot."""
    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(lambda b: post(url, b), bodies))
    wall = time.perf_counter() - started
    seconds = sorted(s for _, s in results)
    errors = sum(status != 200 for status, _ in results)
    return {"requests": len(bodies), "clients": clients, "images/request": images_per_request,
            "requests/s": len(bodies) / wall, "images/s": len(bodies) * images_per_request / wall,
            "p50 ms": 1000 * statistics.median(seconds),
            "p99 ms": 1000 * seconds[min(len(seconds) - 1, int(0.99 * len(seconds)))],
            "errors": errors}


def malformed(tensor_body) -> dict[str, bytes]:
    """Requests a client gets wrong; each must get a 4xx."""
    good = json.loads(tensor_body)["inputs"]
    return {
        "not JSON": b"{this is not json",
        "empty batch": json.dumps({"inputs": []}).encode(),
        "wrong shape (27x28)": json.dumps({"inputs": [row[:27] for row in good]}).encode(),
        "NaN values": json.dumps({"inputs": good}).replace("0.0", "NaN", 5).encode(),
        "strings for pixels": json.dumps({"inputs": [["x"] * 28]}).encode(),
        "body of 64 MB": b'{"inputs": [' + b"0.1," * (16 << 20) + b"0.1]}",
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-uri", default=predict.DEFAULT_MODEL_URI)
    parser.add_argument("--workers", default="1", help="comma list of server worker counts")
    parser.add_argument("--requests", type=int, default=2000,
                        help="requests per phase with 8 clients (at least 2,000 in all)")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()

    model = predict.load_model(args.model_uri)
    test = data.load().x_test
    rng = np.random.default_rng(0)

    def body(n: int) -> bytes:
        images = test[rng.integers(0, len(test), n)]
        return json.dumps({"inputs": np.round(predict.model_input(model, images), 4)
                           .tolist()}).encode()

    singles = [body(1) for _ in range(args.requests)]
    batches = [body(args.batch) for _ in range(max(args.requests // 8, 50))]
    rows = []
    for workers in [int(w) for w in args.workers.split(",")]:
        server, url = start_server(args.model_uri, workers)
        try:
            post(url, singles[0])  # the first call builds the graph
            for name, bodies, per, clients in [
                    ("single, 1 client", singles[:200], 1, 1),
                    (f"single, {args.clients} clients", singles, 1, args.clients),
                    (f"batch of {args.batch}, {args.clients} clients", batches, args.batch,
                     args.clients)]:
                row = {"server workers": workers, "phase": name,
                       **phase(url, bodies, per, clients)}
                rows.append(row)
                print(f"workers={workers} {name}: {row['requests/s']:.1f} req/s, "
                      f"{row['images/s']:.0f} img/s, p50 {row['p50 ms']:.0f} ms, "
                      f"p99 {row['p99 ms']:.0f} ms, {row['errors']} errors", file=sys.stderr,
                      flush=True)
            bad = {}
            for name, payload in malformed(singles[0]).items():
                status, seconds = post(url, payload, timeout=120)
                after, _ = post(url, singles[1])  # the server must still answer
                bad[name] = (status, seconds, after)
        finally:
            stop_server(server)
        print(f"\nmalformed requests, {workers} worker(s): status (then the next valid request)")
        for name, (status, seconds, after) in bad.items():
            verdict = "ok" if 400 <= status < 500 and after == 200 else "WRONG"
            print(f"  {name:22s} {status or 'no answer'} in {seconds * 1000:.0f} ms, "
                  f"next valid request {after}  {verdict}")
    print("\n| server workers | phase | requests | req/s | images/s | p50 ms | p99 ms | errors |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['server workers']} | {r['phase']} | {r['requests']} | {r['requests/s']:.1f} | "
              f"{r['images/s']:.0f} | {r['p50 ms']:.0f} | {r['p99 ms']:.0f} | {r['errors']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
