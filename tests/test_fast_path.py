"""The writers' fast path looks up only the parents the run did not vouch for.

An order of a run that names a user of the same run and a product stored by an earlier
run: the validator knows the user (accepted in this run) and not the product. The orders
writer looks the product up before it waits for the run's users batch to commit, so it
must not look the user up then: the user is not committed yet, and the order would be
rejected with "customer 1 does not exist" (seen on PostgreSQL, about one run in three, when the
orders writer got there before the users writer committed).
"""

from crossdb.loading.processes import Job
from crossdb.loading.validate import Recheck
from crossdb.loading.writers import BulkWriter

from core.models import Product
from tests.conftest import all_databases


@all_databases
def test_a_parent_of_this_run_not_yet_committed_is_not_looked_up_before_the_wait():
    Product.objects.create(id=1, name="Pen", price="2.00")
    writer = BulkWriter("orders", "orders_db")
    recheck = Recheck(frozenset({0}), {}, {"product_id": frozenset({0})})
    job = Job(1, [2], [(1, 1, 1, 2)], {"users": 1}, recheck)  # user 1: the run's, uncommitted
    kept, rejections = writer._without_missing_parents(job)
    assert rejections == []
    assert kept.rows == job.rows
    recheck = Recheck(frozenset({0}), {}, {"product_id": frozenset({0}), "user_id": frozenset({0})})
    kept, rejections = writer._without_missing_parents(job._replace(recheck=recheck))
    assert [r.reason for r in rejections] == [
        "customer 1 does not exist"
    ]  # not the run's: looked up
