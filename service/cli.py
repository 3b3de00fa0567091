"""`vae-serve`: run the service under uvicorn. Options override the matching VAE_* environment variables."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from pydantic import ValidationError

from service.settings import ServiceSettings


def build_parser(defaults: ServiceSettings) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="vae-serve",
        description="Serve encode/decode/sample/score for every model bundle in a repository. Every other setting "
        "comes from VAE_* environment variables (see the README).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--host", default=defaults.host, help="address to bind, 0.0.0.0 for every interface ($VAE_HOST)")
    p.add_argument("--port", type=int, default=defaults.port, help="TCP port ($VAE_PORT)")
    p.add_argument(
        "--workers",
        type=int,
        default=defaults.workers,
        help="uvicorn worker processes, each loading every model ($VAE_WORKERS)",
    )
    p.add_argument(
        "--repository", default=str(defaults.model_repository), help="model repository folder ($VAE_MODEL_REPOSITORY)"
    )
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"], help="log level")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    try:
        defaults = ServiceSettings()  # VAE_* variables: a bad one stops here, before uvicorn starts
    except ValidationError as exc:
        print(f"vae-serve: invalid settings:\n{exc}", file=sys.stderr)
        return 2
    args = build_parser(defaults).parse_args(argv)
    os.environ["VAE_MODEL_REPOSITORY"] = args.repository  # read by create_app_from_env in every worker
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import uvicorn

    uvicorn.run(
        "service.app:create_app_from_env",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        log_level=args.log_level,
        access_log=False,  # the service logs one structured line per request itself
        loop="auto",
        http="auto",
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
