"""What read replicas buy and cost, measured once: the share of reads they serve and the
latency they add at the 99th percentile.

    bash .ci/setup-replicas.sh      # the two primaries and their replicas (once)
    python -m bench.replicas [--users N] [--orders N] [--requests N]

It creates databases on the primaries of ``.ci/setup-replicas.sh`` (users, products and
default on 5433, orders on 5435, replicated to 5434 and 5436), loads them with insert_data,
and runs the same workload twice in a process of its own, first with every read on the
primaries, then with ``*_DATABASE_REPLICA_URLS`` set (causal reads on): a staff member's
browser (Django's test client, the whole middleware stack and its cookies) pages through the
orders list (each page reads orders, then their users and products) and the customers list,
and renames a customer every tenth request (a write, followed by the redirect's page),
while a loader adds orders in the background. Each request's time is measured; every
statement is counted by the database it ran on (an execute wrapper). Prints one line per run
and the difference of their 99th percentiles. The databases are dropped at the end.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.concurrency import Backend  # noqa: E402
from tests.test_replicas import PLACES, VARIABLES, admin, replayed_everything, url  # noqa: E402


def create(tag):
    from psycopg import sql

    urls, replica_urls, names = {}, {}, []
    for alias, (primary, replica) in PLACES.items():
        name = f"multids_bench_{tag}_{alias}"
        with admin(primary) as db:
            db.execute(sql.SQL("CREATE DATABASE {} OWNER multids").format(sql.Identifier(name)))
        names.append((primary, name))
        urls[f"{VARIABLES[alias]}_URL"] = url(primary, name)
        if replica is not None:
            replica_urls[f"{VARIABLES[alias]}_REPLICA_URLS"] = url(replica, name)
    return urls, replica_urls, names


def drop(names):
    from psycopg import sql

    for port, name in names:
        with admin(port) as db:
            db.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def workload(args):
    """Run in a process of its own (its environment names the databases): the browser."""
    import django

    django.setup()
    from crossdb import replicas
    from django.contrib.auth import get_user_model
    from django.db import connections
    from django.db.backends.signals import connection_created
    from django.test import Client

    from core.models import User

    counts = {}

    def count(execute, sql, params, many, context):
        alias = context["connection"].alias
        counts[alias] = counts.get(alias, 0) + 1
        return execute(sql, params, many, context)

    def watch(sender, connection, **kwargs):
        if not getattr(connection, "_bench_counted", False):
            connection.execute_wrappers.append(count)
            connection._bench_counted = True

    connection_created.connect(watch)
    staff = get_user_model().objects.create_superuser(
        f"bench{uuid.uuid4().hex[:6]}", "bench@example.com", "pw-bench"
    )
    client = Client()
    client.force_login(staff)
    customers = list(User.objects.using("users_db").values_list("pk", "email")[:200])
    times = []
    for n in range(args.requests):
        started = time.perf_counter()
        if n % 10 == 9:
            pk, email = customers[n % len(customers)]
            response = client.post(
                f"/admin/core/user/{pk}/change/",
                {"name": f"Renamed {n}", "email": email, "_save": "Save"},
                follow=True,
            )
        elif n % 3 == 2:
            response = client.get(f"/admin/core/user/?p={n % 50 + 1}")
        else:
            response = client.get(f"/admin/core/order/?p={n % 50 + 1}")
        times.append(time.perf_counter() - started)
        assert response.status_code == 200, response.status_code
        for connection in connections.all():
            connection.close()
    print(json.dumps({"times": times, "counts": counts, "served": dict(replicas.SERVED)}))


def run(backend, env, requests):
    done = subprocess.run(
        [sys.executable, "-m", "bench.replicas", "--workload", "--requests", str(requests)],
        env=backend.env() | env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=3600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def describe(label, result, replica_aliases):
    times = sorted(result["times"])
    p50 = statistics.median(times) * 1000
    p99 = times[min(int(len(times) * 0.99), len(times) - 1)] * 1000
    routed = {a: n for a, n in result["counts"].items() if a != "default"}
    on_replicas = sum(n for a, n in routed.items() if a in replica_aliases)
    share = on_replicas / max(sum(routed.values()), 1)
    print(
        f"{label}: {len(times)} requests, p50 {p50:.1f} ms, p99 {p99:.1f} ms; "
        f"{share:.0%} of the statements on users, products and orders ran on replicas "
        f"({on_replicas:,} of {sum(routed.values()):,})"
    )
    return p99


def main():
    parser = argparse.ArgumentParser(prog="python -m bench.replicas")
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--orders", type=int, default=200_000)
    parser.add_argument("--requests", type=int, default=600)
    parser.add_argument("--workload", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.workload:
        return workload(args)
    tag = uuid.uuid4().hex[:8]
    urls, replica_urls, names = create(tag)
    data_dir = Path(tempfile.mkdtemp(prefix="multids-bench-replicas-"))
    backend = Backend("postgresql", data_dir, "multids.settings", urls)
    try:
        backend.migrate()
        backend.manage(
            "insert_data",
            "--no-progress",
            f"--users={args.users}",
            "--products=500",
            f"--orders={args.orders}",
            check=True,
        )
        for primary, replica in {(p, r) for p, r in PLACES.values() if r}:
            assert replayed_everything(primary, replica, timeout=600)
        p99 = {}
        for label, env in (("primaries only", {}), ("with replicas", replica_urls)):
            loader = subprocess.Popen(  # orders keep arriving while the browser reads
                [
                    sys.executable,
                    str(ROOT / "tests" / "launch.py"),
                    "insert_data",
                    "--no-progress",
                    f"--users={args.users}",
                    "--products=500",
                    f"--orders={args.orders * 2}",
                    "--seed",
                    str(len(p99) + 1),
                ],
                env=backend.env() | env,
                cwd=ROOT,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            try:
                result = run(backend, env, args.requests)
            finally:
                loader.kill()
                loader.wait()
            aliases = {f"{a}_replica_1" for a, (_p, r) in PLACES.items() if r}
            p99[label] = describe(label, result, aliases)
        print(f"added p99: {p99['with replicas'] - p99['primaries only']:+.1f} ms")
    finally:
        drop(names)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "multids.settings")
    sys.exit(main())
