"""crossdb: references between models stored in different databases, kept true.

Django refuses foreign keys across databases. crossdb declares them on the model
(``crossdb.fields.CrossDatabaseReference``), routes each model to its database
(``crossdb.routers``), guards every writer so no child is ever committed without its parent
(``crossdb.guard``, ``crossdb.orm``), deletes parents without orphaning their children
(``crossdb.deletion``), loads CSV and JSON Lines files concurrently with one verdict per row
(``crossdb.loading``, ``manage.py insert_data``), checks what bypassed it
(``manage.py check_integrity``) and shows it all in the admin (``crossdb.admin``).

Settings: ``crossdb.conf``. Use in a project: the README of this distribution.
"""
