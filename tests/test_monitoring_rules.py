"""deploy/monitoring/: the PrometheusRule's alerts and the Grafana dashboard query only metrics and labels that a real
vae-serve puts on /metrics (with one worker, and with several: prometheus_client's multiprocess mode), each alert
carries what Alertmanager routes on and what the on-call reads, and the dashboard holds together."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.service.conftest import vae_serve

ROOT = Path(__file__).resolve().parents[1]
MONITORING = ROOT / "deploy" / "monitoring"
MODELS = ("digits-diag", "digits-full")  # the serving repository's
# labels Prometheus itself attaches to every scraped series (job, instance; namespace and pod from Kubernetes)
TARGET_LABELS = {"job", "instance", "namespace", "pod"}
GRAFANA_BUILTINS = {"__rate_interval", "__interval", "__range", "__range_s", "__interval_ms"}
SEVERITIES = {"critical", "warning", "info"}
DURATION = re.compile(r"(?:\d+(?:ms|s|m|h|d|w|y))+")
# what each alert the service needs is about: metrics its expression must query
ALERTED = [
    {"vae_drift_alarm"},
    {"vae_flagged_share_p_value", "vae_drift_window_filling"},
    {"vae_requests_total"},
    {"vae_request_seconds_bucket"},
    {"vae_bundles_refused"},
]
CHARTED = {
    "vae_requests_total",
    "vae_request_seconds_bucket",
    "vae_scored_rows_total",
    "vae_flagged_rows_total",
    "vae_flagged_share",
    "vae_flagged_share_expected",
    "vae_drift_p_value",
    "vae_drift_alarm",
    "vae_score_p_value_bucket",
    "vae_drift_window_rows",
}

# A small PromQL tokenizer: enough to say which series an expression selects and which labels it needs on them.
STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
COMMENT = re.compile(r"#[^\n]*")
IDENT = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
MATCHER = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)")
GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^()]*)\)")
LABEL_VALUES = re.compile(r"label_values\((.*),\s*([A-Za-z_][A-Za-z0-9_]*)\s*\)", re.S)
TEMPLATE_QUERY = re.compile(r'printf\s+"((?:[^"\\]|\\.)*)"[^}]*\|\s*query')
TEMPLATE_LABEL = re.compile(r"\$labels\.([A-Za-z_][A-Za-z0-9_]*)")
VARIABLE = re.compile(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)")


def _blank(expr: str) -> str:
    """The expression with its string literals emptied and its comments dropped (label values are no names)."""
    return COMMENT.sub("", STRING.sub('""', expr))


def _closing(code: str, opening: int) -> int:
    depth = 0
    for i in range(opening, len(code)):
        depth += {"(": 1, ")": -1}.get(code[i], 0)
        if depth == 0:
            return i
    raise ValueError(f"unbalanced parentheses in {code!r}")


def _opening(code: str, closing: int) -> int:
    depth = 0
    for i in range(closing, -1, -1):
        depth += {")": 1, "(": -1}.get(code[i], 0)
        if depth == 0:
            return i
    raise ValueError(f"unbalanced parentheses in {code!r}")


def _enclosing(code: str, at: int) -> tuple[int, int]:
    """The innermost parentheses around position `at`, or the whole expression."""
    depth = 0
    for i in range(at - 1, -1, -1):
        depth += {")": 1, "(": -1}.get(code[i], 0)
        if depth < 0:
            return i, _closing(code, i)
    return 0, len(code)


def _scope(code: str, clause: re.Match[str]) -> tuple[int, int]:
    """Where a grouping clause's labels must be: an aggregation's argument, given after the clause
    (`sum by (l) (x)`) or before it (`sum(x) by (l)`); a binary operator's operands (on, ignoring, group_left,
    group_right): taken as everything in the parentheses around it, which asks a little more than PromQL does."""
    if clause[1] in ("by", "without"):
        after = code[clause.end() :].lstrip()
        if after.startswith("("):
            start = len(code) - len(after)
            return start, _closing(code, start)
        before = code[: clause.start()].rstrip()
        if before.endswith(")"):
            return _opening(code, len(before) - 1), len(before)
        raise ValueError(f"no aggregation argument around {clause[0]!r} in {code!r}")
    return _enclosing(code, clause.start())


def queried(expr: str) -> dict[str, set[str]]:
    """Series name -> the label names the expression needs on it: those of its matchers, and those of each by,
    without, on, ignoring, group_left and group_right clause whose scope holds it. Only vae_* names are series here
    (functions, keywords, Grafana's $variables and label names inside braces are not)."""
    code = _blank(expr)
    braces = [(m.start(), m.end()) for m in re.finditer(r"\{[^{}]*\}", code)]
    found: list[tuple[int, str]] = []
    needs: dict[str, set[str]] = {}
    for token in IDENT.finditer(code):
        name, at = token[0], token.start()
        if not name.startswith("vae_") or (at and code[at - 1] == "$") or any(a < at < b for a, b in braces):
            continue
        found.append((at, name))
        labels = needs.setdefault(name, set())
        rest = code[token.end() :].lstrip()
        if rest.startswith("{"):
            labels |= set(MATCHER.findall(rest[: rest.index("}")]))
    for clause in GROUPING.finditer(code):
        labels = {label.strip() for label in clause[2].split(",") if label.strip()}
        start, end = _scope(code, clause)
        for at, name in found:
            if start <= at < end:
                needs[name] |= labels
    return needs


def _merge(into: dict[str, set[str]], more: dict[str, set[str]]) -> None:
    for name, labels in more.items():
        into.setdefault(name, set()).update(labels)


AGGREGATION = re.compile(
    r"\b(sum|min|max|avg|group|stddev|stdvar|count|count_values|bottomk|topk|quantile)\s*"
    r"(?:(by|without)\s*\(([^()]*)\)\s*)?\("
)


def result_labels(expr: str, emitted: dict[str, set[str]]) -> set[str]:
    """The labels an expression's series may carry (what an alert's annotations and a panel's legend can show):
    those its outermost aggregations keep (by: its labels, shared by all of them; without: the rest; neither:
    none), or, with no aggregation, those every series it selects has, and Prometheus's target labels; less le
    under histogram_quantile. Approximate, as the tokenizer is, but never more than PromQL keeps."""
    code = _blank(expr)

    def depth(at: int) -> int:
        return code[:at].count("(") - code[:at].count(")")

    found = [(depth(m.start()), m) for m in AGGREGATION.finditer(code)]
    if found:
        top = min(d for d, _ in found)
        kept = []
        for d, m in found:
            if d != top:
                continue
            argument = code[m.end() - 1 : _closing(code, m.end() - 1) + 1]
            after = re.match(r"\s*(by|without)\s*\(([^()]*)\)", code[m.end() - 1 + len(argument) :])
            kind, labels = (m[2], m[3]) if m[2] else (after[1], after[2]) if after else (None, "")
            names = {label.strip() for label in labels.split(",") if label.strip()}
            if kind == "by":
                kept.append(names)
            elif kind == "without":
                inner = queried(argument)
                kept.append(set.intersection(*(emitted.get(n, set()) for n in inner)) - names if inner else set())
            else:
                kept.append(set())
        carried = set.intersection(*kept)
    else:
        selected = queried(expr)
        carried = set.intersection(*(emitted.get(n, set()) for n in selected)) | TARGET_LABELS if selected else set()
    if "histogram_quantile" in code:
        carried.discard("le")
    return carried


# The two files


def _rule_file() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((MONITORING / "prometheusrule.yaml").read_text())
    return loaded


def _rules() -> list[dict[str, Any]]:
    return [rule for group in _rule_file()["spec"]["groups"] for rule in group["rules"]]


def _dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    return loaded


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))  # a collapsed row holds its panels


