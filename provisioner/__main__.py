"""`python -m provisioner` runs the prov CLI."""

from provisioner.entry import launch

launch()
