"""`python -m provisioner` runs the prov CLI."""

from provisioner.cli import main

main()
