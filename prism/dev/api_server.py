"""`chalice local`, with Nagle's algorithm off.

chalice local speaks HTTP/1.1 keep-alive and writes headers and body separately; with Nagle on,
every reused connection waits for the client's delayed ACK (~40 ms a request). API Gateway has no
such stall, so the local stand-in should not either.

Run as `python -m prism.dev.api_server local --stage dev --port 8000` (same args as chalice).
"""

import sys

from chalice.cli import main
from chalice.local import ChaliceRequestHandler

if __name__ == "__main__":
    ChaliceRequestHandler.disable_nagle_algorithm = True
    sys.exit(main())
