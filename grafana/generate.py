#!/usr/bin/env python3
"""Writes the Grafana dashboards in grafana/dashboards/ from the definitions below.

The JSON files are what Grafana loads (provisioning, or Dashboards > Import); this script
is how they are kept consistent: every panel gets the templated datasource, a unit and a
description, every query the `job`/`instance` selector and `$__rate_interval`.

    python3 grafana/generate.py          # rewrite the dashboards
    python3 grafana/generate.py --check  # exit 1 when a committed file differs

`cargo test` runs the check (tests/deploy.rs), type-checks every dashboard
against `@grafana/schema` and runs every query against a real Turnstile.
"""

import json
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parent / "dashboards"
DS = {"type": "prometheus", "uid": "${datasource}"}
SEL = 'job=~"$job", instance=~"$instance"'
MSEL = SEL + ', machine=~"$machine"'
RI = "$__rate_interval"


def target(expr, legend="__auto", ref="A", instant=False, fmt="time_series", exemplar=False):
    t = {
        "datasource": DS,
        "refId": ref,
        "expr": expr,
        "legendFormat": legend,
        "range": not instant,
        "instant": instant,
        "format": fmt,
        "editorMode": "code",
    }
    if exemplar:
        t["exemplar"] = True
    return t


def targets(*pairs, exemplar=False):
    """(expr, legend) pairs as targets A, B, C..."""
    return [target(e, l, chr(ord("A") + i), exemplar=exemplar) for i, (e, l) in enumerate(pairs)]


def legend(mode="list", calcs=None, placement="bottom"):
    return {"showLegend": True, "displayMode": mode, "placement": placement, "calcs": calcs or []}


TOOLTIP = {"mode": "multi", "sort": "desc"}


def timeseries(title, desc, unit, tgts, stack=False, draw="line", decimals=None, minimum=0,
               legend_calcs=None, overrides=None):
    custom = {
        "drawStyle": draw,
        "lineWidth": 1,
        "fillOpacity": 10 if not stack else 40,
        "showPoints": "never",
        "spanNulls": False,
        "axisPlacement": "auto",
        "stacking": {"mode": "normal" if stack else "none", "group": "A"},
    }
    defaults = {"unit": unit, "custom": custom, "color": {"mode": "palette-classic"}}
    if minimum is not None:
        defaults["min"] = minimum
    if decimals is not None:
        defaults["decimals"] = decimals
    return {
        "type": "timeseries",
        "title": title,
        "description": desc,
        "datasource": DS,
        "fieldConfig": {"defaults": defaults, "overrides": overrides or []},
        "options": {
            "legend": legend("table" if legend_calcs else "list", legend_calcs),
            "tooltip": TOOLTIP,
        },
        "targets": tgts,
    }


def stat(title, desc, unit, tgts, thresholds=None, mappings=None, graph="area", color="value",
         text_mode="auto", calcs=("lastNotNull",)):
    steps = thresholds or [{"color": "green", "value": None}]
    return {
        "type": "stat",
        "title": title,
        "description": desc,
        "datasource": DS,
        "fieldConfig": {
            "defaults": {
                "unit": unit,
                "thresholds": {"mode": "absolute", "steps": steps},
                "mappings": mappings or [],
                "color": {"mode": "thresholds"},
            },
            "overrides": [],
        },
        "options": {
            "reduceOptions": {"calcs": list(calcs), "fields": "", "values": False},
            "orientation": "auto",
            "colorMode": color,
            "graphMode": graph,
            "justifyMode": "auto",
            "textMode": text_mode,
            "wideLayout": True,
            "showPercentChange": False,
            "percentChangeColorMode": "standard",
        },
        "targets": tgts,
    }


