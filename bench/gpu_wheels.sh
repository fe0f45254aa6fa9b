#!/usr/bin/env bash
# Fetch, here, the wheels that bench/gpu_session.sh needs on the device machine (its python3 is 3.12 with
# torch, numpy, pillow, typer, tqdm, httpx, uvloop, matplotlib, prometheus-client, but no faiss, FastAPI,
# pydantic, simplejpeg or httptools). They go in .whl/ (git-ignored through .git/info/exclude), about 26 MB, and travel with
# `carry: [".whl"]`. Versions are this checkout's .venv's. Costs no device time.
#
#     bash bench/gpu_wheels.sh
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
mkdir -p .whl
platforms=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
           --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any)
for pkg in faiss-cpu fastapi starlette uvicorn pydantic pydantic-core pydantic-settings python-dotenv \
           python-multipart annotated-types typing-inspection imagehash pywavelets simplejpeg httptools; do
  version=$(.venv/bin/python -m pip show "$pkg" | awk '/^Version/ {print $2}')
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${platforms[@]}" -d .whl "$pkg==$version" 2>&1 | grep -v 'is ignored' || true
done
du -sh .whl
