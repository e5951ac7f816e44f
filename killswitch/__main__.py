"""``python -m killswitch``."""

from killswitch.cli import main

raise SystemExit(main())
