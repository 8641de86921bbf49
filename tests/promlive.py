"""A real Prometheus for tests: scraping a loopback target every second under a job name and
evaluating shipped rules, queried over its HTTP API."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def prom_query(port: int, expr: str) -> list[Any]:
    """The result of an instant query; raises on a query Prometheus refuses."""
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    try:
        reply = json.loads(urllib.request.urlopen(url, timeout=5).read())
    except urllib.error.HTTPError as e:
        raise AssertionError(f"{expr}: {e.read().decode()}") from e
    assert reply["status"] == "success", (expr, reply)
    return list(reply["data"]["result"])


@contextlib.contextmanager
def prometheus(tmp_path: Path, rules: Path, job: str, target_port: int) -> Iterator[int]:
    """Prometheus scraping ``127.0.0.1:target_port`` every second as ``job`` and evaluating
    ``rules``; yields its web port (it may take a moment to answer)."""
    web = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        f"rule_files: ['{rules}']\n"
        "scrape_configs:\n"
        f"  - job_name: {job}\n"
        f"    static_configs: [{{targets: ['127.0.0.1:{target_port}']}}]\n"
    )
    proc = subprocess.Popen(
        [
            "prometheus",
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{web}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield web
    finally:
        proc.terminate()
        proc.wait(30)
