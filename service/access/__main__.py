"""Make the entries of ``API_KEYS`` and ``USERS``: the secret on standard input, the entry
on standard output and nothing else there, so that a shell can set it directly::

    heroku config:set API_KEYS="$(python -m service.access hash-key ci </dev/null)"
    printf %s "$KEY" | python -m service.access hash-key ci --scopes classify
    python -m service.access hash-password alice        # asks for the password

``hash-key`` with nothing on standard input (a terminal, or empty) makes a
new key and shows it once, on standard error. A bad name or secret: one
line on standard error, exit 2.
"""

from __future__ import annotations

import argparse
import getpass
import sys

from service.access.credentials import (
    SCOPES,
    AccessSettingError,
    check_key,
    check_name,
    generate_key,
    hash_key,
    hash_password,
    key_entry,
    parse_keys,
    parse_users,
)


def read_secret() -> str:
    """Standard input without its final line break; '' from a terminal."""
    if sys.stdin.isatty():
        return ""
    text = sys.stdin.read()
    return text.removesuffix("\n").removesuffix("\r")


def key_command(name: str, scopes: tuple[str, ...]) -> str:
    key = read_secret()
    if key:
        check_key(key)
    else:
        key = generate_key()
        print(f"The new key (shown once; store it now): {key}", file=sys.stderr)
    entry = key_entry(name, hash_key(key), scopes)
    parse_keys(entry)  # what it prints, the app reads
    return entry


def password_command(name: str) -> str:
    if sys.stdin.isatty():
        password = getpass.getpass(f"Password for {name}: ")
        if getpass.getpass("Again: ") != password:
            raise AccessSettingError("The two passwords differ.")
    else:
        password = read_secret()
    entry = f"{name}:{hash_password(password)}"
    parse_users(entry)
    return entry


def scope_list(text: str) -> tuple[str, ...]:
    scopes = tuple(text.split("+"))
    if unknown := set(scopes) - set(SCOPES):
        raise argparse.ArgumentTypeError(f"not a scope: {', '.join(sorted(unknown))}")
    return scopes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m service.access",
        description="Print an entry of API_KEYS or USERS, from a secret on standard input.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    key = commands.add_parser(
        "hash-key", help="a program's key (none given: a new one, shown on standard error)"
    )
    key.add_argument("name", help="the key's name, shown in logs and metrics")
    key.add_argument(
        "--scopes",
        type=scope_list,
        default=(),
        help=f"what the key may do, joined by '+' ({', '.join(SCOPES)}); default: all",
    )
    password = commands.add_parser("hash-password", help="a person's password")
    password.add_argument("name", help="the name they log in with")
    arguments = parser.parse_args(argv)
    try:
        check_name(arguments.name)
        if arguments.command == "hash-key":
            entry = key_command(arguments.name, arguments.scopes)
        else:
            entry = password_command(arguments.name)
    except AccessSettingError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(entry)
    return 0


if __name__ == "__main__":
    sys.exit(main())
