"""`python -m helper.evaluate`: score a checkpoint (helper/captioning/evaluate.py)."""
import sys

from helper.captioning.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
