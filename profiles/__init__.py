"""Built-in hardware profiles (YAML) and profile.schema.json."""
