"""A P-256 private key for tests (PKCS#8 PEM), the same one in every test that needs a
fixed key."""

PKCS8_PEM = b"""-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgMFJkHN1p7mSA9SqU
Me1DOlEhDhh2T1il3c8Dx4BkW+6hRANCAAT0N2fVSHgiwHdvChxVNEwgDq86ZlZb
HahPbvZYXOA5PvfMlVruRZqA4S2OsHA/XK/ZQZoo4voqcDqPPXZJ5XvZ
-----END PRIVATE KEY-----
"""