def table(title, desc, unit, tgts, organize=None, sort_by=None):
    transformations = [{"id": "merge", "options": {}}]
    if organize:
        transformations.append({"id": "organize", "options": organize})
    opts = {"showHeader": True, "cellHeight": "sm", "frameIndex": 0}
    if sort_by:
        opts["sortBy"] = [{"displayName": sort_by, "desc": True}]
    return {
        "type": "table",
        "title": title,
        "description": desc,
        "datasource": DS,
        "fieldConfig": {
            "defaults": {"unit": unit, "custom": {"align": "auto"}},
            "overrides": [],
        },
        "options": opts,
        "transformations": transformations,
        "targets": tgts,
    }


def state_timeline(title, desc, tgts):
    return {
        "type": "state-timeline",
        "title": title,
        "description": desc,
        "datasource": DS,
        "fieldConfig": {
            "defaults": {
                "unit": "none",
                "custom": {"fillOpacity": 80, "lineWidth": 0},
                "color": {"mode": "thresholds"},
                "thresholds": {
                    "mode": "absolute",
                    "steps": [{"color": "transparent", "value": None}, {"color": "green", "value": 1}],
                },
                "mappings": [
                    {"type": "value", "options": {"0": {"text": " ", "index": 0},
                                                  "1": {"text": "in state", "index": 1}}}
                ],
            },
            "overrides": [],
        },
        "options": {
            "showValue": "never",
            "rowHeight": 0.8,
            "mergeValues": True,
            "alignValue": "left",
            "legend": {"showLegend": False, "displayMode": "list", "placement": "bottom", "calcs": []},
            "tooltip": {"mode": "single", "sort": "none"},
        },
        "targets": tgts,
    }


def row(title):
    return {"type": "row", "title": title, "collapsed": False, "panels": []}


def layout(items):
    """Places panels on the 24-column grid. `items` is a list of rows of (panel, width, height);
    a row panel takes a line of its own."""
    panels, y, pid = [], 0, 1
    for line in items:
        if isinstance(line, dict):  # a row header
            line["id"] = pid
            line["gridPos"] = {"h": 1, "w": 24, "x": 0, "y": y}
            panels.append(line)
            pid += 1
            y += 1
            continue
        x, h = 0, 0
        for panel, w, ph in line:
            panel["id"] = pid
            panel["gridPos"] = {"h": ph, "w": w, "x": x, "y": y}
            panels.append(panel)
            pid += 1
            x += w
            h = max(h, ph)
        y += h
    return panels


def datasource_var():
    return {
        "name": "datasource",
        "label": "Prometheus",
        "type": "datasource",
        "query": "prometheus",
        "hide": 0,
        "refresh": 1,
        "regex": "",
        "includeAll": False,
        "multi": False,
        "options": [],
        "skipUrlSync": False,
    }


def query_var(name, label, query, multi=True, include_all=True, description=""):
    v = {
        "name": name,
        "label": label,
        "description": description,
        "type": "query",
        "datasource": DS,
        "query": {"query": query, "refId": "PrometheusVariableQueryEditor-VariableQuery", "qryType": 1},
        "refresh": 2,
        "sort": 1,
        "multi": multi,
        "includeAll": include_all,
        "hide": 0,
        "regex": "",
        "options": [],
        "skipUrlSync": False,
    }
    if include_all:
        v["allValue"] = ".*"
    return v


def base_vars():
    return [
        datasource_var(),
        query_var("job", "Job", "label_values(turnstile_build_info, job)",
                  description="Prometheus job scraping Turnstile"),
        query_var("instance", "Instance", 'label_values(turnstile_build_info{job=~"$job"}, instance)',
                  description="Turnstile process (scrape target)"),
    ]


LINKS = [{
    "title": "Turnstile",
    "type": "dashboards",
    "tags": ["turnstile"],
    "asDropdown": True,
    "includeVars": True,
    "keepTime": True,
    "icon": "external link",
    "targetBlank": False,
    "tooltip": "",
    "url": "",
}]