def rule_queries() -> dict[str, set[str]]:
    """What the rules' expressions query, and their annotations' templates (`printf "<PromQL>" ... | query`)."""
    needs: dict[str, set[str]] = {}
    for rule in _rules():
        _merge(needs, queried(rule["expr"]))
        for text in rule["annotations"].values():
            for template in TEMPLATE_QUERY.findall(text):
                _merge(needs, queried(re.sub(r"%[qsvd]", '"x"', template)))
    return needs


def rule_mentions() -> set[str]:
    """Every vae_* name the annotations' text names (a metric family's or a series')."""
    texts = [text for rule in _rules() for text in rule["annotations"].values()]
    return {name for text in texts for name in re.findall(r"(?<![\w$])vae_[a-z_]+", text)}


def dashboard_queries() -> dict[str, set[str]]:
    needs: dict[str, set[str]] = {}
    dashboard = _dashboard()
    for panel in _panels(dashboard["panels"]):
        for target in panel.get("targets", []):
            _merge(needs, queried(target["expr"]))
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"] if isinstance(variable["query"], str) else variable["query"]["query"]
            if match := LABEL_VALUES.fullmatch(query.strip()):
                _merge(needs, queried(match[1]))
                for name in queried(match[1]):
                    needs[name].add(match[2])
            else:
                _merge(needs, queried(query))
    return needs


def _model_filtered() -> set[str]:
    """The dashboard's series filtered on its model variable."""
    names: set[str] = set()
    for panel in _panels(_dashboard()["panels"]):
        for target in panel.get("targets", []):
            names |= {m for m in re.findall(r'(vae_[a-z_]+)\{[^}]*model=~"\$\{?model\}?"', target["expr"])}
    return names


