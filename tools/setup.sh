#!/usr/bin/env bash
# One install command: bash tools/setup.sh (from anywhere; works on the repository it lies in).
#
# Makes .venv in the repository root, then installs into it, in this order:
#   1. torch and torchvision at the pinned versions below (CI's; pyproject keeps torch a range);
#   2. the project, editable, with the extras dev, search, export and tf, plus setuptools<81
#      (detectron2.model_zoo imports pkg_resources, which setuptools 81 drops);
#   3. Detectron2 at commit 02b5c4e2, built against that torch without build isolation: from
#      ../shared/vendor/detectron2-02b5c4e2.tar.gz beside the checkout when it lies there, else
#      from GitHub.
# Idempotent: each step is skipped when its result is already there (the venv exists; the pinned
# versions and every requirement of the project and its extras are installed, the project editable
# from this checkout; Detectron2 from the pinned commit imports its compiled ops against this torch),
# so a second run only checks. A torch that already satisfies the pins (e.g. a CUDA build
# 2.14.1+cu128) is kept. PYTHON=python3.12 picks the interpreter for a new venv.
set -euo pipefail
cd "$(dirname "$0")/.."

TORCH_REQS=("torch==2.14.1" "torchvision==0.29.1")
EXTRAS="dev,search,export,tf"
SETUPTOOLS_REQ="setuptools<81"
D2_COMMIT=02b5c4e295e990042a714712c21dc79b731e8833
D2_ARCHIVE=../shared/vendor/detectron2-02b5c4e2.tar.gz
D2_GIT="git+https://github.com/facebookresearch/detectron2.git@$D2_COMMIT"
PY=.venv/bin/python
PIP=(.venv/bin/pip install -q)

say() { echo "setup: $*"; }

# check KIND [ARGS]: exit 0 when the step's result is already there, 1 (with the reason) when not.
# -I: the venv's packages only (not the checkout's nasnet.egg-info, nor PYTHONPATH).
check() {
    "$PY" -I - "$@" <<'EOF'
import json, sys
from importlib import metadata
from pathlib import Path
try:
    from packaging.requirements import Requirement
except ImportError:
    from pip._vendor.packaging.requirements import Requirement


def unmet(reqs, extra=""):
    """The requirements (strings) not satisfied by the installed distributions."""
    bad = []
    for text in reqs:
        req = Requirement(text)
        if req.marker is not None and not req.marker.evaluate({"extra": extra}):
            continue
        try:
            have = metadata.version(req.name)
        except metadata.PackageNotFoundError:
            bad.append(f"{text} (not installed)")
            continue
        if req.specifier and not req.specifier.contains(have, prereleases=True):
            bad.append(f"{text} (have {have})")
    return bad


kind, args = sys.argv[1], sys.argv[2:]
if kind == "reqs":
    bad = unmet(args)
elif kind == "project":
    import tomllib  # Python >= 3.11; on 3.10 the ImportError makes the step run every time

    project = tomllib.loads(Path("pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in args[0].split(","):
        reqs += project["optional-dependencies"][extra]
    bad = unmet(reqs + args[1:])
    try:
        url = json.loads(metadata.distribution(project["name"]).read_text("direct_url.json") or "{}")
        if url.get("url") != Path.cwd().resolve().as_uri() or not url.get("dir_info", {}).get("editable"):
            bad.append(f"{project['name']} is not installed editable from {Path.cwd()}")
    except metadata.PackageNotFoundError:
        bad.append(f"{project['name']} (not installed)")
elif kind == "detectron2":
    try:
        url = json.loads(metadata.distribution("detectron2").read_text("direct_url.json") or "{}")
    except metadata.PackageNotFoundError:
        sys.exit("setup:   detectron2 is not installed")
    commit = args[0]
    if url.get("vcs_info", {}).get("commit_id") != commit and commit[:8] not in url.get("url", ""):
        sys.exit(f"setup:   detectron2 is not from commit {commit[:8]} ({url.get('url', 'unknown source')})")
    from detectron2 import _C  # noqa: F401 - fails when it was built against another torch

    bad = []
else:
    sys.exit(f"unknown check {kind}")
if bad:
    sys.exit("setup:   missing: " + "; ".join(bad))
EOF
}

if [ -x "$PY" ]; then
    say "1/4 .venv exists"
else
    say "1/4 creating .venv"
    "${PYTHON:-python3}" -m venv .venv
    "${PIP[@]}" --upgrade pip
fi

torch_changed=0
if check reqs "${TORCH_REQS[@]}"; then
    say "2/4 ${TORCH_REQS[*]} installed"
else
    say "2/4 installing ${TORCH_REQS[*]}"
    "${PIP[@]}" "${TORCH_REQS[@]}"
    torch_changed=1
fi

if check project "$EXTRAS" "$SETUPTOOLS_REQ" "${TORCH_REQS[@]}"; then
    say "3/4 project (.[$EXTRAS]) installed, editable"
else
    say "3/4 installing the project: -e .[$EXTRAS] $SETUPTOOLS_REQ"
    # The torch pins ride along so that no extra's dependency can move torch.
    "${PIP[@]}" -e ".[$EXTRAS]" "$SETUPTOOLS_REQ" "${TORCH_REQS[@]}"
fi

if [ "$torch_changed" = 0 ] && check detectron2 "$D2_COMMIT" 2>/dev/null; then
    say "4/4 detectron2 ${D2_COMMIT:0:8} installed"
else
    if [ -f "$D2_ARCHIVE" ]; then D2="$D2_ARCHIVE"; else D2="$D2_GIT"; fi
    say "4/4 building detectron2 from $D2 (a few minutes)"
    # Another build already there (another commit, or built against another torch) is replaced.
    again=(); if "$PY" -m pip show -q detectron2 2>/dev/null; then again=(--force-reinstall --no-deps); fi
    "${PIP[@]}" --no-build-isolation --use-pep517 "${again[@]}" "$D2"
fi

"$PY" -W ignore::FutureWarning -c "import detectron2, nasnet_det"   # both import
say "done: $PWD/.venv"