def dashboard(uid, title, desc, panels, variables):
    return {
        "uid": uid,
        "title": title,
        "description": desc,
        "tags": ["turnstile"],
        "timezone": "browser",
        "editable": True,
        "graphTooltip": 1,
        "refresh": "10s",
        "schemaVersion": 39,
        "version": 1,
        "time": {"from": "now-30m", "to": "now"},
        "timepicker": {},
        "fiscalYearStartMonth": 0,
        "liveNow": False,
        "links": LINKS,
        "annotations": {"list": [{
            "builtIn": 1,
            "datasource": {"type": "grafana", "uid": "-- Grafana --"},
            "enable": True,
            "hide": True,
            "iconColor": "rgba(0, 211, 255, 1)",
            "name": "Annotations & Alerts",
            "type": "dashboard",
        }]},
        "templating": {"list": variables},
        "panels": panels,
    }


def quantile(q, metric, by, sel):
    """The q-quantile of a duration histogram, by the labels `by` (a comma list, may be
    empty): from the classic `_bucket` series, or from the native histogram when Prometheus
    scrapes with `--enable-feature=native-histograms` (it then keeps no `_bucket` series)."""
    classic = f"sum by (le, {by})" if by else "sum by (le)"
    native = f"sum by ({by})" if by else "sum"
    return (f"histogram_quantile({q}, {classic} (rate({metric}_bucket{{{sel}}}[{RI}])))"
            f" or histogram_quantile({q}, {native} (rate({metric}{{{sel}}}[{RI}])))")


def observations_per_second(metric, by, sel):
    """Observations per second of a histogram: its classic `_count`, or the native
    histogram's count."""
    return (f"sum by ({by}) (rate({metric}_count{{{sel}}}[{RI}]))"
            f" or sum by ({by}) (histogram_count(rate({metric}{{{sel}}}[{RI}])))")


def quantiles(metric, by, sel, legend_prefix, exemplar=True):
    out = []
    for i, q in enumerate(("0.5", "0.95", "0.99")):
        name = "p" + q[2:].ljust(2, "0") if q != "0.5" else "p50"
        out.append(target(quantile(q, metric, by, sel),
                          f"{legend_prefix} {name}", chr(ord("A") + i), exemplar=exemplar))
    return out


