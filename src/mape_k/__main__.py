"""`python -m mape_k` runs the command line."""

from mape_k.cli import main

raise SystemExit(main())
