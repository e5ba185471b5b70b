"""The app's settings: environment variables, read and checked once at start.

``Settings`` is the only place the app reads its environment; what it holds
is passed down from ``app.py``. A value that is not allowed stops the app
before it binds its port, with one line naming the variable, its value and
what is allowed. ``python app.py --help`` and the README's table of settings
(``python -m service.settings`` prints it) come from the descriptions here.
Defaults are the core's own (``classifier.options``): a script's
``Classifier(path)`` behaves as the app does.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails
from pydantic_settings import BaseSettings, SettingsConfigDict

from classifier.assets import DEFAULT_MODEL_PATH, ROOT
from classifier.errors import ClassifierError
from classifier.options import AdmissionOptions, SessionOptions

if TYPE_CHECKING:
    from service.access.credentials import Credentials

ADMISSION = AdmissionOptions()
SESSION = SessionOptions()


class SettingsError(ClassifierError):
    """An environment variable with a value the app cannot use."""

    exit_code = 2


class Settings(BaseSettings):
    """Every setting of the app, by its environment variable (upper case)."""

    model_config = SettingsConfigDict(frozen=True, env_ignore_empty=True, extra="ignore")

    model_path: Path = Field(
        DEFAULT_MODEL_PATH,
        description="the model to serve; its `.json` and labels sit beside it",
    )
    host: str = Field(
        "127.0.0.1", min_length=1, description="where to listen; `setup.sh` sets `0.0.0.0`"
    )
    port: int = Field(
        7860, ge=1, le=65535, description="the port to listen on; Heroku sets it, as `$PORT`"
    )
    memory_budget_mb: int = Field(
        ADMISSION.memory_budget_mb,
        ge=1,
        description="memory that decodes may hold at once: one 40-megapixel progressive JPEG "
        "and its photo",
    )
    decode_slots: int = Field(
        ADMISSION.decode_slots,
        ge=0,
        description="most decodes at once (`0`: one per core): decoding is CPU-bound, and "
        "each one in flight holds buffers of its own",
    )
    admission_timeout: float = Field(
        ADMISSION.timeout_s,
        gt=0,
        description="seconds an upload may wait for memory before a 503 (Heroku's router "
        "gives up at 30)",
    )
    decode_timeout: float = Field(
        ADMISSION.decode_timeout_s,
        gt=0,
        description="seconds, wall-clock and CPU, one upload's decode may take in its worker "
        "process: past it the worker is killed and replaced, and the upload answered 422",
    )
    max_batch: int = Field(
        ADMISSION.max_batch,
        ge=1,
        le=64,
        description="most images in one model run: a larger batch costs less per image, and "
        "its activations (handed back as it ends) come out of the memory budget: an image "
        "joins a run only if the budget has them free",
    )
    vips_threads: int = Field(
        ADMISSION.vips_threads,
        ge=1,
        le=64,
        description="libvips threads per decode (requests already decode side by side)",
    )
    ort_intra_op_threads: int = Field(
        SESSION.intra_op_threads,
        ge=0,
        description="ONNX Runtime threads for one inference (`0`: one per core)",
    )
    ort_allow_spinning: bool = Field(
        SESSION.allow_spinning,
        description="`1` lets ONNX Runtime's idle threads spin: they then take CPU from the "
        "decodes and HTTP of other requests",
    )
    ort_memory_arena: bool = Field(
        SESSION.memory_arena,
        description="ONNX Runtime's arena for activations: kept between runs, it saves "
        "allocating them afresh each time",
    )
    header_timeout: float = Field(
        5.0,
        gt=0,
        description="seconds a connection has to send a request's headers, from its opening "
        "or its previous answer: a client that trickles them is cut off",
    )
    body_timeout: float = Field(
        20.0,
        gt=0,
        description="seconds a request's body may take to arrive once its headers have: "
        "408 past it (Heroku's router gives up at 30)",
    )
    keep_alive_timeout: float = Field(
        5.0, gt=0, description="seconds an idle keep-alive connection stays open"
    )
    max_header_bytes: int = Field(
        16384,
        ge=1024,
        description="most bytes of a request's line and headers: 431 past it",
    )
    max_connections: int = Field(
        100,
        ge=1,
        description="open connections past which new requests get a quick 503 with "
        "`Retry-After` (`/healthz` is always answered)",
    )
    max_connections_per_peer: int = Field(
        32,
        ge=1,
        description="open connections one address may hold where no proxy stands in front "
        "(`FORWARDED_HOPS=0`): its next ones get a quick 503 and are closed, so that one "
        "address cannot take every connection of `MAX_CONNECTIONS`. Off behind a router "
        "(`FORWARDED_HOPS` 1 or more), where every connection comes from the router",
    )
    queue_per_client: int = Field(
        8,
        ge=1,
        description="page events one client may have waiting in the page's queue (64 "
        "places): past it, 503",
    )
    forwarded_hops: int = Field(
        0,
        ge=0,
        le=8,
        description="proxies in front that append to `X-Forwarded-For`; a client is the "
        "entry that many from the end (`0`: the connection's peer). `setup.sh` sets `1` on "
        "Heroku, whose router appends the address that connected to it",
    )
    metrics_token: str | None = Field(
        None,
        min_length=1,
        description="if set, `/metrics` answers only `Authorization: Bearer <token>`; "
        "unset, it is public (Heroku's metrics read it)",
    )
    # --- feedback (service.feedback; docs/feedback.md) ---
    feedback: bool = Field(
        True,
        description="`0` (or `off`) removes `POST /feedback` and the page's feedback controls",
    )
    database_url: SecretStr | None = Field(
        None,
        description="the PostgreSQL database feedback is kept in (`postgres://...`, as "
        "Heroku Postgres sets it; SSL required unless the URL has `?sslmode=disable`); "
        "unset, an SQLite file in `DATA_DIR`",
    )
    data_dir: Path = Field(
        ROOT / "data", description="where the SQLite feedback store lives (git-ignored)"
    )
    feedback_db: Path | None = Field(
        None, description="the SQLite file instead of `DATA_DIR/feedback.sqlite3`"
    )
    feedback_rate: int = Field(
        30, ge=1, description="corrections one client may send in an hour: past it, 429"
    )
    feedback_max_items: int = Field(
        10000, ge=1, description="corrections the store keeps: past it, 507 until purged"
    )
    feedback_max_mb: int = Field(
        800,
        ge=1,
        description="megabytes of photos the store keeps (Heroku Postgres' smallest plan "
        "holds 1 GB): past it, 507 until purged",
    )
    feedback_salt: SecretStr | None = Field(
        None,
        description="the key of the client hash stored with each correction; unset, derived "
        "from `DATABASE_URL` (its password), or kept beside the SQLite file",
    )
    dyno: str | None = Field(
        None,
        description="set by Heroku on its dynos: there, without `DATABASE_URL`, feedback is "
        "off (the disk is wiped at every restart)",
    )

    mcp: bool = Field(
        False,
        description="`on` serves the MCP tool `classify_image` at `/mcp`, for AI assistants "
        "(see `docs/mcp.md`); off, the MCP SDK is not even imported",
    )
    # --- privacy (service.access): one switch, off unless API_KEYS or USERS is set ---
    api_keys: str | None = Field(
        None,
        description="programs' keys, comma-separated `NAME:HASH` entries, each optionally "
        "`:classify+feedback+metrics` (its scopes); `python -m service.access hash-key NAME` "
        "prints one. Set (or `USERS`), every route but `/healthz`, `/readyz` and the login "
        "asks for `Authorization: Bearer <key>` or a login (docs/access.md)",
    )
    users: str | None = Field(
        None,
        description="people who may log in at `/login`, comma-separated `NAME:HASH` entries; "
        "`python -m service.access hash-password NAME` prints one",
    )
    session_secret: str | None = Field(
        None,
        description="signs login cookies along with each user's hash (32 characters or more, "
        "the same on every dyno); unset, the hashes alone sign them, so `USERS` is then as "
        "secret as this would be",
    )
    session_hours: float = Field(
        12.0, gt=0, le=24 * 30, description="hours a login lasts before the next one"
    )

    @field_validator("api_keys", "users", "session_secret")
    @classmethod
    def _parses(cls, value: str | None, info: ValidationInfo) -> str | None:
        """Fail closed: an access setting that cannot be read stops the app at start."""
        if value is None:
            return value
        from service.access.credentials import check_secret, parse_keys, parse_users

        check = {"api_keys": parse_keys, "users": parse_users, "session_secret": check_secret}
        check[str(info.field_name)](value)
        return value

    @property
    def private(self) -> bool:
        """Whether the app asks every caller for credentials."""
        return bool(self.api_keys or self.users)

    def credentials(self) -> Credentials:
        """The keys and users the app accepts (this imports ``service.access``: only when
        ``private``)."""
        from service.access.credentials import Credentials, parse_keys, parse_users

        keys = parse_keys(self.api_keys) if self.api_keys else ()
        return Credentials(keys, parse_users(self.users) if self.users else ())

    # --- end of privacy ---
    malloc_mmap_threshold_: int = Field(
        2097152,
        ge=0,
        description="read by glibc, set by `setup.sh`: freed blocks of this size and more "
        "(a large image's decode buffers) go back to the system at once, a lower peak; "
        "smaller ones stay for the next request, which would otherwise fault them in afresh",
    )

    def session(self) -> SessionOptions:
        """The ONNX Runtime session's options."""
        return SessionOptions(
            self.ort_intra_op_threads, self.ort_allow_spinning, self.ort_memory_arena
        )

    def admission(self) -> AdmissionOptions:
        """How much work the classifier takes on at once."""
        return AdmissionOptions(
            self.memory_budget_mb,
            self.decode_slots,
            self.admission_timeout,
            self.max_batch,
            self.decode_timeout,
            self.vips_threads,
        )


