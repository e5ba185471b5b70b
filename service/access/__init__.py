"""Privacy: logins for people, keys for programs, behind one switch.

With ``USERS`` or ``API_KEYS`` set (``service.settings``), ``gate.AccessGate``
closes every route but the health checks and the login page; unset, this
package is never imported and the app is public. ``credentials`` parses and
checks the settings' entries (``python -m service.access`` makes them),
``sessions`` signs the login cookie, ``login`` serves the form.
"""
