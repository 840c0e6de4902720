"""`python -m helper.figures`: redraw the README's figures (helper/dev/figures.py)."""

from helper.dev.figures import main

if __name__ == "__main__":
    main()
