"""`python -m helper.bench`: speed of the recurrent layers and of training (helper/dev/bench.py)."""

from helper.dev.bench import main

if __name__ == "__main__":
    main()
