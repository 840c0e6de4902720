"""`python -m helper.selfcheck`: the student's public self-check (helper/kit/selfcheck.py)."""
import sys

from helper.kit.selfcheck import main

if __name__ == "__main__":
    sys.exit(main())