def overview():
    panels = layout([
        [
            (stat("Events/s", "Events processed per second by every machine (transitioned, ignored and rejected).",
                  "ops", [target(f"sum(rate(turnstile_events_total{{{SEL}}}[{RI}]))", "events/s")]), 4, 4),
            (stat("Error ratio", "Errors per processed event over the rate interval: sum of turnstile_errors_total rates divided by the turnstile_events_total rate.",
                  "percentunit", [target(f"sum(rate(turnstile_errors_total{{{SEL}}}[{RI}])) / sum(rate(turnstile_events_total{{{SEL}}}[{RI}]))", "error ratio")],
                  thresholds=[{"color": "green", "value": None}, {"color": "orange", "value": 0.01}, {"color": "red", "value": 0.05}]), 4, 4),
            (stat("Machines", "Machines loaded by the selected Turnstile processes (each machine reports turnstile_machine_state).",
                  "none", [target(f"count(group by (job, instance, machine) (turnstile_machine_state{{{SEL}}}))", "machines")], graph="none"), 4, 4),
            (stat("Queued events", "Events waiting in the machines' queues, all machines together.",
                  "none", [target(f"sum(turnstile_event_queue_depth{{{SEL}}})", "queued")],
                  thresholds=[{"color": "green", "value": None}, {"color": "orange", "value": 100}, {"color": "red", "value": 1000}]), 4, 4),
            (stat("Targets up", "Turnstile scrape targets that answered the last scrape, out of those selected.",
                  "none", [target(f"sum(up{{{SEL}}})", "up")], graph="none",
                  thresholds=[{"color": "red", "value": None}, {"color": "green", "value": 1}]), 4, 4),
            (stat("Version", "Turnstile version running (turnstile_build_info).",
                  "none", [target(f"count by (version) (turnstile_build_info{{{SEL}}})", "{{version}}", instant=True)],
                  graph="none", text_mode="name", color="none"), 4, 4),
        ],
        row("Throughput and errors"),
        [
            (timeseries("Events/s by machine and outcome",
                        "Events processed per second; outcome is transitioned, ignored (no rule in the current state) or rejected (livelock guard).",
                        "ops", targets((f"sum by (machine, outcome) (rate(turnstile_events_total{{{SEL}}}[{RI}]))", "{{machine}} {{outcome}}")),
                        legend_calcs=["mean", "max"]), 12, 8),
            (timeseries("Errors/s by kind",
                        "Errors per second by kind (action, action_timeout, interpolation, unknown_target, queue_full, livelock, state_removed, config, plugin, store, bad_message).",
                        "cps", targets((f"sum by (kind) (rate(turnstile_errors_total{{{SEL}}}[{RI}]))", "{{kind}}")),
                        stack=True, legend_calcs=["mean", "max"]), 12, 8),
        ],
        [
            (timeseries("Event duration p50 / p95 / p99 by machine",
                        "Time from the start of an event to the end of the actions it triggered (transitioned events), from the turnstile_event_duration_seconds histogram. Points with exemplars link to the trace in Tempo.",
                        "s", quantiles("turnstile_event_duration_seconds", "machine", SEL, "{{machine}}"),
                        legend_calcs=["mean", "max"]), 12, 8),
            (timeseries("Transitions/s by machine",
                        "State transitions per second, by machine.",
                        "ops", targets((f"sum by (machine) (rate(turnstile_transitions_total{{{SEL}}}[{RI}]))", "{{machine}}")),
                        legend_calcs=["mean", "max"]), 12, 8),
        ],
        row("Load"),
        [
            (timeseries("Queue depth by machine",
                        "Events waiting in each machine's queue, read at scrape time: a machine stuck in a long action shows its queue growing.",
                        "none", targets((f"sum by (machine) (turnstile_event_queue_depth{{{SEL}}})", "{{machine}}")),
                        legend_calcs=["lastNotNull", "max"]), 8, 8),
            (timeseries("Jobs by status",
                        "Jobs in the job store (turnstile run --db) by status: pending, processing, completed, failed, dead (dead-lettered after the last attempt). Empty when no job store is open. Replicas on one PostgreSQL store each report the whole store: the panel takes the largest count per Prometheus job, so it assumes that the instances of a job share one store.",
                        "none", targets((f"sum by (status) (max by (job, job_type, status) (turnstile_jobs{{{SEL}}}))", "{{status}}")),
                        stack=True, legend_calcs=["lastNotNull"]), 8, 8),
            (timeseries("Machines by current state",
                        "How many machines are in each state right now (turnstile_machine_state = 1).",
                        "none", targets((f"sum by (state) (turnstile_machine_state{{{SEL}}} == 1)", "{{state}}")),
                        stack=True, draw="bars"), 8, 8),
        ],
        row("Replicas"),
        [
            (timeseries("Events/s by instance",
                        "Events processed per second by each Turnstile process (scrape target): how the load is spread over the replicas.",
                        "ops", targets((f"sum by (instance) (rate(turnstile_events_total{{{SEL}}}[{RI}]))", "{{instance}}")),
                        legend_calcs=["mean", "max"]), 12, 8),
            (timeseries("Job claims/s by instance",
                        "Jobs claimed per second by each process's machines (turnstile_job_changes_total, change=claimed): replicas on one PostgreSQL store share its queue, and this shows which replica takes the jobs.",
                        "ops", targets((f"sum by (instance) (rate(turnstile_job_changes_total{{{SEL}, change=\"claimed\"}}[{RI}]))", "{{instance}}")),
                        legend_calcs=["mean", "max"]), 12, 8),
        ],
    ])
    return dashboard("turnstile-overview", "Turnstile / Overview",
                     "Every Turnstile process and machine at a glance: throughput, errors, latency, queues and jobs.",
                     panels, base_vars())


