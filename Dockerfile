# One image for every Omnistream flow and command: `omnistream run <flow>`, `serve`, `generate`, …
#
# The base is pinned to a patch release and its digest, so a rebuild gets the same Python and
# the same Debian packages until the pin is moved on purpose. To move it: choose the new tag
# (CPython 3.11 or 3.12, the range pyproject.toml allows) and take its index digest, valid for
# every platform, from `docker buildx imagetools inspect python:<version>-slim-bookworm`.
FROM python:3.11.14-slim-bookworm@sha256:65a93d69fa75478d554f4ad27c85c1e69fa184956261b4301ebaf6dbb0a3543d

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
WORKDIR /app

# The dependencies first, read from pyproject.toml alone: this layer is rebuilt when they
# change, not on every change of the source. The base dependencies only: no dev tools, no
# embedded broker (the `demo` extra) and no grafana-client (the `grafana` extra).
COPY pyproject.toml ./
RUN python -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))' \
      > /tmp/requirements.txt \
 && pip install --no-cache-dir -r /tmp/requirements.txt \
 && rm /tmp/requirements.txt

# Then the source, installed without resolving anything again.
COPY README.md LICENSE ./
COPY omnistream ./omnistream
COPY flows ./flows
COPY connectors ./connectors
COPY state ./state
COPY domain ./domain
COPY base ./base
RUN pip install --no-cache-dir --no-deps . \
 && groupadd --system --gid 10001 omnistream \
 && useradd --system --uid 10001 --gid 10001 omnistream \
 && mkdir -p /var/lib/omnistream/recovery && chown -R 10001:10001 /var/lib/omnistream
# Not root, by number: Kubernetes verifies runAsNonRoot only for a numeric user
# (deploy/render.py runs the pods as 10001:10001).
USER 10001:10001
ENTRYPOINT ["omnistream"]
CMD ["--help"]
