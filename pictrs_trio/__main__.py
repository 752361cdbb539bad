"""``python -m pictrs_trio``: the same command line as the ``pictrs-trio`` script."""

from pictrs_trio.runtime.cli import main

raise SystemExit(main())
