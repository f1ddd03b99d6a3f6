# One image for web and worker; GPU hosts build with --build-arg REQUIREMENTS=requirements-gpu.txt.
FROM python:3.11-slim-bookworm

ARG REQUIREMENTS=requirements.txt
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    VAR_DIR=/var/lib/classifier_site KERAS_HOME=/var/lib/classifier_site/keras

RUN useradd --create-home --uid 1000 app
WORKDIR /app
COPY requirements.txt requirements-gpu.txt ./
RUN pip install -r "$REQUIREMENTS"
COPY . .
RUN mkdir -p "$VAR_DIR" && chown -R app:app "$VAR_DIR" \
    && DEBUG=false SECRET_KEY="$(python -c 'import secrets; print(secrets.token_urlsafe(50))')" ALLOWED_HOSTS=build \
       python manage.py collectstatic --noinput
USER app
EXPOSE 8000
CMD ["gunicorn", "classifier_site.wsgi", "--bind", "0.0.0.0:8000", "--workers", "3", "--threads", "4", "--access-logfile", "-"]
