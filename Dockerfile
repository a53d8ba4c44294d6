# One image for every Omnistream flow and command: `omnistream run <flow>`, `generate`, …
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY omnistream ./omnistream
COPY flows ./flows
COPY connectors ./connectors
COPY state ./state
COPY domain ./domain
COPY base ./base
RUN pip install --no-cache-dir . \
 && useradd --system --uid 10001 omnistream \
 && mkdir -p /var/lib/omnistream/recovery && chown -R omnistream /var/lib/omnistream
USER omnistream
ENTRYPOINT ["omnistream"]
CMD ["--help"]
