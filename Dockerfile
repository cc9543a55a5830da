# One image for the three services (server, scanner bridge, display).
FROM python:3.11-slim-bookworm

RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      xvfb xauth libgl1 libglu1-mesa libegl1 libxkbcommon-x11-0 libxcb-cursor0 \
      fonts-dejavu-core \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY pyproject.toml README.md ./
COPY rtserver ./rtserver
COPY feedback_display ./feedback_display
COPY models ./models
RUN pip install --no-cache-dir '.[display]'

# Outputs, the simulated session and screenshots live on a shared volume.
VOLUME ["/data"]
CMD ["rtserver", "--help"]
