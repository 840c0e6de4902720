"""`python -m helper.submit`: pack a student's hand-in (helper/kit/submit.py)."""
import sys

from helper.kit.submit import main

if __name__ == "__main__":
    sys.exit(main())
