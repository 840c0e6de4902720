"""`python -m helper.notebook`: store the notebook's outputs anew (helper/dev/notebook.py)."""
import sys

from helper.dev.notebook import main

if __name__ == "__main__":
    sys.exit(main())
