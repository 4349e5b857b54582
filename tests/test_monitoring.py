"""k8s/monitoring/: every alert and dashboard query parses as PromQL and asks only for
series, labels and label values a running gateway exports, so a renamed metric cannot leave a
dashboard blank or an alert silent without failing here."""

from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path

import promql_parser as pq
import pytest
import yaml
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from service.app import create_app
from service.metrics import ERROR_KINDS, STAGES
from service.settings import Settings

MONITORING = Path(__file__).resolve().parents[1] / "k8s" / "monitoring"
SCRAPE_LABELS = {"instance", "job"}  # added by Prometheus when it scrapes, not exported
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}

Exported = dict[str, dict[str, set[str]]]  # sample name -> label -> values seen


@pytest.fixture(scope="module")
def exported(tiny_export) -> Exported:
    """The series of a gateway that answered one request of each endpoint."""
    with TestClient(create_app(Settings(bundle=tiny_export["bundle"]))) as c:
        assert c.post("/v1/query/sids", json={"query": "cordless drill"}).status_code == 200
        items = {"items": [{"item_id": "x", "text": "hammer"}]}
        assert c.post("/v1/items/encode", json=items).status_code == 200
        assert c.post("/v1/relevance", json={"query": "drill", "item_ids": ["x"]}).is_success
        text = c.get("/metrics").text
    series: Exported = defaultdict(lambda: defaultdict(set))
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = series[sample.name]
            for name, value in sample.labels.items():
                labels[name].add(value)
    return series


def rules() -> list[dict]:
    doc = yaml.safe_load((MONITORING / "prometheus-rules.yaml").read_text())
    assert doc["kind"] == "PrometheusRule" and doc["apiVersion"] == "monitoring.coreos.com/v1"
    return [rule for group in doc["spec"]["groups"] for rule in group["rules"]]


def dashboard() -> dict:
    return json.loads((MONITORING / "grafana-dashboard.json").read_text())


def dashboard_queries() -> list[str]:
    out = []
    for panel in dashboard()["panels"]:
        for target in panel["targets"]:
            expr = target["expr"]
            for variable, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(variable, value)
            assert "$" not in expr, f"{panel['title']}: unknown variable in {expr}"
            out.append(expr)
    return out


def all_queries() -> list[str]:
    return [rule["expr"] for rule in rules()] + dashboard_queries()


def nodes(expr: pq.Expr) -> list[pq.Expr]:
    found: list[pq.Expr] = []
    pq.walk(expr, lambda node: found.append(node))
    return found


def selectors(expr: pq.Expr) -> list[pq.VectorSelector]:
    return [n for n in nodes(expr) if isinstance(n, pq.VectorSelector)]


def check_selector(vs: pq.VectorSelector, exported: Exported, query: str) -> None:
    assert vs.name in exported, f"{query}: the gateway exports no series {vs.name}"
    labels = exported[vs.name]
    for m in vs.matchers.matchers:
        if m.name in SCRAPE_LABELS:
            continue
        assert m.name in labels, f"{query}: {vs.name} has no label {m.name}"
        seen = labels[m.name]
        if m.op in (pq.MatchOp.Equal, pq.MatchOp.NotEqual):
            assert m.value in seen, f"{query}: {vs.name}{{{m.name}}} is never {m.value!r}: {seen}"
        else:
            pattern = re.compile(m.value)
            assert any(pattern.fullmatch(v) for v in seen) or m.name == "status", (
                f"{query}: {m.name}=~{m.value!r} matches none of {sorted(seen)}"
            )
            for part in m.value.split("|"):  # each alternative of a kind list is a real kind
                if re.fullmatch(r"[a-z_]+", part):
                    assert part in seen, f"{query}: {m.name} is never {part!r}"


@pytest.mark.parametrize("query", all_queries())
def test_every_query_parses_and_asks_for_exported_series(query: str, exported: Exported) -> None:
    expr = pq.parse(query)
    assert selectors(expr), f"{query}: reads no metric"
    for vs in selectors(expr):
        check_selector(vs, exported, query)
    for node in nodes(expr):
        if isinstance(node, pq.AggregateExpr) and node.modifier is not None:
            inner = {name for vs in selectors(node.expr) for name in exported[vs.name]}
            missing = set(node.modifier.labels) - inner - SCRAPE_LABELS
            assert not missing, f"{query}: aggregates by {sorted(missing)}, labels it lacks"
        if isinstance(node, pq.Call) and node.func.name == "histogram_quantile":
            inner_agg = node.args[1]
            assert isinstance(inner_agg, pq.AggregateExpr), query
            assert "le" in inner_agg.modifier.labels, f"{query}: the quantile needs `by (le)`"
            assert all(vs.name.endswith("_bucket") for vs in selectors(inner_agg)), query


def test_the_checks_above_catch_a_renamed_metric_or_label_value(exported: Exported) -> None:
    """The selector check on known-bad queries (the check itself must be able to fail)."""
    for bad in [
        "rate(sidserve_request_seconds_total[5m])",  # no such series
        'rate(sidserve_errors_total{kind="store_down"}[5m])',  # no such kind
        'sidserve_queue_depth{endpoint="/v1/query/sids"}',  # no such label
        'rate(sidserve_errors_total{kind=~"overloaded|timeout"}[5m])',  # one kind unknown
    ]:
        with pytest.raises(AssertionError):
            for vs in selectors(pq.parse(bad)):
                check_selector(vs, exported, bad)


def test_every_stage_and_error_kind_is_exported_before_it_happens(exported: Exported) -> None:
    """A counter series born at 1 is invisible to increase(): the first internal error
    would not fire SidserveInternalError."""
    assert exported["sidserve_errors_total"]["kind"] == set(ERROR_KINDS)
    assert exported["sidserve_stage_seconds_count"]["stage"] == set(STAGES)


def test_rules_are_complete_alerts() -> None:
    names = [rule["alert"] for rule in rules()]
    assert len(names) == len(set(names)) >= 5
    for rule in rules():
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
        if "for" in rule:
            assert pq.parse_duration(rule["for"]).total_seconds() > 0, rule["alert"]


def test_dashboard_panels_use_its_datasource_variable() -> None:
    dash = dashboard()
    variables = {v["name"] for v in dash["templating"]["list"]}
    assert variables == {"datasource"}
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dash["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