def load_settings() -> Settings:
    """The settings from the environment; ``SettingsError`` names every bad one."""
    try:
        return Settings()
    except ValidationError as error:
        raise SettingsError("\n".join(map(problem_line, error.errors()))) from None


def problem_line(problem: ErrorDetails) -> str:
    """One bad setting, in one line; a validator's own message quotes no value (a secret)."""
    variable = str(problem["loc"][0]).upper()
    if problem["type"] == "value_error":
        return f"{variable} is not allowed: {problem['ctx']['error']}."
    return (
        f"{variable}={problem['input']!r} is not allowed: "
        f"{allowed(Settings.model_fields[str(problem['loc'][0])])}."
    )


def allowed(field: FieldInfo) -> str:
    """What a field takes, in words, from its type and bounds."""
    if field.annotation is bool:
        return "1 or 0 (or true/false, yes/no, on/off)"
    if field.annotation is Path:
        return "a file path"
    if field.annotation is str:
        return "a host name or address"
    kind = "a whole number" if field.annotation is int else "a number"
    bounds = {
        name: getattr(limit, name)
        for limit in field.metadata
        for name in ("ge", "le", "gt")
        if hasattr(limit, name)
    }
    if "ge" in bounds and "le" in bounds:
        return f"{kind} from {bounds['ge']} to {bounds['le']}"
    if "ge" in bounds:
        return f"{kind} of at least {bounds['ge']}"
    if "gt" in bounds:
        return f"{kind} above {bounds['gt']}"
    return kind


def variables() -> list[tuple[str, str, str]]:
    """``(variable, default, meaning)`` for every setting, in order."""
    return [
        (name.upper(), _shown(field.default), field.description or "")
        for name, field in Settings.model_fields.items()
    ]


def _shown(default: object) -> str:
    if default is None:
        return "unset"
    if isinstance(default, bool):
        return "1" if default else "0"
    if isinstance(default, Path) and default.is_relative_to(ROOT):
        return str(default.relative_to(ROOT))
    return str(default)


def help_text() -> str:
    """The settings, as ``python app.py --help`` lists them."""
    return "\n".join(
        f"  {name} (default {default})\n"
        + textwrap.fill(meaning, 79, initial_indent=" " * 6, subsequent_indent=" " * 6)
        for name, default, meaning in variables()
    )


def markdown_table() -> str:
    """The settings, as the README's table."""
    rows = [f"| `{name}` | `{default}` | {meaning} |" for name, default, meaning in variables()]
    return "\n".join(["| variable | default | what |", "|---|---|---|", *rows])


if __name__ == "__main__":
    print(markdown_table())
