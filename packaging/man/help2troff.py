#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Turn a program's --help output into a man page, so the two cannot drift.

    help2troff.py --name NAME --section N --summary TEXT --version VERSION
                  [--sub-help CMD ...] -- PROGRAM [ARGS...]

Runs PROGRAM --help (and PROGRAM CMD --help for every --sub-help CMD) and
writes troff to standard output. The help text's own structure becomes the
page's: a line "Usage: ..." is the SYNOPSIS, an unindented line in capitals
("NAME", "FUSE OPTIONS") or ending in a colon ("Commands:") starts a section,
an indented "-x, --opt ARG   text" or "cmd ARGS   text" line is a tagged
paragraph, blank lines separate paragraphs. PROGRAM runs with argv[0] set to
NAME, so no build path reaches the page.
"""
import argparse
import os
import re
import subprocess
import sys

ITEM = re.compile(r"^(\s+)(\S.*?)(?:\s{2,}(\S.*))?$")


def esc(text):
    text = text.replace("\\", "\\e").replace("-", "\\-")
    if text.startswith((".", "'")):
        text = "\\&" + text
    return text


def is_heading(line):
    if not line or line[0].isspace():
        return False
    s = line.strip()
    return (s.isupper() and len(s) < 40) or (s.endswith(":") and len(s) < 40)


def convert(lines, out, top_level, seen_sections):
    """Emit LINES; top_level help may use NAME/SYNOPSIS headings of its own."""
    skip_name = False
    item_open = False
    section = ""
    for raw in lines:
        line = raw.rstrip()
        if not line:
            out.append(".PP")
            item_open = False
            continue
        if line.startswith("Usage:"):
            out.append(".PP" if not top_level else ".SH SYNOPSIS")
            out.append(".B " + esc(line[len("Usage:"):].strip()))
            out.append(".br" if not top_level else ".SH DESCRIPTION")
            section = "DESCRIPTION"
            continue
        if is_heading(line):
            title = line.strip().rstrip(":").upper()
            skip_name = title == "NAME"  # the page's own NAME section is written once, from --summary
            if skip_name:
                continue
            if title in seen_sections and title in ("SYNOPSIS", "DESCRIPTION"):
                continue
            seen_sections.add(title)
            section = title
            out.append((".SH " if top_level else ".SS ") + esc(title))
            item_open = False
            continue
        if skip_name:
            continue
        if section == "SYNOPSIS":
            out.extend([esc(line.strip()), ".br"])
            continue
        m = ITEM.match(line)
        indent = len(m.group(1)) if m else 0
        if m and m.group(3) and (m.group(2).startswith("-") or indent <= 2):
            out.append(".TP")
            out.append(".B " + esc(m.group(2)))
            out.append(esc(m.group(3)))
            item_open = True
        elif m and not m.group(3) and indent <= 2 and re.match(r"^[a-z]+ ", m.group(2)) and top_level:
            # "  format [--size SIZE] ..." with its text on the next line
            out.append(".TP")
            out.append(".B " + esc(m.group(2)))
            item_open = True
        else:
            out.append(esc(line.strip()))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--name", required=True)
    ap.add_argument("--section", default="8")
    ap.add_argument("--summary", required=True)
    ap.add_argument("--version", required=True)
    ap.add_argument("--sub-help", action="append", default=[])
    ap.add_argument("--see-also", default="")
    ap.add_argument("program", nargs="+")
    a = ap.parse_args()

    argv0 = [a.name] + a.program[1:]
    exe = a.program[0]
    out = [
        f'.TH {a.name.upper()} {a.section} "" "{a.name} {a.version}" "System Administration"',
        ".SH NAME",
        f"{esc(a.name)} \\- {esc(a.summary)}",
    ]
    seen = set()
    main_help = run_help_exe(exe, argv0 + ["--help"], a.name)
    convert(main_help, out, True, seen)
    if a.sub_help:
        out.append(".SH COMMANDS IN DETAIL")
        for cmd in a.sub_help:
            out.append(".SS " + esc(f"{a.name} {cmd}"))
            convert(run_help_exe(exe, argv0 + [cmd, "--help"], a.name), out, False, seen)
    if a.see_also:
        out.append(".SH SEE ALSO")
        out.append(esc(a.see_also))
    # Collapse runs of paragraph breaks.
    text, prev = [], None
    for line in out:
        if line == ".PP" and (prev in (".PP", ".TP", None) or prev.startswith((".S", ".B"))):
            continue
        text.append(line)
        prev = line
    sys.stdout.write("\n".join(text) + "\n")


def run_help_exe(exe, argv, name):
    out = subprocess.run(argv, executable=exe, capture_output=True, text=True, check=False,
                         env=dict(os.environ, COLUMNS="80"))
    text = out.stdout + out.stderr
    if out.returncode != 0 or not text.strip():
        sys.exit(f"help2troff: '{' '.join(argv)}' failed (exit {out.returncode})")
    return text.splitlines()


if __name__ == "__main__":
    main()
