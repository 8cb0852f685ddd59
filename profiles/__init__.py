"""Hardware profiles, as YAML data files (imported as mucrasp.profiles)."""
