"""Maintenance commands: backup and restore, doctor, firmware check and flash."""
