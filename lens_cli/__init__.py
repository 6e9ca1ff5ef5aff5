"""`lens-eval`: the command line. It sits at the top of the import graph, beside the code
location's `definitions.py`: it drives the pure core (score, compare, verify, judge) and launches
the Dagster jobs (`run`)."""
