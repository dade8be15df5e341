"""facelite deploy (host side): `python -m facelite.deploy --device pi` bundles, uploads, installs and health-checks.

remote.py and supervisor.py are shipped to the device and run there with its system Python (stdlib only);
everything else here runs on the workstation.
"""
