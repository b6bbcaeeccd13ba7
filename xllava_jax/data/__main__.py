"""`python -m xllava_jax.data {inspect,stats,pack}`."""

import sys

from xllava_jax.data.cli import main

if __name__ == "__main__":
    sys.exit(main())
