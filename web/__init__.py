"""Flask web front end of lampctl: JSON API, panel and admin pages."""
