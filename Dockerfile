# CPU runtime image: the wheel's models, no torch. Build: docker build -t aspects-rt .
# Run:   docker run --rm -v /data:/data aspects-rt score /data/study --out /data/report
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY runtime ./runtime
COPY export ./export
COPY engines ./engines
RUN pip install . && rm -rf /src
RUN useradd --create-home aspects
USER aspects
WORKDIR /home/aspects
ENTRYPOINT ["aspects"]
CMD ["--help"]
