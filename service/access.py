"""Who may do what, and what a web page may not make the service do.

Roles: a key of VAE_API_KEYS is a reader (operations, model facts); a key of VAE_ADMIN_KEYS is an admin (also
changes what is served: V2 repository load, unload, pin). With keys configured, a missing or unknown key is 401 and
a reader asking for an admin's action 403 (over gRPC, UNAUTHENTICATED and PERMISSION_DENIED: Access.check is the one
rule for every face, given the key and the client's address). With no keys at all (a laptop) every client is a
reader, and repository changes come only from loopback clients unless VAE_ALLOW_REMOTE_CHANGES says otherwise.

Browser-borne requests: a page the user visits can send "simple" cross-origin POSTs (text/plain, form types, or a
typeless blob: no preflight) to a service on 127.0.0.1, and with DNS rebinding make them same-origin. So, before any
route runs (BrowserGuard): a Host that is neither loopback nor listed is refused while the service is bound to a
loopback address (or when VAE_ALLOWED_HOSTS is set), and a POST carrying an Origin other than the service's own or
one of VAE_CORS_ORIGINS is refused. Request bodies of other media types than JSON (and V2's binary form) get 415 in
plumbing.read_body. Programs (curl, httpx, tritonclient) send no Origin and are not affected.
"""

from __future__ import annotations

import enum
import hmac
import ipaddress
import logging
import os
from collections.abc import Sequence
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from service.errors import Forbidden, HostNotAllowed, ServiceError, Unauthorized, error_response
from service.settings import ServiceSettings

log = logging.getLogger(__name__)
LOOPBACK_NAMES = frozenset({"localhost", "localhost.", "ip6-localhost"})
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# Read by machines that name the pod by its IP address (kubelet's probes, Prometheus scraping the pod): a GET of
# them whose Host is an IP address is answered whatever VAE_ALLOWED_HOSTS says (Kubernetes would otherwise restart
# every pod for failing its probes). A DNS-rebinding page always sends a name, so it is still refused.
PROBE_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/v2/health/live", "/v2/health/ready"})
KEY_HINT = "Authorization: Bearer <key> or X-API-Key"


class Role(enum.IntEnum):
    READER = 1
    ADMIN = 2


ROLE_KEYS = {Role.READER: "VAE_API_KEYS or VAE_ADMIN_KEYS", Role.ADMIN: "VAE_ADMIN_KEYS"}
UVICORN_FORWARDED_ALLOW_IPS = "127.0.0.1,::1"  # uvicorn's proxies trusted when FORWARDED_ALLOW_IPS is unset


class ForwardedFor:
    """The client address a request is judged by when a trusted proxy passed it on: uvicorn's rule, from uvicorn's
    setting (FORWARDED_ALLOW_IPS: addresses and networks, "*" for any peer), so that a gRPC call
    (service/grpc_face.py) gets the address its REST twin gets from uvicorn's ProxyHeadersMiddleware. A peer that is
    not a trusted proxy is the client; behind one, the right-most X-Forwarded-For entry that is not a trusted proxy
    (the left-most when all are; the first with "*"). Without it a sidecar in the pod (Knative's queue-proxy)
    would make every gRPC caller a loopback client, whom a keyless service lets change the repository."""

    def __init__(self, trusted: str) -> None:
        self.any = trusted == "*"  # as uvicorn: only the whole setting "*" trusts every peer
        self.addresses: set[ipaddress.IPv4Address | ipaddress.IPv6Address] = set()
        self.networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        self.names: set[str] = set()  # entries that are neither (uvicorn compares them as text)
        for item in (part.strip() for part in trusted.split(",")):
            try:  # a network only with a "/" (and no host bits set), else one address, else text
                if "/" in item:
                    self.networks.append(ipaddress.ip_network(item))
                else:
                    self.addresses.add(ipaddress.ip_address(item))
            except ValueError:
                self.names.add(item)

    @classmethod
    def from_env(cls) -> ForwardedFor:
        return cls(os.environ.get("FORWARDED_ALLOW_IPS", UVICORN_FORWARDED_ALLOW_IPS))

    def trusts(self, host: str) -> bool:
        if self.any:
            return True
        if not host:
            return False
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return host in self.names
        return address in self.addresses or any(address in network for network in self.networks)

    def client(self, peer: str, forwarded_for: Sequence[str]) -> str:
        """The client behind `peer` given the X-Forwarded-For values it sent (each a comma-separated list)."""
        if not forwarded_for or not self.trusts(peer):
            return peer
        hosts = [forwarded_host(item) for item in ",".join(forwarded_for).split(",")]
        if not self.any:
            untrusted = [host for host in reversed(hosts) if not self.trusts(host)]
            if untrusted:
                return untrusted[0] or peer
        return hosts[0] or peer


