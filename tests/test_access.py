"""Privacy: with ``API_KEYS`` or ``USERS`` set, every route asks for credentials.

By class: the settings and their tool (entries made, entries refused at
start); every route the app serves, enumerated from its own router, refused
to an anonymous caller without reading a byte of it; keys (right, wrong,
out of scope, through ``gradio_client``); people (login, the cookie on
another dyno, tampered cookies, throttled guesses, log out).

Two instances run the Procfile's command with the same settings, as two
dynos behind Heroku's router (``DYNO`` set: clients told apart by the
router's ``X-Forwarded-For``); a third app, in this process, has another
``SESSION_SECRET``.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from gradio_client import Client, handle_file

from classifier.assets import ROOT
from service.access.credentials import (
    Credentials,
    generate_key,
    hash_key,
    hash_password,
    key_entry,
    parse_keys,
    parse_users,
)
from service.access.gate import OPEN
from service.access.login import FAILURES, LOGIN, LOGOUT, WINDOW_S, Throttle, safe_next
from service.access.sessions import COOKIE, Sessions
from service.settings import Settings
from tests.support.harness import Instance, classify, launch, metric, stop, wait_until_ready
from tests.support.photos import CAT_PHOTO

KEY = generate_key()
METRICS_KEY = generate_key()
METRICS_TOKEN = generate_key()
PASSWORD = "correct horse battery"
API_KEYS = ",".join(
    [key_entry("ci", hash_key(KEY)), key_entry("scraper", hash_key(METRICS_KEY), ("metrics",))]
)
USERS = f"alice:{hash_password(PASSWORD)},bob:{hash_password('another password')}"
SECRET = "s" * 40
PRIVATE = {
    "API_KEYS": API_KEYS,
    "USERS": USERS,
    "SESSION_SECRET": SECRET,
    "METRICS_TOKEN": METRICS_TOKEN,
}
BEARER = {"Authorization": f"Bearer {KEY}"}
ISSUE_TEMPLATES = {
    "/classify",
    "/classify/batch",
    "/docs",
    "/openapi.json",
    "/metrics",
    "/config",
    "/gradio_api/info",
    "/gradio_api/upload",
    "/gradio_api/queue/join",
    "/gradio_api/file={path_or_url:path}",
}
"""The issue's routes, as the app's router names them: the enumeration finds them all."""
ISSUE_ROUTES = [
    ("POST", "classify"),
    ("POST", "classify/batch"),
    ("GET", "docs"),
    ("GET", "openapi.json"),
    ("GET", "metrics"),
    ("GET", "config"),
    ("GET", "gradio_api/info"),
    ("POST", "gradio_api/upload"),
    ("POST", "gradio_api/queue/join"),
    ("GET", "gradio_api/file=/etc/passwd"),
    ("POST", "mcp"),
    ("POST", "gradio_api/mcp/"),
    ("POST", "feedback"),
]


# --- the settings and their tool ----------------------------------------------


def run(*args: str, stdin: str = "", **env: str) -> subprocess.CompletedProcess[str]:
    """``python *args`` from the repository, with only ``env`` set."""
    return subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        env={"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", **env},
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_hash_key_prints_only_the_entry_of_the_key_it_is_given() -> None:
    key = generate_key()
    result = run("-m", "service.access", "hash-key", "ci", "--scopes", "classify", stdin=key + "\n")
    assert result.returncode == 0, result.stderr
    (entry,) = result.stdout.splitlines()
    assert result.stdout == entry + "\n"
    (parsed,) = parse_keys(entry)
    assert (parsed.name, parsed.scopes) == ("ci", frozenset({"classify"}))
    assert Credentials((parsed,), ()).key_for(key) is parsed
    assert key not in result.stdout + result.stderr


def test_hash_key_with_no_input_makes_a_key_and_shows_it_once_on_stderr() -> None:
    result = run("-m", "service.access", "hash-key", "ci")
    assert result.returncode == 0, result.stderr
    (key,) = re.findall(r"key_[A-Za-z0-9_-]{43}", result.stderr)
    (parsed,) = parse_keys(result.stdout.strip())
    assert Credentials((parsed,), ()).key_for(key) is parsed
    assert key not in result.stdout


def test_hash_password_prints_an_entry_that_logs_in() -> None:
    result = run("-m", "service.access", "hash-password", "alice", stdin="hunter2hunter2\n")
    assert result.returncode == 0, result.stderr
    credentials = Credentials((), parse_users(result.stdout.strip()))
    assert credentials.user_for("alice", "hunter2hunter2") is not None
    assert credentials.user_for("alice", "hunter2hunter2\n") is None


@pytest.mark.parametrize(
    ("args", "stdin"),
    [
        (["hash-key", "ci"], "too-short"),
        (["hash-key", "ci"], "a key with spaces in it, long enough to pass"),
        (["hash-key", "two words"], ""),
        (["hash-key", "ci:x"], ""),
        (["hash-key", "ci", "--scopes", "everything"], ""),
        (["hash-password", "alice"], "short"),
        (["hash-password", "a,b"], "long enough password"),
    ],
)
def test_the_tool_refuses_what_the_app_would_not_read(args: list[str], stdin: str) -> None:
    result = run("-m", "service.access", *args, stdin=stdin)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.strip()


def malformed_entries() -> Iterator[Any]:
    """Every way an access setting can be wrong: each must stop the app."""
    key, password = hash_key(generate_key()), hash_password("long enough password")
    cases = [
        ("API_KEYS", KEY, "the key itself, pasted by mistake"),
        ("API_KEYS", ",", "no entry"),
        ("API_KEYS", f"ci:{key},", "an empty entry"),
        ("API_KEYS", f"ci:{key},ci:{key}", "a name twice"),
        ("API_KEYS", f"c i:{key}", "a name with a space"),
        ("API_KEYS", f"ci:{key}:admin", "an unknown scope"),
        ("API_KEYS", f"ci:{key}:classify:extra", "a field too many"),
        ("API_KEYS", f"ci:{password}", "a password's hash"),
        ("API_KEYS", f"ci:{key[:-10]}", "a digest cut short"),
        ("API_KEYS", f"ci:{key.replace('hmac-sha256', 'sha1')}", "another scheme"),
        ("API_KEYS", f"ci:{key[:-3]}$$$", "not base64url"),
        ("USERS", "alice:hunter2hunter2", "a password in the clear"),
        ("USERS", f"alice:{key}", "a key's hash"),
        ("USERS", f"alice:{password.replace('.15.', '.40.')}", "scrypt over a dyno's memory"),
        ("USERS", f"alice:{password.replace('.15.', '.x.')}", "a cost not a number"),
        ("SESSION_SECRET", "short", "a short secret"),
    ]
    for variable, value, what in cases:
        yield pytest.param(variable, value, id=f"{variable}: {what}")


@pytest.mark.parametrize(("variable", "value"), malformed_entries())
def test_a_malformed_access_setting_stops_the_app_with_one_line_and_exit_2(
    variable: str, value: str
) -> None:
    """It fails closed, and never quotes the setting: it may hold a secret."""
    result = run("app.py", **{variable: value})
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"error: {variable} is not allowed: ")
    quoted = [part for part in re.split(r"[:,.$]", value) if len(part) >= 16 and part in line]
    assert quoted == []


ACCESS_MODULES = """
import sys
from classifier.model import Classifier
from service.api import build_api
from service.page import build_demo, mount
from service.settings import load_settings
settings = load_settings()
classifier = Classifier(settings.model_path, warm=False)
mount(build_api(classifier), build_demo(classifier, []), settings)
print(" ".join(sorted(name for name in sys.modules if name.startswith("service.access"))))
"""


def test_a_public_app_imports_none_of_it(model_path: Path) -> None:
    """The switch off costs nothing: the app is built without importing ``service.access``."""
    public = run("-c", ACCESS_MODULES, MODEL_PATH=str(model_path))
    private = run("-c", ACCESS_MODULES, MODEL_PATH=str(model_path), USERS=USERS)
    assert public.returncode == private.returncode == 0, public.stderr + private.stderr
    assert public.stdout.split() == []
    assert "service.access.gate" in private.stdout.split()


# --- keys, users and cookies, in themselves -----------------------------------


@pytest.fixture(scope="module")
def credentials() -> Credentials:
    return Settings(api_keys=API_KEYS, users=USERS).credentials()


@pytest.mark.parametrize("private", [{"users": USERS}, {"api_keys": API_KEYS}])
def test_people_or_programs_alone_make_the_app_private(private: dict[str, str]) -> None:
    settings = Settings(**private)
    credentials = settings.credentials()
    assert settings.private
    assert bool(credentials.users) == ("users" in private)
    assert bool(credentials.keys) == ("api_keys" in private)
    assert not Settings().private


def near_misses(secret: str) -> Iterator[str]:
    """A secret changed a little, in every way a guess or a mangling might."""
    flipped = (
        secret[:index] + chr(ord(secret[index]) ^ 1) + secret[index + 1 :]
        for index in range(0, len(secret), 5)
    )
    changed = [
        "",
        secret[:-1],
        secret + "x",
        secret.upper(),
        secret.swapcase(),
        f" {secret}",
        secret[1:] + secret[0],
        *flipped,
    ]
    yield from (guess for guess in changed if guess != secret)


def test_a_key_is_known_only_exactly(credentials: Credentials) -> None:
    assert credentials.key_for(KEY).name == "ci"
    assert credentials.key_for(METRICS_KEY).name == "scraper"
    for guess in near_misses(KEY):
        assert credentials.key_for(guess) is None, guess


def test_a_password_is_known_only_exactly_and_an_unknown_name_costs_the_same(
    credentials: Credentials, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert credentials.user_for("alice", PASSWORD).name == "alice"
    assert credentials.user_for("bob", PASSWORD) is None
    for guess in list(near_misses(PASSWORD))[:6]:
        assert credentials.user_for("alice", guess) is None
    import service.access.credentials as module

    costs: list[tuple[int, int, int]] = []
    real = module.scrypt

    def counted(password: bytes, salt: bytes, log2_n: int, r: int, p: int, length: int) -> bytes:
        costs.append((log2_n, r, p))
        return real(password, salt, log2_n, r, p, length)

    monkeypatch.setattr(module, "scrypt", counted)
    credentials.user_for("alice", "wrong password")
    credentials.user_for("nobody", "wrong password")
    assert costs[0] == costs[-1] == (15, 8, 3)


def sessions(credentials: Credentials, secret: str | None = SECRET, now: float = 1e9) -> Sessions:
    return Sessions(credentials, secret, 3600, clock=lambda: now)


def tampered(value: str, other: str) -> Iterator[str]:
    """A genuine cookie value changed in each part: expiry, name, signature, shape."""
    expiry, name, signature = value.split(".", 2)
    yield f"{int(expiry) + 3600}.{name}.{signature}"
    yield f"{expiry}.{other}.{signature}"
    yield f"{expiry}.{name}."
    yield f"{expiry}.{name}"
    yield f"{expiry}..{name}.{signature}"
    yield f"-1.{name}.{signature}"
    yield ""
    yield "."
    for index, char in enumerate(signature):
        flipped = "B" if char == "A" else "A"
        yield f"{expiry}.{name}.{signature[:index]}{flipped}{signature[index + 1 :]}"


def test_a_session_cookie_is_refused_once_changed_expired_or_signed_otherwise(
    credentials: Credentials,
) -> None:
    made = sessions(credentials).issue(credentials.users["alice"])
    assert sessions(credentials).user_of(made).name == "alice"
    for value in tampered(made, "bob"):
        assert sessions(credentials).user_of(value) is None, value
    assert sessions(credentials, now=1e9 + 3600).user_of(made) is None
    assert sessions(credentials, secret="another secret, just as long as it").user_of(made) is None
    assert sessions(credentials, secret=None).user_of(made) is None
    new_password = Credentials((), parse_users(f"alice:{hash_password(PASSWORD)}"))
    assert sessions(new_password).user_of(made) is None


def test_failed_logins_are_throttled_per_client_and_age_out() -> None:
    now = [0.0]
    throttle = Throttle(clock=lambda: now[0])
    for _ in range(FAILURES):
        assert throttle.wait_s("203.0.113.1") == 0
        throttle.failed("203.0.113.1")
    assert 0 < throttle.wait_s("203.0.113.1") <= WINDOW_S + 1
    assert throttle.wait_s("203.0.113.2") == 0
    now[0] = WINDOW_S + 1
    assert throttle.wait_s("203.0.113.1") == 0


@pytest.mark.parametrize(
    "target",
    [
        "//attacker.example/",
        "/\\attacker.example",
        "https://attacker.example/",
        "javascript:alert(1)",
        "/%0d%0aSet-Cookie:x=1",
        "/\r\nLocation: https://attacker.example",
        "\\\\attacker.example",
        "attacker.example",
        "/login?next=//attacker.example",
        "/logout",
        "",
        None,
    ],
)
def test_after_a_login_the_way_on_never_leaves_the_site(target: str | None) -> None:
    landed = safe_next(target)
    assert landed.startswith("/")
    assert not landed.startswith(("//", "/\\", LOGIN, LOGOUT))
    assert not any(c in landed for c in "\r\n\\")


# --- every route the app serves, anonymously ----------------------------------


@pytest.fixture(scope="module")
def other_app(model_path: Path) -> FastAPI:
    """The app in this process, with the same keys and users but another session secret."""
    from classifier.model import Classifier
    from service.api import build_api
    from service.page import build_demo, mount

    settings = Settings(api_keys=API_KEYS, users=USERS, session_secret="o" * 40)
    classifier = Classifier(model_path, warm=False)
    return mount(build_api(classifier), build_demo(classifier, []), settings)


def served_routes(routes: list[Any], prefix: str = "") -> Iterator[tuple[str, str]]:
    """``(method, path template)`` of every route, mounted apps' and included routers' too."""
    for route in routes:
        if hasattr(route, "effective_candidates"):  # FastAPI's included router
            yield from served_routes(route.effective_candidates(), prefix)
            yield from served_routes(route.effective_low_priority_routes(), prefix)
        elif hasattr(route, "app") and hasattr(route, "routes") and not hasattr(route, "methods"):
            mounted = route.routes or [None]  # a mount with no router (static files)
            if mounted == [None]:
                yield "GET", f"{prefix}{route.path}/{{path:path}}"
            else:
                yield from served_routes(route.routes, prefix + route.path)
        elif getattr(route, "methods", None):
            for method in route.methods:
                yield method, prefix + route.path
        else:  # a websocket route
            yield "WEBSOCKET", prefix + route.path


def concrete(template: str) -> str:
    """A path the template matches; a path parameter names a file no client may read."""
    return re.sub(r"\{[^}]*\}", lambda m: "etc/passwd" if ":path" in m[0] else "x", template)


class Watch:
    """Records the files opened in this process while it is on (an audit hook)."""

    def __init__(self) -> None:
        self.on = threading.Event()
        self.opened: list[str] = []
        sys.addaudithook(self._hook)

    def _hook(self, event: str, args: tuple) -> None:
        if event == "open" and self.on.is_set():
            self.opened.append(str(args[0]))


WATCH = Watch()


async def anonymous(app: FastAPI, method: str, path: str) -> tuple[int, dict, bool]:
    """``method path`` with a body and no credentials: the status, headers, and whether any
    of the body was read."""
    read = False
    sent: list[dict] = []

    async def receive() -> dict:
        nonlocal read
        read = True
        return {"type": "http.request", "body": b'{"data": []}', "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {
        "type": "websocket" if method == "WEBSOCKET" else "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"testserver"), (b"content-type", b"application/json")],
        "client": ("203.0.113.9", 5000),
        "server": ("testserver", 80),
    }
    await app(scope, receive, send)
    if method == "WEBSOCKET":
        return (401 if sent == [{"type": "websocket.close", "code": 1008}] else 0), {}, read
    start = sent[0]
    return start["status"], {k.decode(): v.decode() for k, v in start["headers"]}, read


def test_every_route_the_app_serves_is_open_by_name_or_refused_unread(other_app: FastAPI) -> None:
    """From the app's own router, Gradio's mounted routes included: a route added later is
    refused too, until ``OPEN`` names it."""
    routes = sorted(set(served_routes(other_app.routes)))
    templates = {template for _, template in routes}
    assert templates >= ISSUE_TEMPLATES
    assert templates >= OPEN  # the allow-list names routes that exist
    checked = 0
    for method, template in routes:
        if template in OPEN or template in (LOGIN, LOGOUT):
            continue
        WATCH.on.set()
        try:
            status, headers, read = asyncio.run(anonymous(other_app, method, concrete(template)))
        finally:
            WATCH.on.clear()
        assert (status, read) == (401, False), (method, template, status)
        assert WATCH.opened == [], (method, template)
        if method != "WEBSOCKET":
            assert headers["www-authenticate"].startswith("Bearer")
            assert headers["x-content-type-options"] == "nosniff"
        checked += 1
    assert checked > 50


# --- two dynos with the same settings -----------------------------------------


@pytest.fixture(scope="module")
def dynos(model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Instance]]:
    folder = tmp_path_factory.mktemp("access")
    instances = [
        launch(model_path, folder / f"web.{n}.log", DYNO=f"web.{n}", **PRIVATE) for n in (1, 2)
    ]
    try:
        for instance in instances:
            wait_until_ready(instance)
        yield instances
    finally:
        for instance in instances:
            stop(instance)


@pytest.fixture(scope="module")
def web1(dynos: list[Instance]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=dynos[0].url, timeout=60) as client:
        yield client


def test_health_checks_stay_open(web1: httpx.Client) -> None:
    assert web1.get("healthz").status_code == 200
    assert web1.get("readyz").json()["status"] == "ready"


@pytest.mark.parametrize(("method", "path"), ISSUE_ROUTES)
def test_the_issues_routes_refuse_an_anonymous_caller(
    web1: httpx.Client, method: str, path: str
) -> None:
    response = web1.request(method, path, content=b"{}")
    assert response.status_code == 401, response.text
    assert response.json() == {"error": response.json()["error"]}
    assert "Bearer" in response.headers["www-authenticate"]
    assert "root:" not in response.text


@contextmanager
def calling_as(instance: Instance, authorization: str) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=instance.url, headers={"Authorization": authorization}, timeout=60
    ) as client:
        yield client


def test_a_key_classifies_and_its_name_is_on_the_log_line_and_the_counter(
    dynos: list[Instance],
) -> None:
    with calling_as(dynos[0], f"Bearer {KEY}") as ci:
        counted = {"caller": "ci", "route": "classify", "outcome": "ok"}
        before = metric(ci, "classifier_requests_total", **counted)
        response = classify(ci, CAT_PHOTO)
        assert response.status_code == 200, response.text
        assert len(response.json()["predictions"]) == 5
        rid = "d0c5a11f-0000-4000-8000-00000000c1c1"
        broken = ci.post(  # logged: "Unreadable multipart form"
            "classify",
            content=b"not a form",
            headers={"Content-Type": "multipart/form-data; boundary=b", "X-Request-ID": rid},
        )
        assert broken.status_code == 400
        assert metric(ci, "classifier_requests_total", **counted) == before + 1
    assert f"[{rid} ci]" in dynos[0].log.read_text()


WRONG_AUTHORIZATIONS = {
    **{
        f"near miss {number}": f"Bearer {guess}"
        for number, guess in enumerate(near_misses(KEY))
        if guess.strip() not in (KEY, "")
    },
    "Basic": f"Basic {KEY}",
    "no scheme": KEY,
    "no key": "Bearer",
    "its hash": f"Bearer {hash_key(KEY)}",
    "the setting": f"Bearer {API_KEYS}",
}


@pytest.mark.parametrize(
    "authorization", WRONG_AUTHORIZATIONS.values(), ids=WRONG_AUTHORIZATIONS.keys()
)
def test_a_wrong_key_is_a_401(dynos: list[Instance], authorization: str) -> None:
    with calling_as(dynos[0], authorization) as stranger:
        response = classify(stranger, CAT_PHOTO)
    assert response.status_code == 401
    assert "error" in response.json()


def test_a_key_reaches_only_its_scopes_and_the_metrics_token_still_works(
    dynos: list[Instance],
) -> None:
    with calling_as(dynos[0], f"Bearer {METRICS_KEY}") as scraper:
        assert classify(scraper, CAT_PHOTO).status_code == 403
        assert scraper.get("docs").status_code == 403
        assert scraper.get("metrics").status_code == 200
    with calling_as(dynos[0], f"Bearer {METRICS_TOKEN}") as token:
        assert token.get("metrics").status_code == 200
        assert classify(token, CAT_PHOTO).status_code == 403
    with calling_as(dynos[0], f"Bearer {KEY}") as ci:
        assert ci.get("metrics").status_code == 200


def test_gradio_client_works_with_the_key_and_not_without(dynos: list[Instance]) -> None:
    client = Client(dynos[0].url, headers=BEARER, verbose=False)
    result = client.predict(handle_file(str(CAT_PHOTO)), api_name="/predict")
    assert len(result["confidences"]) == 5
    with pytest.raises(Exception, match="credentials"):
        Client(dynos[0].url, verbose=False)


def log_in(client: httpx.Client, password: str = PASSWORD, **headers: str) -> httpx.Response:
    return client.post(
        "login",
        data={"username": "alice", "password": password, "next": "/docs"},
        headers=headers,
        follow_redirects=False,
    )


def test_a_browser_is_sent_to_the_login_and_back(web1: httpx.Client) -> None:
    page = web1.get("", headers={"Accept": "text/html"}, follow_redirects=False)
    assert page.status_code == 303
    assert page.headers["location"] == LOGIN
    deep = web1.get("docs?x=1", headers={"Accept": "text/html"}, follow_redirects=False)
    assert deep.headers["location"] == "/login?next=%2Fdocs%3Fx%3D1"
    form = web1.get(deep.headers["location"])
    assert form.status_code == 200
    assert 'name="password"' in form.text
    assert "frame-ancestors 'none'" in form.headers["content-security-policy"]


def test_the_login_form_echoes_no_markup(web1: httpx.Client) -> None:
    markup = '"><script>alert(1)</script>'
    response = web1.post(
        "login",
        data={"username": markup, "password": "not the password", "next": markup},
        headers={"X-Forwarded-For": "203.0.113.70"},
    )
    assert response.status_code == 401
    assert "<script>" not in response.text
    assert "&lt;script&gt;" in response.text


def test_a_login_made_on_one_dyno_holds_on_the_other_and_not_under_another_secret(
    dynos: list[Instance], other_app: FastAPI
) -> None:
    with httpx.Client(base_url=dynos[0].url, timeout=60) as first:
        logged_in = log_in(first)
        assert logged_in.status_code == 303
        assert logged_in.headers["location"] == "/docs"
        cookie = logged_in.headers["set-cookie"]
        assert "HttpOnly" in cookie
        assert "samesite=lax" in cookie.lower()
        assert "Max-Age=43200" in cookie
        assert "Secure" not in cookie  # plain HTTP here
        assert first.get("docs").status_code == 200
    value = first.cookies[COOKIE]
    with httpx.Client(base_url=dynos[1].url, timeout=60, cookies={COOKIE: value}) as second:
        assert second.get("docs").status_code == 200
        assert second.get("config").status_code == 200
    other = TestClient(other_app, cookies={COOKIE: value})
    assert other.get("docs").status_code == 401


def test_behind_the_routers_https_the_cookie_is_secure(web1: httpx.Client) -> None:
    response = log_in(web1, **{"X-Forwarded-Proto": "https", "X-Forwarded-For": "203.0.113.60"})
    assert response.status_code == 303
    assert "Secure" in response.headers["set-cookie"]


def test_logging_out_ends_the_session_in_the_browser(dynos: list[Instance]) -> None:
    with httpx.Client(base_url=dynos[0].url, timeout=60) as browser:
        log_in(browser)
        assert browser.get("docs").status_code == 200
        out = browser.get("logout", follow_redirects=False)
        assert out.status_code == 303
        assert out.headers["location"] == LOGIN
        assert COOKIE not in browser.cookies
        assert browser.get("docs").status_code == 401


def test_guessing_passwords_is_throttled_per_client(web1: httpx.Client) -> None:
    guesser = {"X-Forwarded-For": "203.0.113.66"}
    for _ in range(FAILURES):
        assert log_in(web1, "wrong guess", **guesser).status_code == 401
    refused = log_in(web1, PASSWORD, **guesser)  # even the right one: it is not checked
    assert refused.status_code == 429
    assert 0 < int(refused.headers["retry-after"]) <= WINDOW_S + 1
    assert log_in(web1, PASSWORD, **{"X-Forwarded-For": "203.0.113.67"}).status_code == 303


def test_no_secret_reaches_the_log(dynos: list[Instance], web1: httpx.Client) -> None:
    """Not even a password typed in the name's box."""
    mistaken = {"username": PASSWORD, "password": "alice"}
    assert (
        web1.post("login", data=mistaken, headers={"X-Forwarded-For": "203.0.113.71"}).status_code
        == 401
    )
    for instance in dynos:
        log = instance.log.read_text()
        for secret in (KEY, METRICS_KEY, METRICS_TOKEN, PASSWORD, SECRET):
            assert secret not in log