def machine():
    mvar = query_var("machine", "Machine",
                     'label_values(turnstile_machine_state{job=~"$job", instance=~"$instance"}, machine)',
                     multi=False, include_all=False, description="Machine (metadata.machine_name)")
    panels = layout([
        [
            (stat("Current state", "The state the machine is in now (turnstile_machine_state = 1), in each selected process (each replica runs its own machine of this name).",
                  "none", [target(f"turnstile_machine_state{{{MSEL}}} == 1", "{{state}} ({{instance}})", instant=True)],
                  graph="none", text_mode="name", color="none"), 6, 4),
            (stat("Time in current state", "Seconds since the machine entered its current state (turnstile_state_entered_timestamp_seconds), in each selected process.",
                  "s", [target(f"time() - max by (instance) (turnstile_state_entered_timestamp_seconds{{{MSEL}}})", "{{instance}}")],
                  thresholds=[{"color": "green", "value": None}, {"color": "orange", "value": 300}, {"color": "red", "value": 900}]), 6, 4),
            (stat("Events/s", "Events this machine processes per second.",
                  "ops", [target(f"sum(rate(turnstile_events_total{{{MSEL}}}[{RI}]))", "events/s")]), 4, 4),
            (stat("Errors/s", "Errors of this machine per second, every kind.",
                  "cps", [target(f"sum(rate(turnstile_errors_total{{{MSEL}}}[{RI}]))", "errors/s")],
                  thresholds=[{"color": "green", "value": None}, {"color": "red", "value": 0.001}]), 4, 4),
            (stat("Queued events", "Events waiting in this machine's queue.",
                  "none", [target(f"sum(turnstile_event_queue_depth{{{MSEL}}})", "queued")]), 4, 4),
        ],
        [
            (state_timeline("State timeline",
                            "Which state the machine was in over time: one row per state and selected process, filled while the machine is in it (turnstile_machine_state, sampled at each scrape: states held for less than a scrape interval may not show; with the `states` metrics detail every declared state has a row, otherwise the states it was seen in).",
                            [target(f"max by (instance, state) (turnstile_machine_state{{{MSEL}}})", "{{instance}} {{state}}")]), 24, 9),
        ],
        row("Transitions"),
        [
            (table("Transitions from → to",
                   "Transitions taken in the selected time range, by rule (from, to, event) when the `transitions` metrics detail is on (turnstile run --metrics-detail transitions, or the config's metrics: key); one row for the machine otherwise.",
                   "none", [target(f"sum by (from, to, event) (increase(turnstile_transitions_total{{{MSEL}}}[$__range])) > 0",
                                   "", instant=True, fmt="table")],
                   organize={"excludeByName": {"Time": True}, "renameByName": {"Value": "transitions"},
                             "indexByName": {"from": 0, "to": 1, "event": 2, "Value": 3}},
                   sort_by="transitions"), 10, 10),
            (timeseries("Transitions/s from → to",
                        "Transitions per second by rule (from → to) with the `transitions` metrics detail; one line for the machine otherwise.",
                        "ops", targets((f"sum by (from, to) (rate(turnstile_transitions_total{{{MSEL}}}[{RI}]))", "{{from}} → {{to}}")),
                        legend_calcs=["mean", "max"]), 14, 10),
        ],
        [
            (timeseries("Time in state p50 / p95 / p99",
                        "How long the machine stays in a state before leaving it (turnstile_state_duration_seconds, observed when a state is left): one line per state with the `states` metrics detail, one for all states otherwise.",
                        "s", quantiles("turnstile_state_duration_seconds", "state", MSEL, "{{state}}", exemplar=False),
                        legend_calcs=["mean", "max"]), 12, 9),
            (timeseries("Events/s by event and outcome",
                        "Events processed per second by outcome (transitioned, ignored, rejected), and by event name with the `transitions` metrics detail (`_other` counts event names the config never mentions).",
                        "ops", targets((f"sum by (event, outcome) (rate(turnstile_events_total{{{MSEL}}}[{RI}]))", "{{event}} {{outcome}}")),
                        legend_calcs=["mean"]), 12, 9),
        ],
        row("Actions and errors"),
        [
            (timeseries("Action latency p95 by action",
                        "95th and 50th percentile of action run time (turnstile_action_duration_seconds), by action type with the `actions` metrics detail, all actions together otherwise. Exemplar points link to the trace of a recent run in Tempo.",
                        "s", targets((quantile("0.95", "turnstile_action_duration_seconds", "action", MSEL), "{{action}} p95"),
                                     (quantile("0.5", "turnstile_action_duration_seconds", "action", MSEL), "{{action}} p50"),
                                     exemplar=True),
                        legend_calcs=["mean", "max"]), 12, 9),
            (timeseries("Actions/s by action and outcome",
                        "Actions finished per second; by type and outcome (ok, error, timeout, interrupted) with the `actions` metrics detail, all together otherwise (failures are also in Errors/s by kind).",
                        "ops", targets((observations_per_second("turnstile_action_duration_seconds", "action, outcome", MSEL), "{{action}} {{outcome}}")),
                        stack=True, legend_calcs=["mean"]), 12, 9),
        ],
        [
            (timeseries("Errors/s by kind",
                        "This machine's errors per second by kind.",
                        "cps", targets((f"sum by (kind) (rate(turnstile_errors_total{{{MSEL}}}[{RI}]))", "{{kind}}")),
                        stack=True, legend_calcs=["mean", "max"]), 12, 8),
            (timeseries("Event duration with exemplars",
                        "p99 and p50 of event processing time for this machine; the exemplar dots are sampled events, each linked to its trace in Tempo.",
                        "s", targets((quantile("0.99", "turnstile_event_duration_seconds", "", MSEL), "p99"),
                                     (quantile("0.5", "turnstile_event_duration_seconds", "", MSEL), "p50"),
                                     exemplar=True),
                        legend_calcs=["mean", "max"]), 12, 8),
        ],
    ])
    return dashboard("turnstile-machine", "Turnstile / Machine",
                     "One machine in detail: its state over time, transitions, time in state, actions, errors and traces.",
                     panels, base_vars() + [mvar])


