"""`python -m lens_cli ...` is `lens-eval ...` (`lens_cli.entry`)."""

from lens_cli import entry

entry()
