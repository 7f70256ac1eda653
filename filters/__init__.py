"""Rules: each one looks at a pair and says keep (``None``) or the reason code it is dropped for."""
