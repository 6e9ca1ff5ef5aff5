"""`python -m lens_cli ...` is `lens-eval ...`."""

from lens_cli.main import entry

entry()
