"""``python -m concepts``: the command line."""

from concepts.cli import main

if __name__ == "__main__":
    main()
