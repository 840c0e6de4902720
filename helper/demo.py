"""`python -m helper.demo`: train the three decoders on the built-in data and write a report (helper/captioning/demo.py)."""
import sys

from helper.captioning.demo import main

if __name__ == "__main__":
    sys.exit(main())
