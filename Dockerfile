# CPU runtime image: the wheel's models, no torch. Build: docker build -t aspects-rt .
# DICOM node: docker run -d -p 11112:11112 -v /var/lib/aspects:/spool aspects-rt
# One study:  docker run --rm -v /data:/data aspects-rt score /data/study --out /data/report
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY runtime ./runtime
COPY export ./export
COPY engines ./engines
RUN pip install . && rm -rf /src
RUN useradd --create-home aspects && mkdir /spool && chown aspects /spool
USER aspects
WORKDIR /home/aspects
EXPOSE 11112
ENTRYPOINT ["aspects"]
CMD ["serve", "--spool", "/spool", "--port", "11112"]
