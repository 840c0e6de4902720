"""`python -m helper.release`: write the student kit (helper/instructor/release.py)."""
import sys

from helper.instructor.release import main

if __name__ == "__main__":
    sys.exit(main())
