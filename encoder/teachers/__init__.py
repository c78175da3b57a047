"""Closed-vocabulary AudioSet teachers whose scores train the SLAP encoder.

Their weights live outside the repo, in ../shared/teachers (or $SLAP_TEACHERS_DIR); nothing here
downloads them. mn04.py: our own EfficientAT mn04_as network and front end.
"""