# The tokenizer, checked on its own


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("vae_bundles_refused > 0", {"vae_bundles_refused": set()}),
        (
            'histogram_quantile(0.99, sum by (endpoint, le) (rate(vae_request_seconds_bucket{endpoint!~"/m"}[5m])))',
            {"vae_request_seconds_bucket": {"endpoint", "le"}},
        ),
        (  # the aggregation's labels after its argument; a name inside a string is a label value
            'sum(rate(vae_requests_total{status=~"5..", endpoint="vae_x"}[$__rate_interval])) by (model)'
            " / sum(rate(vae_requests_total[5m]))",
            {"vae_requests_total": {"status", "endpoint", "model"}},
        ),
        (
            "max by (model) (vae_flagged_share_p_value and on (version) (vae_drift_window_filling == 0))"
            " + vector($level) # vae_not_a_series",
            {"vae_flagged_share_p_value": {"model", "version"}, "vae_drift_window_filling": {"model", "version"}},
        ),
        (
            "sum without (pid) (vae_queue_rows{graph='scorer'}) * on (model) group_left (covariance) vae_model_info",
            {"vae_queue_rows": {"pid", "graph", "model", "covariance"}, "vae_model_info": {"model", "covariance"}},
        ),
    ],
)
def test_the_tokenizer_finds_each_series_and_the_labels_it_needs(expr: str, expected: dict[str, set[str]]) -> None:
    assert queried(expr) == expected


@pytest.mark.parametrize(
    ("expr", "carried"),
    [
        ("vae_x > 0", {"model"} | TARGET_LABELS),
        ("histogram_quantile(0.9, sum by (endpoint, le) (rate(vae_y_bucket[5m]))) > 1", {"endpoint"}),
        ("sum by (le) (increase(vae_y_bucket[1h]))", {"le"}),
        ("sum(rate(vae_x[5m])) by (model) / sum(rate(vae_x[5m]))", set()),
        ("max without (model) (vae_x) + vector(1)", set()),
    ],
)
def test_the_labels_an_expression_keeps_are_those_its_outermost_aggregation_keeps(expr: str, carried: set[str]) -> None:
    assert result_labels(expr, {"vae_x": {"model"}, "vae_y_bucket": {"endpoint", "le"}}) == carried


# The rules and the dashboard, as files


def test_every_alert_says_how_urgent_it_is_and_what_to_look_at() -> None:
    doc = _rule_file()
    assert doc["apiVersion"] == "monitoring.coreos.com/v1" and doc["kind"] == "PrometheusRule"
    assert doc["metadata"]["name"]
    rules = _rules()
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names)) and all(re.fullmatch(r"[A-Z][A-Za-z0-9]+", n) for n in names)
    for rule in rules:
        assert set(rule) <= {"alert", "expr", "for", "keep_firing_for", "labels", "annotations"}, rule["alert"]
        assert DURATION.fullmatch(rule["for"]) and rule["for"] not in ("0s", "0m"), rule["alert"]
        assert rule["labels"]["severity"] in SEVERITIES, rule["alert"]
        assert rule["annotations"]["summary"].strip() and rule["annotations"]["description"].strip(), rule["alert"]
        if any(name.startswith(("vae_drift", "vae_flagged")) for name in queried(rule["expr"])):
            text = rule["annotations"]["description"]
            assert "/models/{{ $labels.model }}" in text, rule["alert"]
            assert "/v1/models/{{ $labels.model }}/monitoring" in text, rule["alert"]
    alerted = [set(queried(rule["expr"])) for rule in rules]
    for about in ALERTED:
        assert any(about <= names for names in alerted), f"no alert queries {sorted(about)}"


def test_every_probe_either_face_counts_is_left_out_of_the_error_and_latency_figures(tmp_path: Path) -> None:
    from service.access import PROBE_PATHS, Access
    from service.grpc_face import GrpcFace
    from service.metrics import Metrics
    from service.settings import ServiceSettings

    settings = ServiceSettings(model_repository=tmp_path)
    face = GrpcFace(settings, Access(settings), Metrics(), lambda: None)
    # the protocol's ready calls on both faces, and every RPC of gRPC's health service
    grpc_probes = ["ServerLive", "ServerReady", "ModelReady", *face._health_handlers()]
    probes = [*PROBE_PATHS, "/v2/models/digits.score/ready", *(f"grpc:{m}" for m in grpc_probes)]
    exprs = [rule["expr"] for rule in _rules()]
    exprs += [t["expr"] for panel in _panels(_dashboard()["panels"]) for t in panel.get("targets", [])]
    exclusions = [m for expr in exprs for m in re.findall(r'endpoint!~"([^"]+)"', expr)]
    assert len(exclusions) >= 6  # the error and latency alerts and their panels
    for pattern in exclusions:  # PromQL's regexes match the whole value
        assert [p for p in probes if not re.fullmatch(pattern, p)] == [], pattern
    served = ("grpc:ModelInfer", "/v1/score", "/v2/models/x.score/infer")
    assert not [p for p in served if re.fullmatch(exclusions[0], p)]


