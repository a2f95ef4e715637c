"""``python -m atomvae`` is the ``atomvae`` command."""

import sys

from atomvae.cli.main import main

sys.exit(main())
