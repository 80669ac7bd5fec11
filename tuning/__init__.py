"""fundus-sex: tuning."""