def test_the_dashboard_charts_every_figure_on_its_own_datasource_and_model_variable() -> None:
    dashboard = _dashboard()
    (source,) = dashboard["__inputs"]
    assert source["name"] == "DS_PROMETHEUS" and source["pluginId"] == "prometheus"
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["model"]["query"] == "label_values(vae_model_info, model)"
    panels = list(_panels(dashboard["panels"]))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for panel in panels:
        box = panel["gridPos"]
        assert box["x"] + box["w"] <= 24, panel["title"]
        mine = {(x, y) for x in range(box["x"], box["x"] + box["w"]) for y in range(box["y"], box["y"] + box["h"])}
        assert not mine & cells, f"{panel['title']} overlaps another panel"
        cells |= mine
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}" and panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
            used = set(VARIABLE.findall(target["expr"]))
            assert used <= set(variables) | GRAFANA_BUILTINS, (panel["title"], used)
    assert CHARTED <= set(dashboard_queries())
    (drift,) = [p for p in panels if any("vae_drift_p_value" in t["expr"] for t in p.get("targets", []))]
    assert drift["fieldConfig"]["defaults"]["custom"]["scaleDistribution"]["type"] == "log"
    assert any("$level" in t["expr"] for t in drift["targets"])  # the drift test's level, drawn with it
    # each model's score buckets are its own (placed from its validation scores): never summed across models
    for panel in panels:
        if any("vae_anomaly_score_bucket" in t["expr"] for t in panel.get("targets", [])):
            assert panel["repeat"] == "model" and variables["model"]["multi"], panel["title"]


# ... against a real vae-serve


def _exposition(text: str) -> tuple[dict[str, set[str]], dict[str, set[str]], set[str]]:
    """Sample name (a histogram's _bucket, _sum and _count, a counter's _total) -> its label names, and -> the
    values of its model label; and the family names."""
    labels: dict[str, set[str]] = {}
    models: dict[str, set[str]] = {}
    families = set()
    for family in text_string_to_metric_families(text):
        families.add(family.name)
        for sample in family.samples:
            labels.setdefault(sample.name, set()).update(sample.labels)
            if "model" in sample.labels:
                models.setdefault(sample.name, set()).add(sample.labels["model"])
    return labels, models, families


@pytest.mark.parametrize("workers", ["1", "2"])
def test_every_series_and_label_the_rules_and_dashboard_query_is_on_a_live_metrics_page(
    serving_repository: Path, workers: str
) -> None:
    rows = np.random.default_rng(0).integers(0, 17, (8, 64)).astype(float).tolist()
    with vae_serve(serving_repository, VAE_WORKERS=workers) as (base, _):
        for model in MODELS:
            answer = httpx.post(f"{base}/v1/models/{model}/score", json={"inputs": rows}, timeout=60)
            assert answer.status_code == 200, answer.text
        text = httpx.get(f"{base}/metrics", timeout=10).text
    emitted, models, families = _exposition(text)
    assert models["vae_model_info"] == set(MODELS)
    problems = []
    for source, needs in (("rules", rule_queries()), ("dashboard", dashboard_queries())):
        for name, labels in sorted(needs.items()):
            if name not in emitted:
                problems.append(f"{source}: {name} is not on /metrics")
            elif missing := labels - emitted[name] - TARGET_LABELS:
                problems.append(f"{source}: {name} has no label {sorted(missing)} (it has {sorted(emitted[name])})")
    for name in sorted(rule_mentions() - set(emitted) - families):
        problems.append(f"rules: the annotations name {name}, which is not on /metrics")
    for name in sorted(_model_filtered()):  # the dashboard's model variable takes its values from vae_model_info
        if name in emitted and not set(MODELS) & models.get(name, set()):
            problems.append(f"dashboard: {name} has none of the models {MODELS} (model={models.get(name)})")
    for rule in _rules():
        carried = result_labels(rule["expr"], emitted)
        for text in rule["annotations"].values():
            if unknown := set(TEMPLATE_LABEL.findall(text)) - carried:
                problems.append(f"rules: {rule['alert']} annotates with {sorted(unknown)}, not on its series")
    for panel in _panels(_dashboard()["panels"]):
        for target in panel.get("targets", []):
            shown = set(re.findall(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}", target.get("legendFormat", "")))
            if unknown := shown - result_labels(target["expr"], emitted):
                problems.append(f"dashboard: {panel['title']} shows {sorted(unknown)} in a legend, not on its series")
    assert not problems, "\n".join(problems)
