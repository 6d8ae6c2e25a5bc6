"""No models: a models module makes Django send this app post_migrate (dbsecurity/apps.py), which it skips without."""
