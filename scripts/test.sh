#!/usr/bin/env bash
# Runs the whole test suite on a fresh machine: installs what the
# `millpond serve` tests need, then `cargo test --workspace` (extra
# arguments are passed to it). The README's second command; `.ci/run` runs
# it too.
#
# The serve tests (crates/millpond-cli/tests/serve_*.rs) run real beanstalkd
# 1.12 (the differential test) and Python's greenstalk client; they fail,
# not skip, without them. Idempotent: apt-get (as root, or with sudo) only
# when beanstalkd or python3 is missing; greenstalk goes into a venv under
# the target directory. With both already installed, plain
# `cargo test --workspace` does the same (set MILLPOND_PYTHON to a Python
# that has greenstalk if `python3` does not).
set -euo pipefail

cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
apt_updated=""
apt_install() {
    [ -n "$apt_updated" ] || { as_root apt-get update -qq; apt_updated=1; }
    as_root env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}
[ -x /usr/bin/beanstalkd ] || apt_install beanstalkd
command -v python3 >/dev/null || apt_install python3 python3-venv
target_dir="${CARGO_TARGET_DIR:-target}"
case "$target_dir" in /*) ;; *) target_dir="$PWD/$target_dir" ;; esac
venv="$target_dir/ci-venv"
if [ ! -x "$venv/bin/python" ]; then
    # Debian ships venv's pip bootstrap separately (python3-venv).
    python3 -m venv "$venv" >/dev/null 2>&1 ||
        { rm -rf "$venv"; apt_install python3-venv; python3 -m venv "$venv"; }
fi
"$venv/bin/python" -c 'import greenstalk' 2>/dev/null ||
    "$venv/bin/python" -m pip install -q --disable-pip-version-check 'greenstalk>=2.1,<3'
export MILLPOND_PYTHON="$venv/bin/python"
/usr/bin/beanstalkd -v
"$MILLPOND_PYTHON" -c 'import greenstalk; print("greenstalk", greenstalk.__version__)'

exec cargo test --workspace "$@"
