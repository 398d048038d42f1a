"""Benchmark: the served champion under load. Starts `mlflow models serve` on loopback with a
registered model, sends a bounded number of requests from concurrent clients (single images and
batches, as pixel tensors and as PNG files in base64), then a list of malformed requests, and stops
the server. Reports requests/s, images/s, p50/p99 latency and error counts per phase, and the
HTTP status of each malformed request (a 5xx or a timeout there is a bug: the client sent
something wrong, the server must say so with a 4xx and keep answering).

    MLFLOW_TRACKING_URI=sqlite:///mlflow.db .venv/bin/python benchmarks/serve_load.py
    .venv/bin/python benchmarks/serve_load.py --model-uri models:/fashion-mnist-classifier@champion \
        --workers 2,1 --requests 2000

`--workers N` starts the server with MLFLOW_MODELS_WORKERS=N: N server processes, each giving
TensorFlow its share of the cores.

Images are real Fashion-MNIST test images. Run on a quiet machine: the server and the clients
share its cores, as they would on one host.
"""

from __future__ import annotations

import argparse
import base64
import io
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

from PIL import Image  # noqa: E402

from study import data, predict, serving  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model_uri: str, workers: int) -> tuple[subprocess.Popen, str]:
    port = free_port()
    mlflow_bin = shutil.which("mlflow", path=f"{Path(sys.executable).parent}{os.pathsep}"
                                             f"{os.environ['PATH']}")
    # MLFLOW_MODELS_WORKERS is `--workers` to mlflow, and tells the model its share of cores
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "MLFLOW_MODELS_WORKERS": str(workers)}
    server = subprocess.Popen(
        [mlflow_bin, "models", "serve", "-m", model_uri, "--host", "127.0.0.1", "--port",
         str(port), "--env-manager", "local"],
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


def bomb_png(width: int = 50_000, height: int = 50_000) -> bytes:
    """A tiny PNG whose header claims width x height pixels (checksums valid)."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body)))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


def images_body(encoded: list[bytes]) -> bytes:
    return json.dumps({"inputs": {serving.IMAGE_INPUT: [base64.b64encode(e).decode("ascii")
                                                        for e in encoded]}}).encode()


def malformed(tensor_body: bytes, png: bytes) -> dict[str, bytes]:
    """Requests a client gets wrong; each must get a 4xx."""
    good = json.loads(tensor_body)["inputs"]
    b64 = lambda items: json.dumps({"inputs": {serving.IMAGE_INPUT: items}}).encode()  # noqa
    return {
        "not JSON": b"{this is not json",
        "empty batch": json.dumps({"inputs": []}).encode(),
        "empty image list": b64([]),
        "wrong shape (27x28)": json.dumps({"inputs": [row[:27] for row in good]}).encode(),
        "NaN values": json.dumps({"inputs": good}).replace("0.0", "NaN", 5).encode(),
        "0-255 pixels": json.dumps({"inputs": (np.asarray(good) * 255).tolist()}).encode(),
        "strings for pixels": json.dumps({"inputs": [["x"] * 28]}).encode(),
        "unknown input name": json.dumps({"inputs": {"photo": ["abc"]}}).encode(),
        "not base64": b64(["this is not base64!"]),
        "undecodable image": images_body([b"GIF89a but not really an image"]),
        "truncated PNG": images_body([png[:len(png) // 2]]),
        "decompression bomb": images_body([bomb_png()]),
        "empty image": images_body([b""]),
        f"{serving.MAX_IMAGES + 1} images": images_body([png] * (serving.MAX_IMAGES + 1)),
        "image of 12 MB": images_body([png + b"\0" * (12 << 20)]),
        "body of 64 MB (pixels)": b'{"inputs": [' + b"0.1," * (16 << 20) + b"0.1]}",
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

    test = data.load().x_test
    rng = np.random.default_rng(0)

    def png(image: np.ndarray) -> bytes:
        out = io.BytesIO()
        Image.fromarray(image).save(out, format="PNG")
        return out.getvalue()

    def bodies(n: int, count: int, as_images: bool) -> list[bytes]:
        out = []
        for _ in range(count):
            images = test[rng.integers(0, len(test), n)]
            out.append(images_body([png(i) for i in images]) if as_images else json.dumps(
                {"inputs": np.round(images[..., None] / 255.0, 4).tolist()}).encode())
        return out

    n_batches = max(args.requests // 8, 50)
    phases = [  # (name, bodies, images per request, clients)
        ("single tensor, 1 client", bodies(1, 200, False), 1, 1),
        ("single PNG, 1 client", bodies(1, 200, True), 1, 1),
        (f"single PNG, {args.clients} clients", bodies(1, args.requests, True), 1, args.clients),
        (f"{args.batch} tensors, {args.clients} clients", bodies(args.batch, n_batches, False),
         args.batch, args.clients),
        (f"{args.batch} PNGs, {args.clients} clients", bodies(args.batch, n_batches, True),
         args.batch, args.clients)]
    singles = phases[0][1]
    bad_requests = malformed(singles[0], png(test[0]))
    rows = []
    for workers in [int(w) for w in args.workers.split(",")]:
        server, url = start_server(args.model_uri, workers)
        try:
            post(url, singles[0])  # a first call: nothing left to build in the request path
            for name, requests, per, clients in phases:
                row = {"server workers": workers, "phase": name,
                       **phase(url, requests, per, clients)}
                rows.append(row)
                print(f"workers={workers} {name}: {row['requests/s']:.1f} req/s, "
                      f"{row['images/s']:.0f} img/s, p50 {row['p50 ms']:.0f} ms, "
                      f"p99 {row['p99 ms']:.0f} ms, {row['errors']} errors", file=sys.stderr,
                      flush=True)
            bad = {}
            for name, payload in bad_requests.items():
                status, seconds = post(url, payload, timeout=120)
                after, _ = post(url, singles[1])  # the server must still answer
                bad[name] = (status, seconds, after)
        finally:
            stop_server(server)
        print(f"\nmalformed requests, {workers} worker(s): status (then the next valid request)")
        for name, (status, seconds, after) in bad.items():
            verdict = "ok" if 400 <= status < 500 and after == 200 else "WRONG"
            print(f"  {name:24s} {status or 'no answer'} in {seconds * 1000:.0f} ms, "
                  f"next valid request {after}  {verdict}")
    print("\n| server workers | phase | requests | req/s | images/s | p50 ms | p99 ms | errors |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['server workers']} | {r['phase']} | {r['requests']} | {r['requests/s']:.1f} | "
              f"{r['images/s']:.0f} | {r['p50 ms']:.0f} | {r['p99 ms']:.0f} | {r['errors']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
