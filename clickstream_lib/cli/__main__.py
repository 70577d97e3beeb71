"""``python -m clickstream_lib.cli`` is the ``clickstream`` command."""

import sys

from clickstream_lib.cli import main

sys.exit(main())
