"""A running host: commands over ssh, drift audit, health probe."""
