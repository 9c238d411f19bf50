"""Service benchmark: MovieLens-1M imported by the CLI into a fresh PostgreSQL database (rows per second,
against a plain COPY of the same rows into an unindexed table measured in the same run), an RBM trained on
it by ``rbmrec train``, then a load test of top-10 recommendations for random users with ``wrk`` on loopback
at 1, 8 and 32 concurrent connections (requests/s, p50/p99, and the CPU time the API processes and a local
PostgreSQL spent per request), with the API's process count stated.

    .venv/bin/python benchmarks/bench_service.py --data /work/shared/data/ml-1m/ratings.dat
    (needs PostgreSQL and wrk: apt-get install -y wrk)

Writes benchmarks/results/service.json and prints a Markdown table; the last line is JSON (the figures). Timings on a shared machine are noisy:
the load average at the start is recorded, and the import is reported next to its COPY reference."""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parent.parent
RBMREC = [sys.executable, "-m", "service.cli"]


def run_cli(args: list[str], database_url: str) -> str:
    env = {**os.environ, "DATABASE_URL": database_url}
    done = subprocess.run(RBMREC + args, cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"rbmrec {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return done.stdout


def fresh_database(server: str, name: str) -> str:
    engine = create_engine(server, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    engine.dispose()
    url = make_url(server).set(database=name).render_as_string(hide_password=False)
    run_cli(["db", "upgrade"], url)
    return url


def copy_reference(database_url: str, data: Path) -> float:
    """Seconds for a plain COPY of the same rows (converted to tab-separated text in memory) into an unindexed
    temporary table: the floor any import into this server can reach."""
    body = data.read_bytes().replace(b"::", b"\t")
    engine = create_engine(database_url)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TEMP TABLE reference (u text, i text, r smallint, t bigint)")
        driver = conn.connection.driver_connection
        started = time.perf_counter()
        with driver.cursor() as cursor, cursor.copy("COPY reference FROM STDIN") as copy:
            for start in range(0, len(body), 1 << 22):
                copy.write(body[start:start + (1 << 22)])
        seconds = time.perf_counter() - started
    engine.dispose()
    return seconds


def wait_ready(url: str, timeout: float = 600) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url + "/health/ready", timeout=30) as response:
                if response.status == 200:
                    return
        except Exception:  # noqa: BLE001 - not up yet
            pass
        time.sleep(1)
    raise SystemExit("the API did not become ready")


def parse_wrk(output: str) -> dict:
    def duration_ms(value: str) -> float:
        number, unit = re.match(r"([\d.]+)(us|ms|s)", value).groups()
        return float(number) * {"us": 1e-3, "ms": 1.0, "s": 1000.0}[unit]

    latencies = dict(re.findall(r"^\s+(50|99)%\s+(\S+)", output, re.M))
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))
    total = int(re.search(r"(\d+) requests in", output).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    socket_errors = re.search(r"Socket errors: (.*)", output)
    return {"requests_per_second": rps, "p50_ms": duration_ms(latencies["50"]), "p99_ms": duration_ms(latencies["99"]),
            "requests": total, "non_2xx": int(errors.group(1)) if errors else 0,
            "socket_errors": socket_errors.group(1) if socket_errors else None}


def _cpu_seconds(pid: int) -> float:
    """user + system CPU seconds of a process so far (Linux /proc), 0.0 if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _process_tree(root: int) -> list[int]:
    """``root`` and its descendants (the uvicorn supervisor and its worker processes)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def _postgres_pids() -> list[int]:
    """PostgreSQL server processes on this machine (empty when the server runs elsewhere)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().startswith("postgres"):
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


class CpuMeter:
    """CPU seconds spent by the API processes and by a local PostgreSQL during a load level: per request, a
    figure far less sensitive than requests/s to what else runs on a shared machine."""

    def __init__(self, server_pid: int):
        self.server_pid = server_pid

    def start(self) -> None:
        self.api = {pid: _cpu_seconds(pid) for pid in _process_tree(self.server_pid)}
        self.database = {pid: _cpu_seconds(pid) for pid in _postgres_pids()}

    def per_request_ms(self, requests: int) -> dict[str, float | None]:
        api = sum(_cpu_seconds(pid) - before for pid, before in self.api.items())
        database = sum(_cpu_seconds(pid) - self.database.get(pid, 0.0) for pid in _postgres_pids())
        return {"api_cpu_ms_per_request": round(1000 * api / max(requests, 1), 2),
                "postgres_cpu_ms_per_request": round(1000 * database / max(requests, 1), 2) if self.database else None}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="/work/shared/data/ml-1m/ratings.dat")
    parser.add_argument("--server", default=os.environ.get("BENCH_DATABASE_URL",
                                                           "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"))
    parser.add_argument("--name", default="rbmrec_bench")
    parser.add_argument("--hidden", type=int, default=50)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2, help="API processes")
    parser.add_argument("--clients", default="1,8,32")
    parser.add_argument("--duration", type=int, default=15, help="seconds per load level")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--reuse", action="store_true", help="keep the database of a previous run (skip import/train)")
    parser.add_argument("--model", default="ml1m", help="model to query (--reuse: any model trained there before)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="extra hyperparameters for the trained model, e.g. --set prediction='\"mean_field\"'")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "service.json"))
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (apt-get install -y wrk)")
    data = Path(args.data)
    result: dict = {"data": str(data), "load_average_at_start": os.getloadavg(), "cpus": os.cpu_count(),
                    "model": args.model}

    if args.reuse:
        url = make_url(args.server).set(database=args.name).render_as_string(hide_password=False)
    else:
        # Import, twice into fresh databases: --no-exclusive (row-by-row constraint checks, the table stays
        # live) and --exclusive (bulk mode: constraints and indexes rebuilt once; the default on an empty table).
        for mode, extra in (("import", ["--no-exclusive"]), ("import_exclusive", ["--exclusive"])):
            url = fresh_database(args.server, args.name)
            report = json.loads(run_cli(["import", str(data), *extra], url).strip().splitlines()[-1])
            result[mode] = report
            print(f"{mode}: {report['rows']} rows in {report['seconds']:.1f} s = {report['rows_per_second']:,} rows/s",
                  flush=True)
        reference = copy_reference(url, data)
        result["copy_reference_rows_per_second"] = round(result["import"]["rows"] / reference)
        print(f"reference plain COPY: {result['copy_reference_rows_per_second']:,} rows/s", flush=True)
        started = time.perf_counter()
        trained = run_cli(["train", args.model, "--create", f"--set=num_hidden={args.hidden}", f"--set=epochs={args.epochs}",
                           "--set=engagement_epochs=3", "--set=batch_size=64", *[f"--set={kv}" for kv in args.set]], url)
        result["train"] = {**json.loads(trained.strip().splitlines()[-1]), "wall_seconds": time.perf_counter() - started}
        print(f"trained: rmse {result['train']['rmse']:.4f} in {result['train']['wall_seconds']:.0f} s", flush=True)

    key = run_cli(["create-api-key", "--role", "read", "--name", "bench"], url).strip().splitlines()[-1]
    base = f"http://127.0.0.1:{args.port}"
    env = {**os.environ, "DATABASE_URL": url, "MODEL_REFRESH_SECONDS": "2"}
    server = subprocess.Popen(RBMREC + ["serve", "--port", str(args.port), "--workers", str(args.workers),
                                        "--log-level", "warning"], cwd=ROOT, env=env)
    result["api_processes"] = args.workers
    result["load"] = {}
    try:
        wait_ready(base)
        with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
            script.write('math.randomseed(os.time())\n'
                         'request = function()\n'
                         '  local user = math.random(1, 6040)\n'
                         f'  return wrk.format("GET", "/v1/users/" .. user .. "/recommendations?n=10&model={args.model}", '
                         f'{{["X-API-Key"] = "{key}"}})\n'
                         'end\n')
        # Warm-up: every API process loads the model and fills its caches.
        subprocess.run(["wrk", "-t", "2", "-c", "8", "-d", "5s", "-s", script.name, base], capture_output=True)
        meter = CpuMeter(server.pid)
        for clients in [int(c) for c in args.clients.split(",")]:
            threads = min(clients, 2)
            meter.start()
            out = subprocess.run(["wrk", "-t", str(threads), "-c", str(clients), "-d", f"{args.duration}s",
                                  "--timeout", "10s", "--latency", "-s", script.name, base],
                                 capture_output=True, text=True).stdout
            level = parse_wrk(out)
            level.update(meter.per_request_ms(level["requests"]))
            result["load"][str(clients)] = level
            print(f"{clients:>3} clients: {level['requests_per_second']:.0f} req/s, p50 {level['p50_ms']:.1f} ms, "
                  f"p99 {level['p99_ms']:.1f} ms, non-2xx {level['non_2xx']}; CPU per request: API "
                  f"{level['api_cpu_ms_per_request']} ms, PostgreSQL {level['postgres_cpu_ms_per_request']} ms",
                  flush=True)
        # Reference in the same run: the cheapest endpoint (no database, no model) through the same processes at
        # 8 clients, i.e. what the HTTP stack alone manages on this machine right now.
        out = subprocess.run(["wrk", "-t", "2", "-c", "8", "-d", f"{args.duration}s", "--latency", base + "/health/live"],
                             capture_output=True, text=True).stdout
        result["reference_health_live_8_clients"] = parse_wrk(out)
        print(f"reference /health/live at 8 clients: {result['reference_health_live_8_clients']['requests_per_second']:.0f} "
              f"req/s", flush=True)
        result["load_average_at_end"] = os.getloadavg()
    finally:
        server.terminate()
        server.wait(timeout=30)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print("\n| clients | requests/s | p50 ms | p99 ms | API CPU ms/request |\n|---|---|---|---|---|")
    for clients, level in result["load"].items():
        print(f"| {clients} | {level['requests_per_second']:.0f} | {level['p50_ms']:.1f} | {level['p99_ms']:.1f} | "
              f"{level['api_cpu_ms_per_request']} |")
    # machine-readable last line
    summary = {"api_processes": args.workers, "load_average_at_start": result["load_average_at_start"],
               "import_ratings_per_s": result.get("import_exclusive", {}).get("rows_per_second"),
               "import_checked_ratings_per_s": result.get("import", {}).get("rows_per_second"),
               **{f"c{clients}_{key}": level[key] for clients, level in result["load"].items()
                  for key in ("requests_per_second", "p50_ms", "p99_ms", "api_cpu_ms_per_request")}}
    print(json.dumps(summary, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
