"""`python -m helper.grade`: grade a batch of submissions (helper/instructor/grade.py)."""
import sys

from helper.instructor.grade import main

if __name__ == "__main__":
    sys.exit(main())
