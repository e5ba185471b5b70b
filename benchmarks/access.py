"""Privacy's cost: the app's idle memory public and private, and what a login takes.

Public and private launches take turns (``--repeats`` each); idle is the
process's resident memory once ready. A login is one scrypt check (32 MiB,
OWASP's floor): its peak is the kernel's high-water mark (``VmHWM``) over
idle, reset just before, and its time the server's answer, medians of
``--logins``.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from benchmarks.common import MB, app_options, models, report, serving
from service.access.credentials import generate_key, hash_key, hash_password, key_entry

PASSWORD = "a password for the benchmark"


def private_settings() -> dict[str, str]:
    return {
        "API_KEYS": key_entry("bench", hash_key(generate_key())),
        "USERS": f"bench:{hash_password(PASSWORD)}",
    }


def idle_and_logins(
    model: Path, log: Path, env: dict[str, str], logins: int
) -> tuple[float, list[float], list[float]]:
    """Idle MB; each login's peak over idle (MB) and time (ms), if the app is private."""
    with serving(model, log, env=env) as server:
        time.sleep(1)  # the warm-up's last allocations settle
        idle = server.memory.current / MB
        peaks, times = [], []
        with httpx.Client(base_url=server.url, timeout=60) as client:
            for _ in range(logins if "USERS" in env else 0):
                server.memory.take_peak()
                start = time.perf_counter()
                form = {"username": "bench", "password": PASSWORD}
                answer = client.post("login", data=form, follow_redirects=False)
                times.append((time.perf_counter() - start) * 1000)
                peaks.append(server.memory.take_peak() / MB - idle)
                if answer.status_code != 303:
                    raise RuntimeError(f"the login failed: {answer.status_code} {answer.text}")
        return idle, peaks, times


def main() -> None:
    arguments = app_options(__doc__.splitlines()[0])
    arguments.add_argument("--repeats", type=int, default=3, help="launches of each")
    arguments.add_argument("--logins", type=int, default=5, help="logins per private launch")
    args = arguments.parse_args()
    private = private_settings()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="access-") as name:
        for model in models(args):
            idle: dict[str, list[float]] = {"public": [], "private": []}
            peaks: list[float] = []
            times: list[float] = []
            for _ in range(args.repeats):
                for kind, env in (("public", {}), ("private", private)):
                    log = Path(name) / f"{kind}.log"
                    megabytes, peak, took = idle_and_logins(
                        model, log, {**dict(args.env), **env}, args.logins
                    )
                    idle[kind].append(megabytes)
                    peaks += peak
                    times += took
            public, private_mb = (statistics.median(idle[k]) for k in ("public", "private"))
            rows.append(
                {
                    "model": model.name,
                    "idle_public_MB": public,
                    "idle_private_MB": private_mb,
                    "private_minus_public_MB": private_mb - public,
                    "login_peak_over_idle_MB": statistics.median(peaks),
                    "login_ms": statistics.median(times),
                }
            )
    report(args, "access", {"Idle memory public and private, and one login (medians)": rows})


if __name__ == "__main__":
    main()
