"""``python -m lowlight_cli``."""

from lowlight_cli.cli import main

if __name__ == "__main__":
    main()
