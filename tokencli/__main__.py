"""Allow `python -m tokencli`."""

from tokencli.cli import main

if __name__ == "__main__":
    main()
