"""`manage.py create_token USERNAME`: print a new API token for a user (shown once)."""
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from jobs.services import api_token_create


class Command(BaseCommand):
    help = "Create an API token for USERNAME and print it once (only its hash is stored)."

    def add_arguments(self, parser):
        parser.add_argument("username")
        parser.add_argument("--name", default="", help="A label to tell tokens apart.")

    def handle(self, *args, username, name, **options):
        user = get_user_model().objects.filter(username=username).first()
        if user is None:
            raise CommandError(f"no user named {username!r}")
        _, plain = api_token_create(user=user, name=name or "created with create_token")
        self.stdout.write(plain)
