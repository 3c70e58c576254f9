from django.core.management.base import BaseCommand, CommandError

from core import integrity
from core.databases import NotReady, check_ready
from core.tables import TABLES, alias


class Command(BaseCommand):
    help = (
        "Delete one user or product without orphaning orders in orders_db. Refused while it "
        "has orders, unless --with-orders: then its orders are deleted (and committed) first, "
        "then the row. Example: python manage.py delete_row users 3 --with-orders"
    )

    def add_arguments(self, parser):
        parser.add_argument("table", choices=integrity.PARENT_TABLES, help="users or products")
        parser.add_argument("id", type=int, help="the id of the row to delete")
        parser.add_argument(
            "--with-orders",
            action="store_true",
            help="delete the row's orders first instead of refusing",
        )

    def handle(self, *args, **options):
        table, pk = options["table"], options["id"]
        try:
            check_ready([alias(t) for t in TABLES])
            orders, deleted = integrity.delete_parent(table, pk, with_orders=options["with_orders"])
        except (NotReady, integrity.HasOrders, integrity.DeleteRaced) as exc:
            raise CommandError(str(exc)) from exc
        name = table.removesuffix("s")
        if orders:
            self.stdout.write(f"deleted {orders:,} order(s) of {name} {pk}")
        if not deleted:
            raise CommandError(f"{name} {pk} does not exist")
        self.stdout.write(self.style.SUCCESS(f"deleted {name} {pk}"))
