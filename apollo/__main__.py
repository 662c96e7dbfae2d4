"""``python -m apollo`` runs the command line."""

from apollo.cli.main import cli

if __name__ == "__main__":
    cli()
