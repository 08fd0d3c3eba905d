"""Authentication: password hashing, JWT issue and verification, principals."""
