"""Use cases. Routes call these; these call the store. No HTTP here."""
