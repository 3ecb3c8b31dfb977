#!/usr/bin/env python3
"""Offline checks of the log pipeline configurations in packaging/pipelines/ (run by
tests/tests/packaging.rs). None of the three tools is packaged in Debian 12, so they are not
run; what can be checked without them is:

* each file parses (YAML, TOML, Fluent Bit's classic format) and is wired up (inputs name
  defined components, parsers exist, the file read is the one tcpstall.service writes);
* the address regular expressions split `ip:port` and `[v6]:port` as the agent writes them;
* the timestamp formats parse the agent's `ts` (RFC 3339, UTC, milliseconds);
* README.md holds each file verbatim.

Prints {"ok": bool, "problems": [...], "checked": [...]}; exit 0 when ok.
"""

import argparse
import datetime
import json
import os
import re
import sys
import tomllib

import yaml

EVENTS_FILE = "/var/log/tcpstall/events.ndjson"
TS = "2026-12-02T12:16:58.878Z"
ADDRS = {
    "127.0.0.1:9400": ("127.0.0.1", "9400"),
    "10.20.30.40:57840": ("10.20.30.40", "57840"),
    "[2001:db8::1]:443": ("2001:db8::1", "443"),
    "[::1]:22": ("::1", "22"),
}

problems = []
checked = []


def check_addr_regex(where, pattern, addr_group, port_group):
    try:
        rx = re.compile(pattern)
    except re.error as e:
        problems.append(f"{where}: regex {pattern!r} does not compile: {e}")
        return
    for text, (addr, port) in ADDRS.items():
        m = rx.match(text)
        if not m or m.group(addr_group) != addr or m.group(port_group) != port:
            problems.append(f"{where}: regex {pattern!r} splits {text!r} wrong: {m and m.groupdict()}")
            return
    checked.append(f"{where}: address regex splits {len(ADDRS)} samples (IPv4, IPv6)")


def check_strptime(where, fmt):
    try:
        t = datetime.datetime.strptime(TS, fmt)
    except ValueError as e:
        problems.append(f"{where}: time format {fmt!r} does not parse {TS}: {e}")
        return
    if t.microsecond != 878000 or t.second != 58:
        problems.append(f"{where}: time format {fmt!r} parses {TS} as {t}")
    else:
        checked.append(f"{where}: time format parses the agent's ts")


def otelcol(path):
    with open(path) as f:
        c = yaml.safe_load(f)
    r = c["receivers"]["filelog/tcpstall"]
    if r["include"] != [EVENTS_FILE]:
        problems.append(f"{path}: filelog include {r['include']} is not {EVENTS_FILE}")
    ops = r["operators"]
    if ops[0]["type"] != "json_parser":
        problems.append(f"{path}: first operator is not json_parser")
    ts = ops[0]["timestamp"]
    if ts["parse_from"] != "attributes.ts":
        problems.append(f"{path}: timestamp not parsed from attributes.ts")
    # Go reference layout for RFC 3339 with optional fractional seconds.
    if ts["layout_type"] != "gotime" or ts["layout"] != "2006-01-02T15:04:05.999Z07:00":
        problems.append(f"{path}: unexpected timestamp layout {ts}")
    svc = c["service"]
    for ext in svc.get("extensions", []):
        if ext not in c.get("extensions", {}):
            problems.append(f"{path}: service extension {ext} not defined")
    for name, p in svc["pipelines"].items():
        for kind in ("receivers", "processors", "exporters"):
            for comp in p.get(kind, []):
                if comp not in c.get(kind, {}):
                    problems.append(f"{path}: pipeline {name} uses undefined {kind[:-1]} {comp}")
    n = 0
    for proc in c.get("processors", {}).values():
        for group in proc.get("log_statements", []):
            for st in group["statements"]:
                if st.count("(") != st.count(")") or st.count('"') % 2:
                    problems.append(f"{path}: unbalanced statement {st}")
                for m in re.finditer(r'ExtractPatterns\([^,]+, "((?:[^"\\]|\\.)*)"\)', st):
                    # OTTL string literal: \\ is one backslash.
                    pattern = m.group(1).replace("\\\\", "\\")
                    check_addr_regex(f"{path} (OTTL)", pattern, "addr", "port")
                    n += 1
    if n != 2:
        problems.append(f"{path}: expected 2 ExtractPatterns (local, remote), found {n}")
    checked.append(f"{path}: YAML parses, pipeline wired, reads {EVENTS_FILE}")


