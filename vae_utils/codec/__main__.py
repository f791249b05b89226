"""``python -m vae_utils.codec``."""

import sys

from vae_utils.codec.cli import main

sys.exit(main())
