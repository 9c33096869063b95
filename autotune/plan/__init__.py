"""The plan and its vocabulary: settings with provenance, knobs (what each
setting changes), the report of what applying did, and shares of the machine."""
