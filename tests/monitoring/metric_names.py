"""Metric names used by the alert rules and dashboards, and those a /metrics page serves.

A renamed metric (vLLM once renamed vllm:gpu_cache_usage_perc to
vllm:kv_cache_usage_perc) leaves a PromQL expression valid and a dashboard
blank; the tests compare the names read here with the pinned vLLM's captured
/metrics (tests/unit/test_monitoring_rules.py) and with a running instance's
(molecule/vllm/tests/test_metric_names.py).

Standard library and PyYAML only, so that the molecule scenarios' tests can
load this file by its path.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

# PromQL words that are not metric names where they stand.
KEYWORDS = frozenset(("and", "or", "unless", "bool", "offset", "inf", "nan"))
# Modifiers followed by a list of label names in parentheses (not metric names).
LABEL_LISTS = frozenset(("by", "without", "on", "ignoring", "group_left", "group_right"))

TOKEN = re.compile(
    r"""
    (?P<space>\s+)
  | (?P<comment>\#[^\n]*)
  | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
  | (?P<variable>\$\{[^}]*\}|\$\w+|\[\[\w+(?::\w+)?\]\])
  | (?P<number>0[xX][0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?(?:[a-zA-Z]+\d*)*)
  | (?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)
  | (?P<punct>=~|!~|!=|==|<=|>=|[-+*/%^<>=(){}\[\],@:])
    """,
    re.VERBOSE,
)


class MetricNameError(ValueError):
    """An expression whose metric names cannot be read for sure."""


def _tokens(expr):
    """(kind, text) of each PromQL token of expr, spaces and comments left out."""
    tokens = []
    pos = 0
    while pos < len(expr):
        match = TOKEN.match(expr, pos)
        if not match:
            raise MetricNameError("cannot read %r at offset %d of the expression %r" % (expr[pos : pos + 20], pos, expr))
        pos = match.end()
        if match.lastgroup not in ("space", "comment"):
            tokens.append((match.lastgroup, match.group()))
    return tokens


def _check_brackets(tokens, expr):
    """Every bracket closed by its own kind, in order."""
    pairs = {")": "(", "]": "[", "}": "{"}
    stack = []
    for kind, text in tokens:
        if kind != "punct":
            continue
        if text in "([{":
            stack.append(text)
        elif text in pairs and (not stack or stack.pop() != pairs[text]):
            raise MetricNameError("unbalanced %r in the expression %r" % (text, expr))
    if stack:
        raise MetricNameError("unclosed %r in the expression %r" % (stack[-1], expr))


def _skip_group(tokens, i, opening, closing):
    """The index after the bracket that closes tokens[i] (an opening bracket)."""
    depth = 0
    for j in range(i, len(tokens)):
        if tokens[j] == ("punct", opening):
            depth += 1
        elif tokens[j] == ("punct", closing):
            depth -= 1
            if depth == 0:
                return j + 1
    raise MetricNameError("unbalanced %r in the expression" % opening)


def _matchers(tokens, i, expr):
    """(names from `__name__="..."` matchers, index after the closing brace) of the selector at tokens[i] ('{')."""
    end = _skip_group(tokens, i, "{", "}")
    names = set()
    body = tokens[i + 1 : end - 1]
    for k, (kind, text) in enumerate(body):
        if kind == "name" and text == "__name__":
            op = body[k + 1][1] if k + 1 < len(body) else ""
            value = body[k + 2] if k + 2 < len(body) else ("", "")
            if op != "=" or value[0] != "string":
                raise MetricNameError('a __name__ matcher other than `__name__="name"` names no metric for sure: %r' % expr)
            names.add(value[1][1:-1])
    return names, end


def _next_is(tokens, i, text):
    return i + 1 < len(tokens) and tokens[i + 1] == ("punct", text)


def names_in_promql(expr):
    """The metric names a PromQL expression selects (functions, keywords, labels and Grafana variables left out).

    Raises MetricNameError on a `__name__` regex or inequality (no name can be checked) or on text it cannot read."""
    if not isinstance(expr, str):
        raise MetricNameError("a PromQL expression must be text, not %r" % (expr,))
    tokens = _tokens(expr)
    _check_brackets(tokens, expr)
    names = set()
    i = 0
    while i < len(tokens):
        kind, text = tokens[i]
        if (kind, text) == ("punct", "{"):
            found, i = _matchers(tokens, i, expr)
            names |= found
            continue
        if (kind, text) == ("punct", "["):
            i = _skip_group(tokens, i, "[", "]")
            continue
        if kind == "name" and text in LABEL_LISTS:
            i = _skip_group(tokens, i + 1, "(", ")") if _next_is(tokens, i, "(") else i + 1
            continue
        # A name before "(" is a function; before by/without, an aggregation (sum by (x) (...)).
        aggregation = i + 1 < len(tokens) and tokens[i + 1][0] == "name" and tokens[i + 1][1] in ("by", "without")
        if kind == "name" and text.lower() not in KEYWORDS and not _next_is(tokens, i, "(") and not aggregation:
            names.add(text)
        i += 1
    return names


def names_in_rules(path):
    """The metric names the rules of a Prometheus rule file read, less those its own recording rules write."""
    data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    if not isinstance(data, dict) or not isinstance(data.get("groups"), list):
        raise MetricNameError("%s: not a Prometheus rule file (no groups list)" % path)
    used, recorded = set(), set()
    for group in data["groups"]:
        for rule in group.get("rules") or []:
            used |= names_in_promql(rule.get("expr"))
            if rule.get("record"):
                recorded.add(rule["record"])
    return used - recorded


# Grafana's Prometheus template-variable queries (the only ones read here).
LABEL_VALUES = re.compile(r"^\s*label_values\((?:(?P<expr>.*),)?\s*(?P<label>\w+)\s*\)\s*$", re.S)
QUERY_RESULT = re.compile(r"^\s*query_result\((?P<expr>.*)\)\s*$", re.S)


def _variable_names(query):
    if isinstance(query, dict):
        query = query.get("query", "")
    match = LABEL_VALUES.match(query) or QUERY_RESULT.match(query)
    if not match:
        raise MetricNameError("a Grafana variable query other than label_values() or query_result(): %r" % query)
    return names_in_promql(match.group("expr")) if match.group("expr") else set()


def _walk_targets(node, out):
    """Every `expr` of a panel target, anywhere in a dashboard (rows nest panels)."""
    if isinstance(node, dict):
        for target in node.get("targets") or []:
            if isinstance(target, dict) and "expr" in target:
                out.append(target["expr"])
        for value in node.values():
            _walk_targets(value, out)
    elif isinstance(node, list):
        for value in node:
            _walk_targets(value, out)


def names_in_dashboard(path):
    """The metric names a Grafana dashboard's panel queries and query variables use."""
    dashboard = json.loads(Path(path).read_text(encoding="utf-8"))
    exprs = []
    _walk_targets(dashboard.get("panels", []), exprs)
    names = set()
    for expr in exprs:
        names |= names_in_promql(expr)
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") == "query":
            names |= _variable_names(variable.get("query", ""))
    return names


def names_in_exposition(text):
    """The sample names of a Prometheus text exposition (a /metrics page): histograms give _bucket, _sum, _count."""
    names = set()
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", line)
        if not match:
            raise MetricNameError("not a sample line of a /metrics page: %r" % line[:80])
        names.add(match.group())
    return names


def names_in_dcgm_csv(path):
    """The DCGM fields of a dcgm-exporter counters file (DCGM field, type, help; '#' starts a comment)."""
    names = set()
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            names.add(line.split(",", 1)[0].strip())
    return names


def missing(names, served, prefix):
    """The names of `names` that start with prefix and are not in `served`, sorted: what a rename leaves blank."""
    return sorted(name for name in names if name.startswith(prefix) and name not in served)
