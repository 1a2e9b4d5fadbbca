"""`python3 build.py`: plugin.wasm from app.py. It compiles the sources first (componentize-py
does not say where a syntax error is), then builds for the world that matches what app.py
defines: `web` with `class IncomingHandler`, `worker` with a `run_job` method, else `plugin`.
A plugin built for the wrong world would load, and its jobs or pages would fail only when
used."""

import os
import py_compile
import re
import subprocess
import sys

source = open("app.py", encoding="utf-8").read()
if re.search(r"^class\s+IncomingHandler\b", source, re.M):
    world, why = "web", "defines class IncomingHandler"
elif re.search(r"^\s+def\s+run_job\s*\(", source, re.M):
    world, why = "worker", "defines run_job"
else:
    world, why = "plugin", "defines neither run_job nor class IncomingHandler"
if world != "web" and re.search(r"^\s*(from|import)\s+addon_web\b", source, re.M):
    sys.exit("build: app.py imports addon_web but defines no `class IncomingHandler(WebHandler)`")

for name in ("app.py", "addon_sdk.py", "addon_web.py"):
    if os.path.exists(name):
        try:
            py_compile.compile(name, doraise=True)
        except py_compile.PyCompileError as e:
            sys.exit(e.msg)
print(f"build: app.py {why}: building for the `{world}` world", flush=True)
sys.exit(subprocess.call(["componentize-py", "-d", "wit", "-w", world, "componentize", "app", "-o", "plugin.wasm"]))
