"""`python -m helper.gradescope OUT.zip`: the Gradescope autograder package (helper/instructor/gradescope.py)."""
import sys

from helper.instructor.gradescope import main

if __name__ == "__main__":
    sys.exit(main())
