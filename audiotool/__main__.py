"""``python -m audiotool`` == ``audiotool``."""

from audiotool.cli.app import main

if __name__ == "__main__":
    main()
