"""What a reader needs to reproduce a run or load a model elsewhere: package versions, CPU,
commit, and the pinned requirements of logged models."""

from __future__ import annotations

import os
from importlib import metadata
from pathlib import Path
from typing import Any

from study import config

def environment() -> dict[str, Any]:
    """What a reader needs to reproduce the numbers: versions, CPU, commit."""
    import platform
    import subprocess

    versions = {}
    for name in ("mlflow", "optuna", "scikit-learn", "numpy", "keras", "tensorflow-cpu",
                 "tensorflow", "umap-learn", "matplotlib"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=config.PROJECT_ROOT, text=True,
                                capture_output=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=config.PROJECT_ROOT, text=True, capture_output=True,
                               timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit, dirty = "", ""
    return {"python": platform.python_version(), "platform": platform.platform(), "cpu": cpu,
            "cpu_count": os.cpu_count(), "git_commit": commit or "unknown",
            "git_dirty": bool(dirty), "packages": versions, "split_seed": config.SEED}


def pip_requirements(kind: str, reducer: str) -> list[str]:
    """Pinned requirements of a logged model, stated rather than inferred: inference loads
    the model in a subprocess, which costs tens of seconds per model."""
    names = ["mlflow", "numpy", "scikit-learn", "cloudpickle"]
    if kind == "keras":
        names = ["mlflow", "numpy", "keras", "tensorflow-cpu"]
    if reducer == "umap":
        names.append("umap-learn")
    return pinned(names)


def pinned(names) -> list[str]:
    """name==installed version for each installed package (else the bare name)."""
    reqs = []
    for name in names:
        try:
            reqs.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            reqs.append(name)
    return reqs