def vector(path):
    with open(path, "rb") as f:
        c = tomllib.load(f)
    src = c["sources"]["tcpstall"]
    if src["type"] != "file" or src["include"] != [EVENTS_FILE]:
        problems.append(f"{path}: source is not a file source on {EVENTS_FILE}")
    names = set(c.get("sources", {})) | set(c.get("transforms", {}))
    for kind in ("transforms", "sinks"):
        for name, comp in c.get(kind, {}).items():
            for i in comp.get("inputs", []):
                if i not in names:
                    problems.append(f"{path}: {name} reads undefined input {i}")
    vrl = c["transforms"]["tcpstall_events"]["source"]
    if "parse_json!" not in vrl:
        problems.append(f"{path}: no parse_json")
    m = re.search(r'parse_timestamp!\(string!\(\.ts\), format: "([^"]+)"\)', vrl)
    if not m:
        problems.append(f"{path}: no parse_timestamp of .ts")
    else:
        # chrono's %.3f is "." and 3 digits.
        check_strptime(f"{path} (VRL)", m.group(1).replace("%.3f", ".%f"))
    rxs = re.findall(r"r'([^']+)'", vrl)
    if len(rxs) != 2:
        problems.append(f"{path}: expected 2 address regexes, found {len(rxs)}")
    for rx in rxs:
        check_addr_regex(f"{path} (VRL)", rx, "addr", "port")
    checked.append(f"{path}: TOML parses, components wired, reads {EVENTS_FILE}")


def fluent_sections(path):
    """Fluent Bit classic format: [SECTION] headers, then `Key value` lines."""
    sections = []
    with open(path) as f:
        for n, raw in enumerate(f, 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            if line.startswith("[") and line.endswith("]"):
                sections.append((line[1:-1].upper(), []))
            elif sections and raw[:1] in (" ", "\t"):
                parts = line.split(None, 1)
                if len(parts) != 2:
                    problems.append(f"{path}:{n}: `{line}` is not `Key value`")
                    continue
                sections[-1][1].append((parts[0], parts[1]))
            else:
                problems.append(f"{path}:{n}: `{line}` is outside a section or not indented")
    return sections


def fluent_bit(path):
    secs = fluent_sections(path)
    service = dict(next((kv for s, kv in secs if s == "SERVICE"), []))
    pfile = os.path.join(os.path.dirname(path), service.get("Parsers_File", ""))
    parsers = {}
    for s, kv in fluent_sections(pfile):
        if s == "PARSER":
            d = dict(kv)
            parsers[d["Name"]] = d
    used = []
    for s, kv in secs:
        d = dict(kv)
        if s == "INPUT":
            if d.get("Name") != "tail" or d.get("Path") != EVENTS_FILE:
                problems.append(f"{path}: INPUT is not tail on {EVENTS_FILE}")
            used.append(d.get("Parser"))
        if s == "FILTER" and d.get("Name") == "parser":
            used.append(d.get("Parser"))
    for p in used:
        if p not in parsers:
            problems.append(f"{path}: parser {p} is not in {pfile}")
    j = parsers.get("tcpstall_json", {})
    if j.get("Format") != "json" or j.get("Time_Key") != "ts":
        problems.append(f"{pfile}: tcpstall_json is not a json parser timed by ts")
    else:
        # Fluent Bit's %L is the fraction of a second.
        check_strptime(f"{pfile} (Time_Format)", j["Time_Format"].replace("%L", "%f"))
    for side in ("local", "remote"):
        p = parsers.get(f"tcpstall_{side}", {})
        rx = p.get("Regex", "").replace("(?<", "(?P<")  # Onigmo -> Python named groups
        check_addr_regex(f"{pfile} ({side})", rx, f"{side}_address", f"{side}_port")
    checked.append(f"{path}: sections parse, parsers defined, reads {EVENTS_FILE}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("--readme", required=True)
    args = ap.parse_args()
    files = {
        "otelcol.yaml": otelcol,
        "vector.toml": vector,
        "fluent-bit.conf": fluent_bit,
        "fluent-bit-parsers.conf": None,
    }
    with open(args.readme) as f:
        readme = f.read()
    for name, check in files.items():
        path = os.path.join(args.dir, name)
        try:
            if check:
                check(path)
        except Exception as e:  # a missing key is a problem to report, not a crash
            problems.append(f"{path}: {type(e).__name__}: {e}")
        with open(path) as f:
            text = f.read()
        if text not in readme:
            problems.append(f"README.md does not hold {path} verbatim")
        else:
            checked.append(f"README.md holds {name} verbatim")
    print(json.dumps({"ok": not problems, "problems": problems, "checked": checked}))
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
