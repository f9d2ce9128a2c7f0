"""``python -m skyward.cli``."""

from skyward.cli import main

raise SystemExit(main())