def forwarded_host(item: str) -> str:
    """The address of an X-Forwarded-For entry without its port, as uvicorn reads it: "1.2.3.4:80" -> "1.2.3.4",
    "[::1]:80" and "[::1]" -> "::1"; anything it cannot split is kept whole."""
    item = item.strip()
    if item.startswith("["):
        end = item.find("]")
        if end == -1 or not (item[end + 1 :] == "" or item[end + 1 :].startswith(":")):
            return item
        return item[1:end]
    if item.count(":") == 1:
        host, port = item.rsplit(":", 1)
        try:
            int(port)  # uvicorn's test of a port, whatever int() takes
        except ValueError:
            return item
        return host
    return item


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 (bracketed or not), or a loopback name; anything else (0.0.0.0, a name, a LAN address) is
    not."""
    host = host.strip().lower().removeprefix("[").removesuffix("]")
    if host in LOOPBACK_NAMES or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_name(header: str) -> str:
    """The name or address of a Host header, without its port ("[::1]:8000" -> "[::1]", "a.b:80" -> "a.b")."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[: header.find("]") + 1] if "]" in header else header
    return header.rpartition(":")[0] if header.count(":") == 1 else header


def _is_address(host: bytes) -> bool:
    name = host_name(host.decode("latin-1")).strip("[]")
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


class Access:
    """The keys of both roles and the rules for a keyless service; one per app (app.state.access)."""

    def __init__(self, settings: ServiceSettings) -> None:
        self._readers = [k.encode() for k in settings.api_keys]
        self._admins = [k.encode() for k in settings.admin_keys]
        self.keys = bool(self._readers or self._admins)
        self.allow_remote_changes = settings.allow_remote_changes
        self.page_origins = frozenset(settings.cors_origins)  # web pages allowed to call the API (CORS)
        # whether BrowserGuard checks the Host: then a page of the request's own origin is the service's own page
        self.hosts_checked = BrowserGuard.hosts_for(settings) is not None

    def describe(self) -> str:
        """What the configured keys mean, for the start-up log."""
        if not self.keys:
            remote = "from any client" if self.allow_remote_changes else "only from loopback clients"
            return (
                "no API keys (VAE_API_KEYS, VAE_ADMIN_KEYS): every client that can reach the service may call the "
                f"operations and read model facts; repository changes (load, unload) are accepted {remote}"
            )
        admins = f"{len(self._admins)} admin key(s)" if self._admins else "no admin key (nobody may change what serves)"
        return f"{len(self._readers)} reader key(s), {admins}; requests without a valid key get 401"

    def role(self, request: Request) -> Role | None:
        """The role of the request's key (None: no key, or not a configured one); READER for all when keyless."""
        return self.role_of(request_key(request))

    def role_of(self, given: str) -> Role | None:
        """The role of a key as the client sent it ("" for none); READER for all when keyless."""
        if not self.keys:
            return Role.READER
        key = given.encode()
        if not key:
            return None
        # compare_digest against every key: the time taken does not reveal which key (or how much of it) matched
        admin = any([hmac.compare_digest(key, k) for k in self._admins])
        reader = any([hmac.compare_digest(key, k) for k in self._readers])
        return Role.ADMIN if admin else Role.READER if reader else None

    def is_admin(self, request: Request) -> bool:
        """Whether the request may read what the admin role may (the validation scores), without refusing it.
        Keyless, while every Host is answered, a loopback client naming its service by another name may be a web
        page under a name rebound to it (DNS rebinding; a same-origin GET carries no Origin): only a loopback name
        or an address reads as admin."""
        if not self.keys and not self.hosts_checked:
            host = request.headers.get("host", "")
            if not (_is_address(host.encode("latin-1")) or is_loopback(host_name(host))):
                return False
        try:
            return self.require(request, Role.ADMIN) is Role.ADMIN
        except (Unauthorized, Forbidden):
            return False

    def require(self, request: Request, needed: Role) -> Role:
        """The request's role when it is at least `needed`; else Unauthorized (no valid key) or Forbidden."""
        origin = request.headers.get("origin")
        if needed is Role.ADMIN and not self.keys and origin is not None and not self._page_may_change(request, origin):
            raise Forbidden(
                f"with no API keys configured, a repository change from a web page (origin {origin[:80]!r}) is "
                "refused while the service answers any Host; configure VAE_ADMIN_KEYS, set VAE_ALLOWED_HOSTS, or "
                "list the page's origin in VAE_CORS_ORIGINS"
            )
        client = request.client.host if request.client else ""
        return self.check(request_key(request), client, needed, through_proxy="x-forwarded-for" in request.headers)

    def _page_may_change(self, request: Request, origin: str) -> bool:
        """Whether a keyless repository change from the web page of `origin` is the service's own page's (/docs) or a
        listed one's. Keyless, a loopback client may change what is served, and bound beyond loopback without
        VAE_ALLOWED_HOSTS every Host is answered: a page the user visits can then reach the service under a name
        of its own rebound to it (DNS rebinding), and its Origin matches that Host."""
        if origin in self.page_origins:
            return True
        own = urlsplit(origin).netloc.lower() == request.headers.get("host", "").strip().lower()
        return own and self.hosts_checked

    def check(self, key: str, client: str, needed: Role, through_proxy: bool = False) -> Role:
        """The role of `key` (as sent, "" for none) from the client at address `client` when it is at least
        `needed`; else Unauthorized (no valid key) or Forbidden. The one rule of every face (HTTP and gRPC).
        `through_proxy`: the call names a client in X-Forwarded-For. Keyless, such a call is never a loopback
        client's: a proxy in the same pod or host (Istio's sidecar forwards from 127.0.0.6) would otherwise make
        every caller behind it one."""
        role = self.role_of(key)
        if role is None:
            raise Unauthorized(f"a valid API key is required ({KEY_HINT})")
        if needed is Role.ADMIN and not self.keys:
            if not (self.allow_remote_changes or (is_loopback(client) and not through_proxy)):
                raise Forbidden(
                    "with no API keys configured, repository changes are accepted from loopback clients only, "
                    "not through a proxy (X-Forwarded-For); configure VAE_ADMIN_KEYS (or set "
                    "VAE_ALLOW_REMOTE_CHANGES=true on a trusted network)"
                )
            return Role.ADMIN
        if role < needed:
            raise Forbidden(f"this needs the {needed.name.lower()} role (a key of {ROLE_KEYS[needed]})")
        return role


