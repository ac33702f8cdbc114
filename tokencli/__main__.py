"""Entry point of the `tokencli` console script and of `python -m tokencli`."""

import sys


def main() -> None:
    """Run the CLI; a Ctrl-C while it is still loading exits 130 too, without a traceback."""
    try:
        from tokencli.cli.base import main as run
    except KeyboardInterrupt:
        sys.stderr.write("\ninterrupted\n")
        sys.exit(130)
    run()


if __name__ == "__main__":
    main()
