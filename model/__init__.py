"""fundus-sex: model."""
