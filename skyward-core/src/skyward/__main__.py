"""``python -m skyward``: the ``skyward`` command line."""

from skyward.cli import main

raise SystemExit(main())
