"""`python -m helper.train`: train a decoder (helper/captioning/run.py)."""
import sys

from helper.captioning.run import main

if __name__ == "__main__":
    sys.exit(main())
