"""Keep credentials out of what people and logs see (pure; no I/O).

One place decides what a secret looks like, so every banner, log line and recorded error masks the
same way:

* :func:`mask_url` hides the password of a URL (``redis://:pw@h`` → ``redis://:***@h``), secret
  query parameters (``?password=``, ``sslpassword=``, ``token=``, ``key=``…) and a Discord webhook's
  token (``/api/webhooks/<id>/<token>``);
* :func:`mask_text` applies that to every URL inside free text, and also hides ``name=value`` /
  ``name: value`` / ``--name value`` pairs whose name says secret (password, token, api key,
  secret, authorization…), ``Bearer`` credentials and long random-looking strings;
* :func:`clean_output` turns a child's output into something safe to record: no ANSI sequences or
  control characters, secrets masked, bounded length.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

MASK = "***"

#: A name that says its value is a credential (in URLs' queries, ``k=v`` pairs and CLI flags).
_SECRET_NAME = (
    r"(?:[A-Za-z0-9_.-]*?(?:pass(?:word|wd)?|pwd|secret|token|api[_-]?key|apikey|access[_-]?key"
    r"|private[_-]?key|auth(?:orization)?|credentials?|signature)[A-Za-z0-9_.-]*|key)"
)
_SECRET_NAME_RE = re.compile(rf"^{_SECRET_NAME}$", re.IGNORECASE)

_URL_RE = re.compile(r"\b[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>|]+")
# name=value, name: value, "name": "value", --name=value; and --name value (flags only)
_PAIR_RE = re.compile(
    rf"(?P<name>(?<![A-Za-z0-9])(?:--?)?{_SECRET_NAME})(?P<sep>\"?\s*[=:]\s*\"?)(?P<value>[^\s\"',;&|]+)",
    re.IGNORECASE,
)
_FLAG_RE = re.compile(
    rf"(?P<name>(?<![A-Za-z0-9-])--?{_SECRET_NAME})(?P<sep>\s+[\"']?)(?P<value>[^\s\"',;&|-][^\s\"',;&|]*)",
    re.IGNORECASE,
)
_BEARER_RE = re.compile(r"\b(Bearer|Basic|Token)\s+[A-Za-z0-9._~+/=-]{6,}", re.IGNORECASE)
# Long runs of letters, digits and token punctuation that mix letters and digits: API keys, JWTs,
# hex digests. Word-sized text, numbers and paths do not match.
_TOKENISH_RE = re.compile(
    r"(?<![A-Za-z0-9_/.-])(?=[A-Za-z0-9_.+/=-]*\d)(?=[A-Za-z0-9_.+/=-]*[A-Za-z])"
    r"[A-Za-z0-9_+=-][A-Za-z0-9_.+/=-]{23,}"
)
_ANSI_RE = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-Z\\-_]")
_CONTROL_RE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_WEBHOOK_RE = re.compile(r"(/api/(?:v\d+/)?webhooks/\d+/)[^/?#]+")


def is_secret_name(name: str) -> bool:
    """True for a variable, parameter or flag name that says its value is a credential."""
    return bool(_SECRET_NAME_RE.match(name.lstrip("-")))


def mask_url(url: str) -> str:
    """``url`` with its password, secret query parameters and webhook token replaced by ``***``.

    Never raises: a string that does not parse as a URL comes back from :func:`mask_text`.
    """
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if "@" in netloc:
            userinfo, _, hostport = netloc.rpartition("@")
            user, colon, _password = userinfo.partition(":")
            netloc = f"{user}:{MASK}@{hostport}" if colon else f"{userinfo}@{hostport}"
            if not colon and parts.scheme.startswith(("redis", "rediss")):
                netloc = f"{MASK}@{hostport}"  # redis://secret@host: a bare userinfo is the password
        query = parts.query
        if query:
            pairs = parse_qsl(query, keep_blank_values=True)
            if any(is_secret_name(k) for k, _ in pairs):
                query = urlencode([(k, MASK if is_secret_name(k) else v) for k, v in pairs], safe="*/:")
        path = _WEBHOOK_RE.sub(rf"\g<1>{MASK}", parts.path)
        return urlunsplit((parts.scheme, netloc, path, query, parts.fragment))
    except ValueError:
        return mask_text(url, urls=False)


def _mask_pair(match: re.Match[str]) -> str:
    if match.group("value") == MASK:
        return match.group(0)
    return f"{match.group('name')}{match.group('sep')}{MASK}"


def mask_text(text: str, *, urls: bool = True, tokens: bool = True) -> str:
    """Free text with every credential it visibly carries masked (see the module docstring).

    ``tokens=False`` keeps long random-looking words (workflow ids in Perseus' own messages); named
    secrets, URLs and ``Bearer`` credentials are masked regardless.
    """
    if urls:
        text = _URL_RE.sub(lambda m: mask_url(m.group(0)), text)
    text = _BEARER_RE.sub(lambda m: f"{m.group(1)} {MASK}", text)
    text = _PAIR_RE.sub(_mask_pair, text)
    text = _FLAG_RE.sub(_mask_pair, text)
    return _TOKENISH_RE.sub(MASK, text) if tokens else text


def mask_argv(argv: list[str]) -> str:
    """A command line for a log line: the value after a secret-named flag and every secret-looking
    argument masked."""
    shown: list[str] = []
    hide_next = False
    for arg in argv:
        if hide_next:
            shown.append(MASK)
            hide_next = False
            continue
        if arg.startswith("-") and "=" not in arg and is_secret_name(arg):
            hide_next = True
            shown.append(arg)
            continue
        shown.append(mask_text(arg))
    return " ".join(shown)


def strip_control(text: str) -> str:
    """Without ANSI escape sequences and control characters (tabs and newlines become spaces)."""
    text = _ANSI_RE.sub("", text)
    return _CONTROL_RE.sub("", text.replace("\t", " ").replace("\n", " "))


def clean_output(text: str, limit: int = 300) -> str:
    """Child output made safe to record and show: no control characters, secrets masked, at most
    ``limit`` characters (the *end* is kept: the last lines say why it died)."""
    text = mask_text(strip_control(text)).strip()
    if len(text) > limit:
        text = "…" + text[-(limit - 1) :]
    return text
