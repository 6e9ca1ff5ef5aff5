"""Lens reference engine (SPEC §11): a small, real code-search engine over the Python standard
library, served on loopback in the SPEC §2 wire format. Pure core: no dagster imports."""

from lens_engine.corpus import Corpus, Unit, build_corpus  # noqa: F401
from lens_engine.suites import build_suites, split_of  # noqa: F401
