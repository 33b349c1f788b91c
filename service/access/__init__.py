"""Who may call the service: API keys, rate limit, cross-site requests, security headers, redaction."""
