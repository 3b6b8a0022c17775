"""The service layer: one function per user-visible action. API, CLI and web call only these."""
