"""Template context shared by every page."""
from django.conf import settings


def platform_links(request):
    return {"flower_url": settings.FLOWER_URL}
