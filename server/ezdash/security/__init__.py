"""Who may call the API and how often: API keys, JWT, rate limits and the audit log."""
