# The relay as a container: the same `relay serve` that `make run` starts,
# configured by environment (see README: Configuration).
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY relay ./relay
COPY templates ./templates
COPY config ./config
RUN pip install --no-cache-dir --prefix=/install .

FROM python:3.11-slim
RUN useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin relay \
    && mkdir -p /app /var/lib/relay \
    && chown relay /var/lib/relay
COPY --from=build /install /usr/local
WORKDIR /app
COPY templates ./templates
COPY config ./config
ENV RELAY_CONFIG=/app/config/relay.yaml \
    RELAY_TEMPLATES_DIR=/app/templates \
    RELAY_STORE=sqlite:////var/lib/relay/relay.db \
    RELAY_BIND=0.0.0.0:8080 \
    PYTHONUNBUFFERED=1
USER relay
EXPOSE 8080
VOLUME ["/var/lib/relay"]
HEALTHCHECK --interval=30s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2).status == 200 else 1)"]
ENTRYPOINT ["relay"]
CMD ["serve"]
