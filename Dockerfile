# The platform's one image: web, worker, beat and Flower run from it with the Procfile's lines (compose.yaml).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/app/.venv/bin:$PATH

WORKDIR /app
RUN python -m venv .venv
# Dependencies first, so that a code change does not reinstall them.
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt

COPY . .
# Static files are served by whitenoise from the image; the key and host only let the settings load as a deployment
# (hashed names, the manifest).
RUN DJANGO_SECRET_KEY=collectstatic-only DJANGO_ALLOWED_HOSTS=collectstatic.invalid python manage.py collectstatic --noinput --verbosity 0 \
    && useradd --create-home --uid 1000 app \
    && mkdir -p var/prometheus \
    && chown -R app var

USER app
EXPOSE 8000 5555 9808
