"""`manage.py operator_groups`: create the suggested operator groups that are missing, with their permissions."""
from django.core.management.base import BaseCommand

from jobs.services import operator_groups_ensure


class Command(BaseCommand):
    help = ("Create the operator groups (Operators (read-only), Retriers, Pausers, Operators) that are missing and "
            "give each its permissions; add users to them in the admin.")

    def handle(self, *args, **options):
        for name in operator_groups_ensure():
            self.stdout.write(name)
