"""Training configurations (ml_collections). ``base.py`` declares every key; the others
start from it and change values only, so a misspelt key fails when the file is loaded."""
