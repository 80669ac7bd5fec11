"""fundus-sex: tools."""
