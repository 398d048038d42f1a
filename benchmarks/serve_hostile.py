"""Benchmark: hostile requests against the served model. Starts `mlflow models serve` on
loopback (serve_load's server), sends each request of `hostile()` (small bodies that decode to
huge images, extreme aspect ratios, a large string array in a small body, formats outside the
allow-list, deep or huge JSON, bytes that are not an image), then a valid request, and prints
per hostile request: the HTTP status, the server's CPU seconds and its resident-memory growth
(peak during the request, sampled from /proc for the server's whole process tree), and whether
the next valid request answered 200. The issue's bar: a 4xx, at most 1 CPU second, at most
200 MB, and 200 right after.

    .venv/bin/python benchmarks/serve_hostile.py \\
        --model-uri models:/fashion-mnist-classifier@champion
    .venv/bin/python benchmarks/serve_hostile.py --model-uri runs:/<old run>/model \\
        --model-uri runs:/<new run>/<pipeline>   # side by side: a model logged by older code

A logged model carries the study package as it was at log time (code_paths): serve a model
logged by the old code to see the old behaviour (benchmarks/serve_load.py compares the normal
requests' speed the same way).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import struct
import sys
import threading
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from PIL import Image  # noqa: E402

import serve_load  # noqa: E402

CPU_SECONDS, RSS_MB = 1.0, 200  # the bar per hostile request


def _saved(image: Image.Image, fmt: str, **kwargs) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **kwargs)
    return out.getvalue()


def blank_png(width: int, height: int) -> bytes:
    """A real, valid all-black grayscale PNG of width x height, its zlib stream written in
    chunks (a 1 x 40,000,000 one is 78 kB; Pillow takes 7 s to save it)."""
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body)))
    packer, parts = zlib.compressobj(6), []
    rows = b"\0" * (width + 1) * max(1, 2**20 // (width + 1))  # filter byte + pixels, per row
    left = height * (width + 1)
    while left:
        parts.append(packer.compress(rows[:min(left, len(rows))]))
        left -= min(left, len(rows))
    parts.append(packer.flush())
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b""))


def _ico_around(png: bytes) -> bytes:
    """An ICO file whose one entry is `png` (Pillow decodes an ICO's PNG inside Image.open)."""
    entry = struct.pack("<BBBBHHII", 0, 0, 0, 0, 1, 32, len(png), 6 + 16)
    return struct.pack("<HHH", 0, 1, 1) + entry + png


def hostile() -> dict[str, bytes]:
    """Requests that cost a server far more than their size, each of which must get a 4xx."""
    blank = blank_png(6324, 6324)  # 39 kB, 40 megapixels decoded
    images = serve_load.images_body
    tiff = _saved(Image.new("F", (64, 64)), "TIFF")
    return {
        "300 blank 6,324^2 PNGs": images([blank] * 300),
        "1 x 40,000,000 PNG": images([blank_png(1, 40_000_000)]),
        "100,000 x 10 PNG": images([blank_png(100_000, 10)]),
        "50,000-char string + 1,999 empty": json.dumps(
            {"inputs": {"image": ["A" * 50_000] + [""] * 1_999}}).encode(),
        "the same as instances": json.dumps(
            {"instances": ["A" * 50_000] + [""] * 1_999}).encode(),
        "ICO around a 40 MP PNG": images([_ico_around(blank)]),
        "PPM (not allowed)": images([_saved(Image.new("RGB", (64, 64)), "PPM")]),
        "EPS (not allowed)": images([b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n"]),
        "TIFF, float mode, cut": images([tiff[:len(tiff) // 3]]),
        "random bytes": images([os.urandom(4096)]),
        "JSON 100,000 deep": b'{"inputs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        "JSON 500 deep": b'{"inputs": ' + b"[" * 500 + b"0.5" + b"]" * 500 + b"}",
        "image list 500 deep": b'{"inputs": {"image": ' + b"[" * 500 + b"]" * 500 + b"}}",
        "2,000,000 numbers (4 MB)": b'{"inputs": [' + b"0," * 2_000_000 + b"0]}",
    }


def _tree(pid: int) -> list[int]:
    """pid and its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        out.append(todo.pop())
        todo += children.get(out[-1], [])
    return out


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds of these processes (/proc/<pid>/stat fields 14 and 15)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            pass
    return total / os.sysconf("SC_CLK_TCK")


def rss_mb(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def measured(url: str, pids: list[int], body: bytes, timeout: float = 120) -> dict:
    """POST body; its status, seconds, the server tree's CPU seconds and peak RSS growth."""
    before_cpu, before_rss = cpu_seconds(pids), rss_mb(pids)
    peak, done = [before_rss], threading.Event()

    def sample():
        while not done.wait(0.005):
            peak[0] = max(peak[0], rss_mb(pids))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    status, seconds = serve_load.post(url, body, timeout=timeout)
    time.sleep(0.05)  # the server's last work after its answer is counted too
    done.set()
    sampler.join()
    return {"status": status, "seconds": seconds, "cpu s": cpu_seconds(pids) - before_cpu,
            "rss MB": max(peak[0], rss_mb(pids)) - before_rss}


def run(url: str, server_pid: int, valid: bytes, requests: dict[str, bytes]) -> dict[str, dict]:
    pids = _tree(server_pid)
    serve_load.post(url, valid)  # warm: the first request's one-off costs are not counted
    out = {}
    for name, body in requests.items():
        row = measured(url, pids, body)
        row["next"] = serve_load.post(url, valid)[0]
        row["ok"] = (400 <= row["status"] < 500 and row["next"] == 200
                     and row["cpu s"] <= CPU_SECONDS and row["rss MB"] <= RSS_MB)
        out[name] = row
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-uri", action="append",
                        help="a model to serve (repeat to compare); default the champion")
    parser.add_argument("--skip", action="append", default=[],
                        help="leave out requests whose name contains this (e.g. '300 blank' "
                             "for old code, where it runs for minutes after its 504)")
    args = parser.parse_args()
    from study import data, predict

    valid = serve_load.images_body([_saved(Image.fromarray(255 - data.load().x_test[0]), "PNG")])
    requests = {name: body for name, body in hostile().items()
                if not any(part in name for part in args.skip)}
    for uri in args.model_uri or [predict.DEFAULT_MODEL_URI]:
        server, url = serve_load.start_server(uri, 1)
        try:
            rows = run(url, server.pid, valid, requests)
        finally:
            serve_load.stop_server(server)
        print(f"\n{uri}\n| request | body kB | status | seconds | server CPU s | RSS growth MB "
              "| next valid | verdict |\n|---|---:|---:|---:|---:|---:|---:|---|")
        for name, r in rows.items():
            print(f"| {name} | {len(requests[name]) / 1024:.0f} | {r['status'] or 'none'} | "
                  f"{r['seconds']:.2f} | {r['cpu s']:.2f} | {r['rss MB']:.0f} | {r['next']} | "
                  f"{'ok' if r['ok'] else 'WRONG'} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