def bearer_key(authorization: str, api_key: str) -> str:
    """The key a client sent: `Authorization: Bearer <key>`, else `X-API-Key` (HTTP headers or gRPC metadata)."""
    return authorization[7:].strip() if authorization[:7].lower() == "bearer " else api_key


def request_key(request: Request) -> str:
    headers = request.headers
    return bearer_key(headers.get("authorization", ""), headers.get("x-api-key", ""))


async def require_reader(request: Request) -> None:
    # async on purpose: FastAPI runs a sync dependency on its thread pool, a thread hop on every request
    access: Access = request.app.state.access
    if access.keys:
        access.require(request, Role.READER)


async def require_admin(request: Request) -> None:
    access: Access = request.app.state.access
    access.require(request, Role.ADMIN)


class BrowserGuard:
    """ASGI middleware refusing what only a browser tricked by a web page sends: a Host outside the served names
    (DNS rebinding) and a POST from another origin's page."""

    def __init__(self, app: ASGIApp, hosts: frozenset[str] | None, origins: frozenset[str]) -> None:
        self.app = app
        self.hosts = hosts  # None: any Host; else the names served besides loopback ones
        self.origins = origins
        # Host header -> served or not: clients send the same few, and parsing one costs ~3 us of every request
        self._verdicts: dict[bytes, bool] = {}

    @classmethod
    def hosts_for(cls, settings: ServiceSettings) -> frozenset[str] | None:
        """The Host names to accept besides loopback ones, or None for any: a loopback-bound service serves
        loopback names only unless listed; a service bound elsewhere any Host unless VAE_ALLOWED_HOSTS is set."""
        listed = frozenset(h.strip().lower() for h in settings.allowed_hosts)
        if "*" in listed or (not listed and not is_loopback(settings.host)):
            return None
        return listed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and (refusal := self._refusal(scope)) is not None:
            await error_response(scope["path"], refusal)(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _refusal(self, scope: Scope) -> ServiceError | None:
        host, origin, hosts, origins = b"", None, 0, 0
        for key, value in scope["headers"]:
            if key == b"host":
                host, hosts = value, hosts + 1
            elif key == b"origin":
                origin, origins = value.decode("latin-1"), origins + 1
        if hosts > 1 or origins > 1:  # which one counts would differ here and in the app: none does (RFC 9110)
            return HostNotAllowed(f"the request has {hosts} Host and {origins} Origin headers; send each at most once")
        # a probe by the pod's address, or with no Host at all (HTTP/1.0, as a load balancer's health check sends):
        # a browser's page, rebinding a name, always sends that name
        probe = scope["path"] in PROBE_PATHS and scope["method"] in SAFE_METHODS and (not hosts or _is_address(host))
        if self.hosts is not None and not probe and not self._served(host):
            return HostNotAllowed(
                f"Host {host_name(host.decode('latin-1'))[:80]!r} is not served here; this service answers "
                "loopback names"
                + (f" and {sorted(self.hosts)}" if self.hosts else "")
                + " (VAE_ALLOWED_HOSTS lists others)"
            )
        if origin is not None and scope["method"] not in SAFE_METHODS and origin not in self.origins:
            own = urlsplit(origin).netloc.lower() == host.decode("latin-1").strip().lower()
            if not own:
                return Forbidden(
                    f"a {scope['method']} from the web page of origin {origin[:80]!r} is refused; VAE_CORS_ORIGINS "
                    "lists the origins whose pages may call this API"
                )
        return None

    def _served(self, host: bytes) -> bool:
        verdict = self._verdicts.get(host)
        if verdict is None:
            assert self.hosts is not None
            name = host_name(host.decode("latin-1"))
            verdict = is_loopback(name) or name in self.hosts
            if len(self._verdicts) >= 256:  # made-up Host headers cannot grow it without bound
                self._verdicts.clear()
            self._verdicts[host] = verdict
        return verdict
