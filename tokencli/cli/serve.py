"""`tokencli serve`: its options parsed here; building and running the server is
server/serving.py's `build_server` and `run`, which the tests call too."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tokencli.cli.base import app, exit_codes, location_of, warn
from tokencli.http.keys import ADMIN_KEY_ENV, VALIDATE_KEY_ENV
from tokencli.server.accesslog import AccessLogFormat


@app.command()
def serve(
    ctx: typer.Context,
    host: Annotated[
        str, typer.Option(metavar="ADDRESS", help="Address to listen on.")
    ] = "127.0.0.1",
    port: Annotated[
        int, typer.Option(min=0, max=65535, metavar="PORT", help="Port; 0 picks a free one.")
    ] = 8000,
    admin_key_file: Annotated[
        Path | None,
        typer.Option(
            metavar="PATH",
            help=f"File holding the admin key (else ${ADMIN_KEY_ENV}). With a key, issuing, "
            "purging, /app/tokens and /metrics need 'Authorization: Bearer KEY'.",
        ),
    ] = None,
    validate_key_file: Annotated[
        Path | None,
        typer.Option(
            metavar="PATH",
            help=f"File holding a key that validation needs (else ${VALIDATE_KEY_ENV}); "
            "the admin key works too. Without one, validation is open.",
        ),
    ] = None,
    allow_unauthenticated: Annotated[
        bool,
        typer.Option(
            "--allow-unauthenticated", help="Allow a non-loopback --host with no admin key."
        ),
    ] = False,
    tls_cert: Annotated[
        Path | None, typer.Option(metavar="FILE", help="PEM certificate chain: serve HTTPS.")
    ] = None,
    tls_key: Annotated[
        Path | None, typer.Option(metavar="FILE", help="PEM private key of --tls-cert.")
    ] = None,
    access_log: Annotated[
        AccessLogFormat,
        typer.Option(case_sensitive=False, help="Access log on stderr: text, json or off."),
    ] = AccessLogFormat.TEXT,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="No access log (--access-log off).")
    ] = False,
    metrics: Annotated[bool, typer.Option(help="Answer GET /metrics (Prometheus).")] = True,
    max_connections: Annotated[
        int | None,
        typer.Option(
            min=1,
            metavar="N",
            help="Open connections at most; more wait in the backlog. "
            "Default: what the open-file limit allows.",
        ),
    ] = None,
    trusted_proxy: Annotated[
        list[str] | None,
        typer.Option(
            metavar="CIDR",
            help="A reverse proxy (address or network) whose X-Forwarded-For or Forwarded "
            "header names the client in the access log; repeatable. Others' are ignored.",
        ),
    ] = None,
) -> None:
    """Serve the token API over HTTP(S): the original service's endpoints and more.

    Prints 'listening on http://HOST:PORT' to stderr once bound; one access-log line per
    request follows, with token secrets redacted. SIGINT or SIGTERM stops it cleanly;
    SIGHUP re-reads the key files.

    \b
    Examples:
      tokencli serve
      tokencli serve --port 0 --access-log json
      tokencli serve --trusted-proxy 127.0.0.1 --trusted-proxy 10.0.0.0/8
      tokencli serve --host 0.0.0.0 --admin-key-file /etc/tokencli/admin.key \\
          --tls-cert cert.pem --tls-key key.pem
      curl -X POST http://127.0.0.1:8000/app/token -H 'Content-Type: application/json'
    """
    from tokencli.server import serving

    options = serving.ServeOptions(
        location=location_of(ctx),
        host=host,
        port=port,
        admin_key_file=admin_key_file,
        validate_key_file=validate_key_file,
        allow_unauthenticated=allow_unauthenticated,
        tls_cert=tls_cert,
        tls_key=tls_key,
        access_log=AccessLogFormat.OFF if quiet else access_log,
        metrics=metrics,
        max_connections=max_connections,
        trusted_proxies=tuple(trusted_proxy or ()),
    )
    with exit_codes():
        server = serving.build_server(options, warn)
        code = serving.run(server)
    raise typer.Exit(code)
