"""Processes of tests/test_replicas.py and bench/replicas.py: ``python -m tests.replica_clients
reader|deleter ...`` against the databases (and replicas) the environment names.

* ``reader``: loops, each turn a reader of its own (as a request is), over every order
  through the ORM and the router (so from the orders replica when it is usable), then looks
  each order's user up through the router; counts the orders seen without their user. It
  stops once a turn saw ``--expect`` orders (the number in the file, once it exists), or at
  ``--seconds``. Writes a JSON summary: turns, orders seen, misses, reads per alias, and each
  turn's duration.
* ``deleter``: logs in to the admin with Django's test client and deletes users through the
  delete confirmation page, one after the other, until ``--stop`` exists (or ``--user``
  once); logs every answer.
* ``async``: the admin through Django's ASGI handler: a save, then the list with and
  without the positions cookie.
"""

import argparse
import json
import random
import sys
import time
from pathlib import Path


def _setup():
    import django

    from tests.launch import set_hooks

    django.setup()
    set_hooks()


def reader_main(args):
    _setup()
    from crossdb import causal, replicas
    from django.db import connections

    from core.models import Order, User

    deadline = time.monotonic() + args.seconds
    turns, misses, examples, durations = 0, 0, [], []
    best = 0
    expect_file = Path(args.expect)
    while time.monotonic() < deadline:
        expect = int(expect_file.read_text()) if expect_file.exists() else None
        started = time.perf_counter()
        with causal.reading():
            orders = list(Order.objects.order_by("id").values_list("id", "user_id"))
            wanted = sorted({user for _order, user in orders})
            users = set()
            for start in range(0, len(wanted), 5000):
                chunk = wanted[start : start + 5000]
                users.update(User.objects.filter(pk__in=chunk).values_list("pk", flat=True))
        durations.append(time.perf_counter() - started)
        turns += 1
        best = max(best, len(orders))
        missing = [(order, user) for order, user in orders if user not in users]
        misses += len(missing)
        examples.extend(missing[: max(5 - len(examples), 0)])
        for connection in connections.all():
            connection.close()
        if expect is not None and len(orders) >= expect and turns >= args.min_turns:
            break
        time.sleep(args.pause)
    Path(args.out).write_text(
        json.dumps(
            {
                "turns": turns,
                "orders_seen": best,
                "misses": misses,
                "examples": examples,
                "served": dict(replicas.SERVED),
                "durations": durations,
            }
        )
    )


def deleter_main(args):
    _setup()
    from django.contrib.auth import get_user_model
    from django.test import Client

    from core.models import User

    staff = get_user_model().objects.create_superuser(
        f"deleter{args.seed}", f"deleter{args.seed}@example.com", "pw-deleter"
    )
    client = Client(raise_request_exception=False)
    client.force_login(staff)
    rng = random.Random(args.seed)
    log = Path(args.log).open("a", encoding="utf-8")
    once = args.user is not None
    while once or not Path(args.stop).exists():
        ids = list(User.objects.using("users_db").values_list("pk", flat=True)[:2000])
        if not ids:
            break
        pk = args.user if once else rng.choice(ids)
        response = client.post(f"/admin/core/user/{pk}/delete/", {"post": "yes"})
        answer = {"user": pk, "status": response.status_code}
        if response.status_code == 302:
            answer["next_status"] = client.get(response["Location"]).status_code
        log.write(json.dumps(answer) + "\n")
        log.flush()
        if once:
            break
    log.close()


def async_main(args):
    """Over Django's ASGI handler (the middleware in its async mode): rename a customer in
    the admin, then read the customers list with the positions cookie and without it."""
    _setup()
    import asyncio
    import html
    import re

    from asgiref.sync import sync_to_async
    from django.contrib.auth import get_user_model
    from django.test import AsyncClient

    from core.models import User

    def listed(response):
        match = re.search(r'<table id="result_list">.*?</table>', response.content.decode(), re.S)
        return html.unescape(match.group(0)) if match else ""

    async def run():
        staff = await sync_to_async(get_user_model().objects.create_superuser)(
            "async-staff", "async@example.com", "pw-async"
        )
        client = AsyncClient()
        await client.aforce_login(staff)
        pk, email = await sync_to_async(
            lambda: User.objects.using("users_db").order_by("pk").values_list("pk", "email")[0]
        )()
        saved = await client.post(
            f"/admin/core/user/{pk}/change/", {"name": args.name, "email": email, "_save": "Save"}
        )
        with_cookie = listed(await client.get("/admin/core/user/"))
        client.cookies.pop("crossdb_positions", None)
        without = listed(await client.get("/admin/core/user/"))
        return {
            "saved": saved.status_code,
            "with_cookie": args.name in with_cookie,
            "without_cookie": args.name in without,
        }

    print(json.dumps(asyncio.run(run())))


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m tests.replica_clients")
    sub = parser.add_subparsers(dest="command", required=True)
    reader = sub.add_parser("reader")
    reader.add_argument("--expect", required=True, help="file holding the orders to expect")
    reader.add_argument("--out", required=True)
    reader.add_argument("--seconds", type=float, default=120)
    reader.add_argument("--min-turns", type=int, default=3)
    reader.add_argument("--pause", type=float, default=0.05)
    deleter = sub.add_parser("deleter")
    deleter.add_argument("--log", required=True)
    deleter.add_argument("--stop", required=True)
    deleter.add_argument("--seed", type=int, default=0)
    deleter.add_argument("--user", type=int, help="delete this user once, then exit")
    asynchronous = sub.add_parser("async")
    asynchronous.add_argument("--name", required=True)
    args = parser.parse_args(argv)
    {"reader": reader_main, "deleter": deleter_main, "async": async_main}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