def health():
    panels = layout([
        [
            (stat("Up", "1 when Prometheus's last scrape of the target succeeded.",
                  "none", [target(f"min(up{{{SEL}}})", "up")], graph="none",
                  thresholds=[{"color": "red", "value": None}, {"color": "green", "value": 1}],
                  mappings=[{"type": "value", "options": {"0": {"text": "DOWN", "index": 0}, "1": {"text": "UP", "index": 1}}}]), 4, 4),
            (stat("Uptime", "Time since the Turnstile process started (process_start_time_seconds).",
                  "s", [target(f"min(time() - process_start_time_seconds{{{SEL}}})", "uptime")], graph="none"), 4, 4),
            (stat("Plugins loaded", "Plugin libraries loaded (turnstile_plugin_info), all processes.",
                  "none", [target(f"count(turnstile_plugin_info{{{SEL}}}) or on() vector(0)", "plugins")], graph="none"), 4, 4),
            (stat("Failed config reloads", "Config reloads refused in the selected time range (the old config kept running).",
                  "none", [target(f"sum(increase(turnstile_config_reloads_total{{{SEL}, result=\"failure\"}}[$__range]))", "failures")],
                  thresholds=[{"color": "green", "value": None}, {"color": "red", "value": 1}]), 4, 4),
            (stat("Spans dropped", "Spans lost in the selected time range: export queue full or export failed (collector down or slow).",
                  "none", [target(f"sum(increase(turnstile_spans_dropped_total{{{SEL}}}[$__range]))", "dropped")],
                  thresholds=[{"color": "green", "value": None}, {"color": "orange", "value": 1}]), 4, 4),
            (stat("Open fds", "File descriptors in use as a share of the limit (process_open_fds / process_max_fds), highest process.",
                  "percentunit", [target(f"max(process_open_fds{{{SEL}}} / process_max_fds{{{SEL}}})", "fds")],
                  thresholds=[{"color": "green", "value": None}, {"color": "orange", "value": 0.7}, {"color": "red", "value": 0.9}]), 4, 4),
        ],
        row("Scrape"),
        [
            (timeseries("Scrape duration", "How long Prometheus took to scrape /metrics.",
                        "s", targets((f"scrape_duration_seconds{{{SEL}}}", "{{instance}}"))), 8, 7),
            (timeseries("Samples per scrape", "Samples in each scrape: about 74 per machine at the default metrics level; with --metrics-detail (or a config's metrics: key) it grows with the states, rules and action types too.",
                        "none", targets((f"scrape_samples_scraped{{{SEL}}}", "{{instance}}"))), 8, 7),
            (timeseries("Target up", "1 when the scrape succeeded, 0 when the target was down.",
                        "none", targets((f"up{{{SEL}}}", "{{instance}}")), draw="line"), 8, 7),
        ],
        row("Process"),
        [
            (timeseries("CPU", "CPU time used per second (user + system): 1 = one core busy.",
                        "percentunit", targets((f"rate(process_cpu_seconds_total{{{SEL}}}[{RI}])", "{{instance}}"))), 6, 8),
            (timeseries("Memory", "Resident and virtual memory of the process.",
                        "bytes", targets((f"process_resident_memory_bytes{{{SEL}}}", "{{instance}} resident"),
                                         (f"process_virtual_memory_bytes{{{SEL}}}", "{{instance}} virtual"))), 6, 8),
            (timeseries("File descriptors", "Open file descriptors and the limit.",
                        "none", targets((f"process_open_fds{{{SEL}}}", "{{instance}} open"),
                                        (f"process_max_fds{{{SEL}}}", "{{instance}} max"))), 6, 8),
            (timeseries("Threads", "OS threads of the process.",
                        "none", targets((f"process_threads{{{SEL}}}", "{{instance}}"))), 6, 8),
        ],
        row("Config, plugins and spans"),
        [
            (timeseries("Config reloads", "Config reloads per interval by result: success, or failure (an invalid file was refused and the old config kept running).",
                        "none", targets((f"sum by (result) (increase(turnstile_config_reloads_total{{{SEL}}}[{RI}]))", "{{result}}")),
                        draw="bars", stack=True), 8, 8),
            (table("Plugins", "Plugin libraries loaded, with their versions (turnstile_plugin_info).",
                   "none", [target(f"max by (instance, plugin, version) (turnstile_plugin_info{{{SEL}}})", "", instant=True, fmt="table")],
                   organize={"excludeByName": {"Time": True, "Value": True}}), 8, 8),
            (timeseries("Spans exported and dropped", "Spans per second handed to the OTLP collector, and spans dropped (queue full or export failed).",
                        "ops", targets((f"sum(rate(turnstile_spans_exported_total{{{SEL}}}[{RI}]))", "exported"),
                                       (f"sum(rate(turnstile_spans_dropped_total{{{SEL}}}[{RI}]))", "dropped"))), 8, 8),
        ],
    ])
    return dashboard("turnstile-health", "Turnstile / Health",
                     "Is Turnstile itself healthy: scrapes, CPU, memory, file descriptors, config reloads, plugins and span export.",
                     panels, base_vars())


def render(d):
    return json.dumps(d, indent=2, ensure_ascii=False) + "\n"


def main():
    files = {"overview.json": overview(), "machine.json": machine(), "health.json": health()}
    check = "--check" in sys.argv[1:]
    stale = []
    for name, d in files.items():
        path, text = OUT / name, render(d)
        if check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                stale.append(name)
        else:
            OUT.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
    if stale:
        print("out of date (run python3 grafana/generate.py): " + ", ".join(stale), file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
