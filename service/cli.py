"""`vae-serve`: run the service under uvicorn. Options override the matching VAE_* environment variables."""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Sequence


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="vae-serve",
        description="Serve encode/decode/sample/score for every model bundle in a repository. Every other setting "
        "comes from VAE_* environment variables (see the README).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0 to listen on every interface)")
    p.add_argument("--port", type=int, default=8000, help="TCP port")
    p.add_argument("--workers", type=int, default=1, help="uvicorn worker processes (each loads every model)")
    p.add_argument("--repository", help="model repository folder (default: $VAE_MODEL_REPOSITORY or ./models)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"], help="log level")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.repository:
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
